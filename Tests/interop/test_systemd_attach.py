"""scripts/blockd-attach: attaching a blockd export to /dev/nbdX with nbd-client.

The kernel device itself cannot be attached here: containers and CI runners have no nbd module
(no /dev/nbd0, no netlink family). So everything up to the nbd-client call is tested, with stand-ins
for nbd-client and modprobe only, placed on PATH: each records its argv in a file and exits with the
status the test chooses. The script asks the real nbdinfo whether the export advertises multi-conn,
of real servers: blockd (it does) and nbdkit with its multi-conn filter set to disable (it does
not). One test hands the script's command to the real nbd-client, which negotiates with blockd
before it fails for want of the module."""
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from client_helpers import free_port6, ipv6_loopback_available, wait_connectable
from conftest import ROOT, free_port, require, skip_or_fail
from systemd_helpers import clean_env

ATTACH = ROOT / "scripts" / "blockd-attach"
NO_KERNEL_NBD = not os.path.exists("/dev/nbd0")

STANDIN = """#!/usr/bin/python3
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
sys.exit(int(os.environ.get("STANDIN_RC_" + name.upper().replace("-", "_"), "0")))
"""


class Tools:
    """A PATH of one directory: bash and cat (what the script needs), the real nbdinfo (unless
    nbdinfo="absent"), and stand-ins for nbd-client and modprobe (unless `real` names them)."""

    def __init__(self, tmp_path: Path, nbdinfo: str = "real", real: tuple[str, ...] = ()):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "standin.log"
        self.log.touch()
        if nbdinfo == "real":
            require("nbdinfo")
            real = (*real, "nbdinfo")
        for tool in ("bash", "cat", *real):
            os.symlink(shutil.which(tool), self.bin / tool)
        for tool in ("nbd-client", "modprobe"):
            if tool not in real:
                (self.bin / tool).write_text(STANDIN)
                (self.bin / tool).chmod(0o755)

    def run(self, *args, **rcs) -> subprocess.CompletedProcess:
        """Runs blockd-attach; rcs sets the stand-ins' exit statuses (nbd_client=1, modprobe=1)."""
        env = clean_env(PATH=str(self.bin), STANDIN_LOG=str(self.log))
        for name, rc in rcs.items():
            env["STANDIN_RC_" + name.upper()] = str(rc)
        return subprocess.run([str(ATTACH), *map(str, args)], capture_output=True, text=True, env=env, timeout=30)

    def calls(self, name: str | None = None) -> list[list[str]]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c[1:] for c in calls if c[0] == name] if name else calls


@pytest.fixture
def tools(tmp_path):
    return Tools(tmp_path)


