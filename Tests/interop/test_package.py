"""Shipping blockd: self-contained release programs, one version everywhere, man pages that match
--help, and (with --long) the Debian package installed, served from without the Swift toolchain,
removed and purged the way an operator does it."""
import functools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, require, require_long, skip_or_fail
from qmp_client import QMP, monitor_args

PROGRAMS = ("blockd", "blockimg", "blockctl")
RELEASE = ROOT / ".build" / "release"


def release_programs() -> dict[str, Path]:
    """The release build scripts/test makes (the one that is packaged)."""
    paths = {name: RELEASE / name for name in PROGRAMS}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        skip_or_fail(f"no release build of {', '.join(missing)}: scripts/test builds it (swift build -c release --product NAME)")
    return paths


def toolchain_library_directory() -> Path:
    """Where the toolchain keeps libswiftCore.so (what a machine without Swift does not have)."""
    swiftc = shutil.which("swiftc")
    if swiftc:
        info = subprocess.run([swiftc, "-print-target-info"], capture_output=True, text=True)
        if info.returncode == 0:
            for path in json.loads(info.stdout)["paths"].get("runtimeLibraryPaths", []):
                if (Path(path) / "libswiftCore.so").exists():
                    return Path(path)
    for candidate in Path("/").glob("opt/*/usr/lib/swift/linux"):
        if (candidate / "libswiftCore.so").exists():
            return candidate
    pytest.fail("no toolchain library directory with libswiftCore.so found")


def without_toolchain(command: list[str], directory: Path) -> list[str]:
    """`command` run in a mount namespace where a tmpfs hides the toolchain's libraries."""
    script = f'mount -t tmpfs tmpfs "{directory}" && test ! -e "{directory}/libswiftCore.so" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", *command]


def require_root_namespaces() -> None:
    if os.geteuid() != 0:
        skip_or_fail("hiding the toolchain needs root (unshare -m and mount)")
    require("unshare")


def linked_libraries(program: Path) -> list[str]:
    """The resolved paths `ldd` prints for a program."""
    output = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    paths = []
    for line in output.splitlines():
        match = re.search(r"=>\s*(\S+)", line) or re.match(r"\s*(/\S+)", line)
        if match:
            paths.append(match.group(1))
    return paths


@functools.cache
def debian_owner(path: str) -> str | None:
    """The installed package that holds a library, looked up under /lib and /usr/lib alike (merged /usr)."""
    real = os.path.realpath(path)
    candidates = [path, real, re.sub(r"^/usr/", "/", real)]
    for candidate in dict.fromkeys(candidates):
        proc = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.split(":")[0]
    return None


def test_release_programs_link_only_debian_libraries():
    for name, path in release_programs().items():
        libraries = linked_libraries(path)
        foreign = [lib for lib in libraries if not re.match(r"^/(usr/)?lib(64|/x86_64-linux-gnu|/aarch64-linux-gnu)?/", lib)]
        assert not foreign, f"{name} links libraries outside Debian's directories: {foreign}"
        # No Swift runtime or Foundation (Debian's ICU, which libnbd's libxml2 brings, is fine).
        assert not [lib for lib in libraries if "swift" in lib or "Foundation" in lib], libraries
        # Every library ldd names belongs to an installed Debian package.
        for lib in libraries:
            assert debian_owner(lib), f"{name}: no Debian package owns {lib}"


def test_release_programs_run_without_the_toolchain():
    require_root_namespaces()
    directory = toolchain_library_directory()
    version = None
    for name, path in release_programs().items():
        proc = subprocess.run(without_toolchain([str(path), "--version"], directory), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{name} --version without the toolchain: {proc.stderr}"
        version = version or proc.stdout.strip()
        assert proc.stdout.strip() == version


def test_one_version_everywhere(start_blockd, tmp_path):
    versions = {name: subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True).stdout.strip()
                for name, path in release_programs().items()}
    assert len(set(versions.values())) == 1, versions
    version = versions["blockd"]
    assert re.fullmatch(r"[0-9][A-Za-z0-9.+~]*", version), version
    source = (ROOT / "Sources" / "Version" / "Version.swift").read_text()
    assert f'public static let string = "{version}"' in source
    qmp = tmp_path / "qmp.sock"
    start_blockd(None, extra=monitor_args(qmp))
    with QMP(qmp) as monitor:
        assert monitor.execute("query-version")["package"] == f"blockd {version}"


