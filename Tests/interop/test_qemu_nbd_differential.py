"""blockd-nbd against qemu-nbd 7.2, invocation by invocation (qemu_nbd_cases.py): each case runs with
both programs on its own copy of the same images, over a unix socket or 127.0.0.1, and compares what
clients see (nbdinfo --json, nbdinfo --map and --map=qemu:allocation-depth, the data's sha256 through
nbdcopy, qemu-nbd -L), the images left on disk, exit codes, and standard output and error with the
program's name and the run's directory normalised. qemu-nbd is the reference. A case whose results
differ fails unless INTENTIONAL lists it (with the reason; it must then still differ).

BLOCKD_QEMU_NBD_TABLE=path writes the outcome of every case as a Markdown table (the qemu-nbd
section of docs/compatibility.md is made from it)."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, import_or_skip, require, skip_or_fail
from qemu_nbd_cases import CASES, Case

# Cases where blockd-nbd answers differently on purpose (docs/compatibility.md, section qemu-nbd, repeats them).
INTENTIONAL = {
    "raw read-only, probed": "qemu-nbd restricts writes to block 0 of a probed raw image and so advertises a minimum "
                             "block size of 512 even read-only; blockd-nbd does not restrict (it warns as qemu-nbd "
                             "does) and advertises 1",
    "verbose -v": "with -v blockd-nbd logs its listener and each client's connection and disconnection on standard "
                  "error; qemu-nbd 7.2's -v only matters with -c",
    "trace option ignored": "blockd-nbd has no QEMU trace events: -T is accepted and ignored, where qemu-nbd prints the "
                            "nbd_* events",
}
# How -h and -V are compared (Run.shape): the option lines of the help and the version line's first word
# (the program); the rest names blockd-nbd and its version on purpose.


def blockd_nbd() -> str:
    """The blockd-nbd under test: $BLOCKD_NBD, else next to $BLOCKD, else the release or debug build."""
    if os.environ.get("BLOCKD_NBD"):
        return os.environ["BLOCKD_NBD"]
    if os.environ.get("BLOCKD"):
        candidate = Path(os.environ["BLOCKD"]).with_name("blockd-nbd")
        if candidate.exists():
            return str(candidate)
    for kind in ("release", "debug"):
        candidate = ROOT / ".build" / kind / "blockd-nbd"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no blockd-nbd binary: run 'swift build --product blockd-nbd' or set BLOCKD_NBD")


# --------------------------------------------------------------------------------------------------
# Images: made once with qemu-img and qemu-io, copied for every run.

def make_images(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
        f.seek(0)
        f.write(bytes(range(256)) * 256)                  # 64 KiB of data at 0
        f.seek(1 << 20)
        f.write(b"\x5a" * (128 << 10))                    # 128 KiB at 1 MiB
        f.seek(2 << 20)
        f.write(bytes(64 << 10))                          # allocated zeroes at 2 MiB
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(directory / "disk.qcow2")])
    run(["qemu-io", "-f", "qcow2", "-c", "write -z 3M 64k", "-c", "write -P 0x33 2560k 64k", str(directory / "disk.qcow2")])
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(directory / "base.qcow2"), "4M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 256k", "-c", "write -P 0x12 1M 64k", str(directory / "base.qcow2")])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(directory / "top.qcow2")])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x21 128k 256k", "-c", "write -z 3M 64k", str(directory / "top.qcow2")])


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result


# --------------------------------------------------------------------------------------------------
# One run of one case with one program.

class Run:
    def __init__(self, program: str, case: Case, work: Path):
        self.program = program
        self.case = case
        self.work = work
        self.sock = work / "nbd.sock"
        self.pidfile = work / "server.pid"
        self.port = free_port()
        self.results: dict[str, object] = {}

    def argv(self) -> list[str]:
        def subst(arg: str) -> str:
            return (arg.replace("SOCK", str(self.sock)).replace("PIDFILE", str(self.pidfile))
                    .replace("PORT", str(self.port)))
        return [self.program, *[subst(a) for a in self.case.args]]

    def normalise(self, text: str) -> str:
        text = text.replace(str(self.work), "DIR")
        text = text.replace(self.program, "PROG").replace(Path(self.program).name, "PROG")
        return text.replace(str(self.port), "PORT")

    def uri(self, name: str = "") -> str:
        if self.case.mode == "tcp":
            return f"nbd://127.0.0.1:{self.port}/{name}"
        return f"nbd+unix:///{name}?socket={self.sock}"

    def files(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                for p in sorted(self.work.iterdir()) if p.is_file() and p.suffix in (".raw", ".qcow2")}

    def execute(self) -> dict[str, object]:
        if self.case.mode == "exit":
            done = subprocess.run(self.argv(), cwd=self.work, capture_output=True, text=True, timeout=20)
            self.results["rc"] = done.returncode
            self.results["stdout"] = self.shape(self.normalise(done.stdout))
            self.results["stderr"] = self.normalise(done.stderr)
            self.results["files"] = self.files()
            return self.results
        if self.case.mode == "fork":
            done = subprocess.run(self.argv(), cwd=self.work, capture_output=True, text=True, timeout=20)
            self.results["parent rc"] = done.returncode
            self.results["parent stderr"] = self.normalise(done.stderr)
            pid = int(self.pidfile.read_text().strip()) if self.pidfile.exists() else None
            self.results["pid file"] = pid is not None
            if pid is not None:
                self.probes()
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.results["child gone"] = not Path(f"/proc/{pid}").exists()
                self.results["pid file removed"] = not self.pidfile.exists()
            self.results["files"] = self.files()
            return self.results
        process = subprocess.Popen(self.argv(), cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if not self.wait_ready(process):
                self.results["exit"] = process.returncode
                self.results["stderr"] = self.normalise(process.stderr.read())
                return self.results
            self.probes()
            if "-t" in self.case.args or "--persistent" in self.case.args:
                process.send_signal(signal.SIGTERM)
            try:
                rc = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = "still running"
            self.results["exit"] = rc
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.results["stderr"] = self.normalise(process.stderr.read())
        self.results["socket removed"] = not self.sock.exists()
        self.results["files"] = self.files()
        return self.results

    def shape(self, stdout: str) -> str:
        """Help and version texts: the parts that must match (the option lines; the version's first word)."""
        if self.case.name == "help":
            return "\n".join(line for line in stdout.splitlines() if line.lstrip().startswith("-"))
        if self.case.name == "version":
            return stdout.split(" ", 1)[0]
        return stdout

    def wait_ready(self, process: subprocess.Popen) -> bool:
        """True once the server listens; false when it exited first."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if self.case.mode == "unix" and unix_listening(self.sock):
                return True
            if self.case.mode == "tcp" and listening(self.port):
                return True
            time.sleep(0.01)
        pytest.fail(f"{self.argv()} not listening after 10 s")

    # ----------------------------------------------------------------------------------------------
    def probes(self) -> None:
        for probe in self.case.probes:
            kind, _, name = probe.partition(":")
            try:
                self.results[probe] = PROBES[kind](self, name)
            except Exception as error:  # a client that fails is a result like any other
                self.results[probe] = {"failed": self.normalise(str(error))}


def listening(port: int) -> bool:
    """True when a socket listens on 127.0.0.1:port (read from /proc: a probing connection would be a client)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


def unix_listening(path: Path) -> bool:
    """True when a unix socket listens at `path` (the file exists from bind(), before listen())."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and fields[3] == "00010000":
            return True
    return False


def client(argv: list[str], timeout: float = 20) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def probe_json(r: Run, name: str):
    rc, out = client(["nbdinfo", "--json", r.uri(name)])
    if rc != 0:
        return {"rc": rc, "out": r.normalise(out)}
    info = json.loads(out)
    for export in info.get("exports", []):
        export.pop("uri", None)
    return info


def probe_map(r: Run, name: str, context: str = ""):
    rc, out = client(["nbdinfo", f"--map{context}", r.uri(name)])
    return {"rc": rc, "out": r.normalise(out)}


def probe_depth(r: Run, name: str):
    return probe_map(r, name, "=qemu:allocation-depth")


def probe_sha(r: Run, name: str):
    done = subprocess.run(["nbdcopy", r.uri(name), "-"], capture_output=True, timeout=30)
    return {"rc": done.returncode, "sha256": hashlib.sha256(done.stdout).hexdigest()[:16]}


def nbd_handle(r: Run, name: str):
    nbd = import_or_skip("nbd")
    h = nbd.NBD()
    h.connect_uri(r.uri(name))
    return nbd, h


def probe_write(r: Run, name: str, data: bytes = b"\xab" * 65536, offset: int = 524288):
    """Writes through libnbd (nbdsh's binding); the bytes are checked in the files left on disk."""
    nbd, h = nbd_handle(r, name)
    try:
        h.pwrite(data, offset)
        h.flush()
        outcome = {"rc": 0, "size": h.get_size()}
    except nbd.Error as error:
        outcome = {"rc": 1, "errno": error.errno}
    h.shutdown()
    return outcome


def probe_zero_write(r: Run, name: str):
    return probe_write(r, name, bytes(65536), 0)


def probe_list(r: Run, name: str, lister: str = "qemu-nbd"):
    target = ["-b", "127.0.0.1", "-p", str(r.port)] if r.case.mode == "tcp" else ["-k", str(r.sock)]
    rc, out = client([lister, "-L", *target])
    return {"rc": rc, "out": r.normalise(out)}


def probe_selflist(r: Run, name: str):
    return probe_list(r, name, lister=r.program)


def probe_wait(r: Run, name: str):
    """A client holds the only slot; a second must wait (not be refused) and get in once the first leaves."""
    _, first = nbd_handle(r, name)
    second = subprocess.Popen(["nbdinfo", "--size", r.uri(name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    time.sleep(1.0)
    waited = second.poll() is None
    first.shutdown()
    del first
    try:
        out, _ = second.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        second.kill()
        out, _ = second.communicate()
    return {"waited": waited, "rc": second.returncode, "out": out.strip() if second.returncode == 0 else "failed"}


def probe_two(r: Run, name: str):
    """-e 2: a second client is served while the first is connected."""
    _, first = nbd_handle(r, name)
    rc, out = client(["nbdinfo", "--size", r.uri(name)], timeout=10)
    first.shutdown()
    return {"rc": rc, "out": out.strip()}


PROBES = {
    "json": probe_json, "map": probe_map, "depth": probe_depth, "sha": probe_sha, "write": probe_write,
    "zero-write": probe_zero_write, "list": probe_list, "selflist": probe_selflist, "wait": probe_wait, "two": probe_two,
}


# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    require("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
    import_or_skip("nbd")
    program = blockd_nbd()
    root = tmp_path_factory.mktemp("qemu-nbd-diff")
    images = root / "images"
    make_images(images)
    results = {}
    for index, case in enumerate(CASES):
        pair = {}
        for side, executable in (("qemu-nbd", "qemu-nbd"), ("blockd-nbd", program)):
            work = root / f"{index:03d}-{side}"
            shutil.copytree(images, work)
            started = time.monotonic()
            pair[side] = Run(executable, case, work).execute()
            if os.environ.get("QEMU_NBD_DIFF_TIMES"):
                print(f"{time.monotonic() - started:6.2f}s {side} {case.name}")
        results[case.name] = pair
    table = os.environ.get("BLOCKD_QEMU_NBD_TABLE")
    if table:
        write_table(Path(table), results)
    return results


def write_table(path: Path, results: dict) -> None:
    lines = ["| case | used by | outcome |", "|---|---|---|"]
    for case in CASES:
        pair = results[case.name]
        same = pair["qemu-nbd"] == pair["blockd-nbd"]
        outcome = "equal" if same else ("differs by design" if case.name in INTENTIONAL else "**differs**")
        lines.append(f"| {case.name} | {case.source} | {outcome} |")
    path.write_text("\n".join(lines) + "\n")


def test_there_are_enough_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(outcomes, case):
    pair = outcomes[case.name]
    reference, ours = pair["qemu-nbd"], pair["blockd-nbd"]
    if case.name in INTENTIONAL:
        assert reference != ours, f"listed as intentional ({INTENTIONAL[case.name]}) but now equal: take it off"
        return
    assert reference == ours, "\n".join(leaf_differences(reference, ours))


def leaf_differences(reference, ours, path: str = "") -> list[str]:
    """Where two results differ, one line per differing leaf: PATH: qemu-nbd=... blockd-nbd=..."""
    if isinstance(reference, dict) and isinstance(ours, dict):
        return [line for key in sorted(set(reference) | set(ours), key=str)
                for line in leaf_differences(reference.get(key), ours.get(key), f"{path}/{key}")]
    if isinstance(reference, list) and isinstance(ours, list) and len(reference) == len(ours):
        return [line for i, (a, b) in enumerate(zip(reference, ours)) for line in leaf_differences(a, b, f"{path}[{i}]")]
    return [] if reference == ours else [f"{path}: qemu-nbd={reference!r} blockd-nbd={ours!r}"]


@pytest.mark.parametrize("program", ["qemu-nbd", "blockd-nbd"])
def test_kernel_device_attach_and_detach(tmp_path, program):
    """-c /dev/nbdX serves the image through the kernel's nbd device (the data read there is the image's),
    -d disconnects it; both programs alike. Needs the nbd kernel module."""
    device = Path("/dev/nbd0")
    if not device.exists() or not Path("/sys/block/nbd0").exists():
        skip_or_fail("the nbd kernel module is not loaded (no /dev/nbd0); -c/-d cannot be tried here")
    executable = "qemu-nbd" if program == "qemu-nbd" else blockd_nbd()
    make_images(tmp_path)
    image = tmp_path / "disk.raw"
    attach = subprocess.run([executable, "-c", str(device), "-r", "-f", "raw", str(image)], capture_output=True, text=True,
                            timeout=30)
    assert attach.returncode == 0, attach.stderr
    try:
        deadline = time.monotonic() + 10
        while int(Path("/sys/block/nbd0/size").read_text()) == 0:
            assert time.monotonic() < deadline, "the device never got its size"
            time.sleep(0.05)
        assert hashlib.sha256(device.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    finally:
        detach = subprocess.run([executable, "-d", str(device)], capture_output=True, text=True, timeout=30)
    assert detach.returncode == 0 and detach.stdout == f"{device} disconnected\n"