class Server:
    """A real NBD server serving 'disk0' and 'vm1' on a unix socket, 127.0.0.1 and ::1 (when it can be
    bound): blockd, which advertises multi-conn, or nbdkit with the multi-conn filter set to disable,
    which does not. `connected(name)` tells whether a client opened that export."""

    def __init__(self, kind: str, tmp_path: Path, start_blockd):
        self.kind = kind
        self.sock = tmp_path / f"{kind}.sock"
        self.port = free_port()
        self.port6 = None if ipv6_loopback_available() else free_port6()
        self.connections = "4" if kind == "blockd" else "1"
        self.processes: list[subprocess.Popen] = []
        if kind == "blockd":
            extra = [] if self.port6 is None else [
                "--nbd-server", f"addr.type=inet,addr.host=::1,addr.port={self.port6}"]
            self.blockd = start_blockd(args=[
                "--blockdev", "driver=null-co,node-name=n0,size=1M",
                "--export", "type=nbd,id=e0,node-name=n0,name=disk0",
                "--export", "type=nbd,id=e1,node-name=n0,name=vm1",
                "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={self.port}", *extra])
            self.sock = self.blockd.sock  # start_blockd's own unix listener
            return
        require("nbdkit")
        self.logs = []
        listeners = [["-U", str(self.sock)], ["-i", "127.0.0.1", "-p", str(self.port)]]
        if self.port6 is not None:
            listeners.append(["-i", "::1", "-p", str(self.port6)])
        for index, listener in enumerate(listeners):
            log = tmp_path / f"nbdkit-{index}.log"
            self.logs.append(log)
            self.processes.append(subprocess.Popen(
                ["nbdkit", "-f", *listener, "--filter=log", "--filter=multi-conn", "memory", "1M",
                 f"logfile={log}", "multi-conn-mode=disable"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_connectable(socket.AF_UNIX, str(self.sock))
        wait_connectable(socket.AF_INET, ("127.0.0.1", self.port))
        if self.port6 is not None:
            wait_connectable(socket.AF_INET6, ("::1", self.port6))

    def fill(self, text: str) -> str:
        return text.replace("{sock}", str(self.sock)).replace("{port}", str(self.port)).replace(
            "{port6}", str(self.port6)).replace("{C}", self.connections)

    def connected(self, name: str) -> bool:
        deadline = time.monotonic() + 5
        while True:  # nbdkit's log filter writes when the connection ends
            if self.kind == "blockd":
                found = f"connected to export '{name}'" in self.blockd.log_text()
            else:
                found = any(f"Connect export={name} " in log.read_text() for log in self.logs if log.exists())
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:  # ours, by PID
            process.terminate()
            process.wait(10)


@pytest.fixture(params=["blockd", "nbdkit"], ids=["blockd-multi-conn", "nbdkit-no-multi-conn"])
def server(request, tmp_path, start_blockd):
    started = Server(request.param, tmp_path, start_blockd)
    yield started
    started.stop()


@pytest.mark.parametrize("script", ["blockd-attach", "install"])
def test_shellcheck_clean(script):
    require("shellcheck")
    proc = subprocess.run(["shellcheck", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(tools, flag):
    proc = tools.run(flag, "ignored", "/dev/sda")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("Usage: blockd-attach [OPTIONS] EXPORT DEVICE")
    assert "blockd-attach --detach DEVICE" in proc.stdout
    for option in ("-s, --socket PATH", "-H, --host HOST", "-p, --port PORT", "-c, --connections N",
                   "-r, --read-only", "-b, --block-size N", "-d, --detach", "-n, --dry-run", "-h, --help",
                   "/run/blockd/nbd.sock", "10809", "multi-conn"):
        assert option in proc.stdout, option
    assert tools.calls() == []


# Each: (arguments, words the message must contain). All exit 2 before any tool runs.
BAD_ARGUMENTS = {
    "no-arguments": ([], ["expected EXPORT and DEVICE"]),
    "device-missing": (["disk0"], ["expected EXPORT and DEVICE"]),
    "three-positionals": (["disk0", "/dev/nbd0", "extra"], ["expected EXPORT and DEVICE"]),
    "socket-needs-value": (["disk0", "/dev/nbd0", "-s"], ["-s needs a value"]),
    "host-needs-value": (["disk0", "/dev/nbd0", "--host"], ["--host needs a value"]),
    "port-needs-value": (["disk0", "/dev/nbd0", "-p"], ["-p needs a value"]),
    "port-not-a-number": (["-H", "127.0.0.1", "-p", "nbd", "disk0", "/dev/nbd0"], ["--port", "'nbd'"]),
    "port-zero": (["-H", "127.0.0.1", "-p", "0", "disk0", "/dev/nbd0"], ["--port", "1-65535"]),
    "port-too-big": (["-H", "127.0.0.1", "-p", "65536", "disk0", "/dev/nbd0"], ["--port", "1-65535"]),
    "port-beyond-64-bits": (["-H", "127.0.0.1", "-p", "99999999999999999999", "disk0", "/dev/nbd0"], ["--port"]),
    "port-negative": (["-H", "127.0.0.1", "--port", "-1", "disk0", "/dev/nbd0"], ["--port"]),
    "connections-not-a-number": (["-c", "four", "disk0", "/dev/nbd0"], ["--connections", "'four'"]),
    "connections-zero": (["-c", "0", "disk0", "/dev/nbd0"], ["--connections", "1-16"]),
    "connections-too-many": (["--connections", "17", "disk0", "/dev/nbd0"], ["--connections", "1-16"]),
    "connections-beyond-64-bits": (["-c", "99999999999999999999", "disk0", "/dev/nbd0"], ["--connections"]),
    "block-size-odd": (["-b", "1000", "disk0", "/dev/nbd0"], ["--block-size", "'1000'"]),
    "block-size-too-big": (["--block-size", "8192", "disk0", "/dev/nbd0"], ["--block-size", "'8192'"]),
    "device-not-nbd": (["disk0", "/dev/sda"], ["'/dev/sda' is not an NBD device"]),
    "device-relative": (["disk0", "nbd0"], ["'nbd0' is not an NBD device"]),
    "device-no-number": (["disk0", "/dev/nbd"], ["'/dev/nbd' is not an NBD device"]),
    "device-partition": (["disk0", "/dev/nbd0p1"], ["'/dev/nbd0p1' is not an NBD device"]),
    "unknown-long-option": (["--frobnicate", "disk0", "/dev/nbd0"], ["unknown option '--frobnicate'"]),
    "unknown-short-option": (["-x", "disk0", "/dev/nbd0"], ["unknown option '-x'"]),
    "detach-no-device": (["--detach"], ["--detach takes exactly one DEVICE"]),
    "detach-two-devices": (["-d", "/dev/nbd0", "/dev/nbd1"], ["--detach takes exactly one DEVICE"]),
    "detach-not-nbd": (["-d", "/dev/sda"], ["'/dev/sda' is not an NBD device"]),
    "dry-run-bad-port": (["-n", "-H", "::1", "-p", "port", "disk0", "/dev/nbd0"], ["--port", "'port'"]),
    "dry-run-not-nbd": (["--dry-run", "disk0", "/dev/vda"], ["'/dev/vda' is not an NBD device"]),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_argument_errors(tools, case):
    args, words = BAD_ARGUMENTS[case]
    proc = tools.run(*args)
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.stderr.startswith("blockd-attach: "), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert "integer expression" not in proc.stderr
    assert tools.calls("nbd-client") == [] and tools.calls("modprobe") == []


# Each: (arguments, the nbd-client argv, the export nbdinfo asks the test's server about, or None
# when -c is given or the address is not the test's). {sock}, {port}, {port6}: the server's;
# {C}: the connections that server's answer gives.
DRY_RUNS = {
    "unix-default": (["-c", "3", "disk0", "/dev/nbd0"],
                     ["-N", "disk0", "-u", "/run/blockd/nbd.sock", "/dev/nbd0", "-b", "4096", "-C", "3"], None),
    "unix-socket": (["-s", "{sock}", "-b", "512", "vm1", "/dev/nbd3"],
                    ["-N", "vm1", "-u", "{sock}", "/dev/nbd3", "-b", "512", "-C", "{C}"], "vm1"),
    "tcp-ipv4": (["-H", "127.0.0.1", "-p", "{port}", "disk0", "/dev/nbd1"],
                 ["-N", "disk0", "127.0.0.1", "{port}", "/dev/nbd1", "-b", "4096", "-C", "{C}"], "disk0"),
    "tcp-default-port": (["--host", "nbd.example", "-c", "2", "disk0", "/dev/nbd1"],
                         ["-N", "disk0", "nbd.example", "10809", "/dev/nbd1", "-b", "4096", "-C", "2"], None),
    "tcp-ipv6": (["-H", "::1", "-p", "{port6}", "--read-only", "disk0", "/dev/nbd2"],
                 ["-N", "disk0", "::1", "{port6}", "/dev/nbd2", "-b", "4096", "-C", "{C}", "-R"], "disk0"),
    "explicit-connections": (["-c", "8", "-r", "--block-size", "2048", "disk0", "/dev/nbd10"],
                             ["-N", "disk0", "-u", "/run/blockd/nbd.sock", "/dev/nbd10", "-b", "2048", "-C", "8", "-R"],
                             None),
    "options-after-positionals": (["disk0", "/dev/nbd0", "-H", "10.0.0.1", "-c", "2"],
                                  ["-N", "disk0", "10.0.0.1", "10809", "/dev/nbd0", "-b", "4096", "-C", "2"], None),
    "double-dash": (["-c", "1", "--", "-odd-name", "/dev/nbd0"],
                    ["-N", "-odd-name", "-u", "/run/blockd/nbd.sock", "/dev/nbd0", "-b", "4096", "-C", "1"], None),
}
ASKING = [case for case, (_, _, name) in DRY_RUNS.items() if name]


@pytest.mark.parametrize("case", ASKING)
def test_dry_run_asks_the_server_for_multi_conn(tools, server, case):
    """The real nbdinfo asks the real server: -C 4 from blockd, -C 1 from nbdkit without multi-conn;
    the server saw a client of the export (so the URI the script built reached it)."""
    args, expected, name = DRY_RUNS[case]
    if "{port6}" in args and server.port6 is None:
        skip_or_fail(f"IPv6 loopback: {ipv6_loopback_available()}")
    proc = tools.run("--dry-run", *[server.fill(a) for a in args])
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["nbd-client", *[server.fill(a) for a in expected]], proc.stdout
    assert tools.calls("nbd-client") == [] and tools.calls("modprobe") == []
    assert server.connected(name), f"nbdinfo never reached export {name!r} of {server.kind}"


@pytest.mark.parametrize("case", [case for case in DRY_RUNS if case not in ASKING])
def test_dry_run_prints_the_command(tools, case):
    args, expected, _ = DRY_RUNS[case]
    proc = tools.run("--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["nbd-client", *expected], proc.stdout
    assert tools.calls("nbd-client") == [] and tools.calls("modprobe") == []


def test_dry_run_detach(tools):
    proc = tools.run("-n", "--detach", "/dev/nbd7")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["nbd-client", "-d", "/dev/nbd7"]
    assert tools.calls() == []


def test_dry_run_without_nbdinfo_uses_one_connection(tmp_path):
    tools = Tools(tmp_path, nbdinfo="absent")
    proc = tools.run("-n", "disk0", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout)[-2:] == ["-C", "1"]


# --- the real invocation (stand-in nbd-client and modprobe) -------------------------------------

def _expect_modprobe(tools):
    assert tools.calls("modprobe") == ([["nbd"]] if NO_KERNEL_NBD else [])


@pytest.mark.parametrize("writable", [True, False], ids=["writable", "read-only-export"])
def test_attach_over_unix_asks_blockd_for_multi_conn(tmp_path, start_blockd, writable):
    """Against a running blockd (which advertises multi-conn), with the real nbdinfo: -C 4."""
    require("nbdinfo")
    daemon = start_blockd(image=None, writable=writable)
    tools = Tools(tmp_path, nbdinfo="real")
    proc = tools.run("-s", daemon.sock, "disk0", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert tools.calls("nbd-client") == [["-N", "disk0", "-u", str(daemon.sock), "/dev/nbd0", "-b", "4096", "-C", "4"]]
    _expect_modprobe(tools)


def test_attach_over_tcp_read_only(tmp_path, start_blockd):
    require("nbdinfo")
    daemon = start_blockd(image=None, tcp=True)
    tools = Tools(tmp_path, nbdinfo="real")
    proc = tools.run("-H", "127.0.0.1", "-p", daemon.port, "-r", "-b", "1024", "disk0", "/dev/nbd5")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls("nbd-client") == [
        ["-N", "disk0", "127.0.0.1", str(daemon.port), "/dev/nbd5", "-b", "1024", "-C", "4", "-R"]]
    _expect_modprobe(tools)


def test_attach_export_name_that_needs_uri_quoting(tmp_path, start_blockd):
    """An export named 'vm disk' (multi-conn advertised): the nbdinfo URI must be percent-encoded,
    or the check fails and the script silently falls back to one connection."""
    require("nbdinfo")
    daemon = start_blockd(image=None, export="vm disk")
    tools = Tools(tmp_path, nbdinfo="real")
    proc = tools.run("-s", daemon.sock, "vm disk", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls("nbd-client") == [["-N", "vm disk", "-u", str(daemon.sock), "/dev/nbd0", "-b", "4096", "-C", "4"]]


def test_attach_unreachable_server_uses_one_connection(tmp_path):
    require("nbdinfo")
    tools = Tools(tmp_path, nbdinfo="real")
    proc = tools.run("-s", tmp_path / "nobody.sock", "disk0", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls("nbd-client")[0][-2:] == ["-C", "1"]


def test_attach_without_nbdinfo_uses_one_connection(tmp_path):
    tools = Tools(tmp_path, nbdinfo="absent")
    proc = tools.run("disk0", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls("nbd-client") == [
        ["-N", "disk0", "-u", "/run/blockd/nbd.sock", "/dev/nbd0", "-b", "4096", "-C", "1"]]
    _expect_modprobe(tools)


def test_attach_connections_from_the_servers_answer(tools, server):
    """The real invocation (stand-in nbd-client): 4 connections when the server advertises multi-conn."""
    proc = tools.run("-s", server.sock, "vm1", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls("nbd-client") == [
        ["-N", "vm1", "-u", str(server.sock), "/dev/nbd0", "-b", "4096", "-C", server.connections]]
    _expect_modprobe(tools)


def test_detach(tools):
    proc = tools.run("--detach", "/dev/nbd0")
    assert proc.returncode == 0, proc.stderr
    assert tools.calls() == [["nbd-client", "-d", "/dev/nbd0"]]


def test_nbd_client_failure_is_the_scripts_failure(tools):
    proc = tools.run("-c", "1", "disk0", "/dev/nbd0", nbd_client=3)
    assert proc.returncode == 3, proc.stderr
    assert len(tools.calls("nbd-client")) == 1


@pytest.mark.skipif(not NO_KERNEL_NBD, reason="/dev/nbd0 exists: modprobe is not needed")
def test_missing_module_is_reported(tools):
    proc = tools.run("-c", "1", "disk0", "/dev/nbd0", modprobe=1)
    assert proc.returncode == 2
    assert "nbd kernel module is not available" in proc.stderr, proc.stderr
    assert tools.calls("modprobe") == [["nbd"]] and tools.calls("nbd-client") == []


@pytest.mark.skipif(not NO_KERNEL_NBD or os.path.exists("/sys/module/nbd"),
                    reason="the nbd module is loaded: the real nbd-client would attach a device")
def test_real_nbd_client_accepts_the_command(tmp_path, start_blockd):
    """The real nbd-client, given the script's arguments, connects (4 times, for -C 4) and negotiates
    the export with blockd; it then fails only because the kernel has no nbd module."""
    require("nbd-client", "nbdinfo")
    daemon = start_blockd(image=None)
    tools = Tools(tmp_path, nbdinfo="real", real=("nbd-client",))
    proc = tools.run("-s", daemon.sock, "disk0", "/dev/nbd0")
    assert proc.returncode != 0
    assert "nbd" in proc.stderr and "module" in proc.stderr, proc.stderr
    assert "not enough information" not in proc.stderr and "Usage" not in proc.stderr, proc.stderr
    log = daemon.log_text()
    assert log.count("connected to export 'disk0'") == 4 + 1, log   # nbdinfo's probe + 4 from nbd-client