def test_man_pages_match_help(tmp_path):
    """The pages scripts/package installs, made and checked the same way: every option --help lists
    (the program's and each subcommand's) is in the rendered page."""
    require("man")
    programs = release_programs()
    version = subprocess.run([str(programs["blockd"]), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    entries = [(programs["blockd"], "8", []), (programs["blockimg"], "1", []), (programs["blockctl"], "1", []),
               (ROOT / "scripts" / "blockd-attach", "8", ["--usage"])]
    for program, section, mode in entries:
        page = tmp_path / f"{program.name}.{section}"
        with open(page, "w") as out:
            subprocess.run(["/usr/bin/python3", str(ROOT / "packaging" / "manpage.py"), *mode, str(program), section, version],
                           stdout=out, check=True)
        check = subprocess.run(["/usr/bin/python3", str(ROOT / "packaging" / "manpage.py"), "--check", str(program), str(page)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        rendered = subprocess.run(["man", "-l", "-P", "cat", str(page)], capture_output=True, text=True, check=True,
                                  env=dict(os.environ, MANWIDTH="200")).stdout
        assert re.search(rf"^{program.name.upper()}\({section}\)", rendered, re.M), rendered[:200]
    # The check catches drift: a page that lost an option fails it.
    page = tmp_path / "blockimg.1"
    page.write_text(page.read_text().replace("\\-\\-backing\\-chain", "\\-\\-chain"))
    check = subprocess.run(["/usr/bin/python3", str(ROOT / "packaging" / "manpage.py"), "--check", str(programs["blockimg"]), str(page)],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "--backing-chain" in check.stderr


def test_maintainer_scripts_only_reload_systemd():
    require("shellcheck")
    for name in ("postinst", "postrm"):
        script = ROOT / "packaging" / "debian" / name
        assert os.access(script, os.X_OK)
        subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        commands = re.findall(r"systemctl\s+(?:--\S+\s+)*(\S+)", code)
        assert commands == ["daemon-reload"], f"{name} runs systemctl {commands}"


# --- The package, installed as an operator installs it (--long: it builds and lints a .deb) -------

def dpkg_status(package: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    status = proc.stdout.strip()
    return "not-installed" if proc.returncode != 0 or status.endswith("not-installed") else status


def apt_get(*arguments: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "-y", "-q", *arguments], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"apt-get {' '.join(arguments)}:\n{proc.stdout}\n{proc.stderr}"


def test_package_installs_serves_without_toolchain_and_removes(request, tmp_path):
    require_long(request)
    require_root_namespaces()
    require("dpkg-deb", "dpkg-shlibdeps", "apt-get", "nbdinfo", "nbdcopy", "man")
    programs = release_programs()
    if dpkg_status("blockd") != "not-installed":
        pytest.fail(f"a blockd package is already on this machine ({dpkg_status('blockd')}): this test would replace it")
    version = subprocess.run([str(programs["blockd"]), "--version"], capture_output=True, text=True, check=True).stdout.strip()

    # Build: the release programs scripts/test made, packaged with lintian's check.
    dist = tmp_path / "dist"
    built = subprocess.run([str(ROOT / "scripts" / "package"), "--no-build", str(dist)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    debs = list(dist.glob("blockd_*.deb"))
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    assert [d.name for d in debs] == [f"blockd_{version}_{arch}.deb"]
    deb = debs[0]
    fields = {key: subprocess.run(["dpkg-deb", "-f", str(deb), key], capture_output=True, text=True, check=True).stdout.strip()
              for key in ("Version", "Installed-Size", "Depends")}
    assert fields["Version"] == version
    assert int(fields["Installed-Size"]) <= 64 * 1024
    assert "libc6" in fields["Depends"] and "swift" not in fields["Depends"].lower()
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/bin/blockd", "./usr/bin/blockimg", "./usr/bin/blockctl", "./usr/bin/blockd-attach",
                 "./usr/lib/systemd/system/blockd@.service", "./usr/lib/systemd/system/blockd@.socket",
                 "./etc/blockd/example.conf", "./usr/share/man/man8/blockd.8.gz", "./usr/share/man/man1/blockimg.1.gz",
                 "./usr/share/man/man1/blockctl.1.gz", "./usr/share/doc/blockd/README.md.gz", "./usr/share/doc/blockd/copyright"):
        assert re.search(rf"\s{re.escape(path)}$", contents, re.M), f"{path} not in the package:\n{contents}"
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"/etc/blockd/example.conf" in conffiles
    files = [line.split()[-1][1:] for line in contents.splitlines() if not line.startswith("d")]

    try:
        apt_get("install", "--no-install-recommends", str(deb))
        assert dpkg_status("blockd") == "install ok installed"
        unit = Path("/usr/lib/systemd/system/blockd@.service").read_text()
        assert "ExecStart=/usr/bin/blockd " in unit and "/usr/local" not in unit
        assert subprocess.run(["man", "-w", "blockd"], capture_output=True, text=True, check=True).stdout.strip() \
            == "/usr/share/man/man8/blockd.8.gz"
        assert subprocess.run(["man", "-w", "1", "blockimg"], capture_output=True, text=True, check=True).stdout.strip() \
            == "/usr/share/man/man1/blockimg.1.gz"

        # Serve with the installed blockd while the toolchain's libraries are hidden, read with nbdinfo.
        directory = toolchain_library_directory()
        image = tmp_path / "disk.img"
        data = os.urandom(4 << 20)
        image.write_bytes(data)
        sock = tmp_path / "nbd.sock"
        log = open(tmp_path / "blockd.log", "wb")
        daemon = subprocess.Popen(without_toolchain(
            ["/usr/bin/blockd", "--blockdev", f"driver=file,node-name=f0,filename={image}",
             "--blockdev", "driver=raw,node-name=disk0,file=f0",
             "--nbd-server", f"addr.type=unix,addr.path={sock}",
             "--export", "type=nbd,id=e0,node-name=disk0,name=disk0"], directory), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while not sock.exists():
                assert daemon.poll() is None, (tmp_path / "blockd.log").read_text()
                assert time.monotonic() < deadline, "the installed blockd did not listen"
                time.sleep(0.05)
            uri = f"nbd+unix:///disk0?socket={sock}"
            info = json.loads(subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, check=True, timeout=30).stdout)
            assert info["exports"][0]["export-size"] == len(data)
            copied = subprocess.run(["nbdcopy", uri, "-"], capture_output=True, check=True, timeout=60).stdout
            assert copied == data
        finally:
            daemon.terminate()
            assert daemon.wait(15) == 0, (tmp_path / "blockd.log").read_text()
            log.close()

        # Remove: nothing is left but the conffile; purge: the conffile goes too.
        apt_get("remove", "blockd")
        assert dpkg_status("blockd") == "deinstall ok config-files"
        left = [path for path in files if os.path.lexists(path)]
        assert left == ["/etc/blockd/example.conf"], left
        apt_get("purge", "blockd")
        assert dpkg_status("blockd") == "not-installed"
        assert not os.path.lexists("/etc/blockd/example.conf")
    finally:
        if dpkg_status("blockd") != "not-installed":
            subprocess.run(["apt-get", "-y", "-q", "purge", "blockd"], capture_output=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
