"""Fixtures shared by the interoperability tests: a real blockd process driven by real clients."""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the long tests: SIGKILL torture, the 5,000-case corrupt qcow2 catalogue")


@pytest.fixture(scope="session")
def long_mode(request) -> bool:
    """True under --long (the corrupt-image catalogue then runs 5,000 cases instead of about 600)."""
    return bool(request.config.getoption("--long"))


def require_long(request) -> None:
    """Skips a long-only test, saying how to run it (the one place such a skip comes from)."""
    if not request.config.getoption("--long"):
        pytest.skip("SKIPPED: long test, runs only with --long (scripts/test --long)")


def blockd_binary() -> str:
    """The blockd under test: $BLOCKD, else the release build, else the debug build."""
    if os.environ.get("BLOCKD"):
        return os.environ["BLOCKD"]
    for kind in ("release", "debug"):
        candidate = ROOT / ".build" / kind / "blockd"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no blockd binary: run 'swift build' or set BLOCKD")


# Skips that CI accepts: what a CI machine cannot offer whatever the scripts install. Every other
# skip fails the run under CI (CI=1, set by .ci/run), so a green CI run means the tests ran.
ALLOWED_IN_CI = (
    "the nbd kernel module",  # /dev/nbdX needs a kernel module that containers may not load
    "cannot attach a loop device",  # loop devices need /dev/loop-control, which containers may not have
)


def skip_or_fail(reason: str) -> None:
    """Skips with `reason` (shown by pytest -rs); under CI fails instead, unless the reason is one of
    the documented ALLOWED_IN_CI."""
    if os.environ.get("CI") and not any(allowed in reason for allowed in ALLOWED_IN_CI):
        pytest.fail(f"would skip in CI: {reason}")
    pytest.skip(f"SKIPPED: {reason}", allow_module_level=True)


def require(*programs: str) -> None:
    """Skip loudly when a client program is missing (CI installs them all, so nothing skips there)."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        skip_or_fail(f"client program(s) not installed: {', '.join(missing)}")


def import_or_skip(module: str):
    """Imports a client library (libnbd's `nbd`, `qemu.qmp`), skipping through skip_or_fail without it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        skip_or_fail(f"Python module {module} not installed ({error}); scripts/setup-deps installs it")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Blockd:
    """A running blockd; `uri` names its first export over its unix socket."""

    def __init__(self, workdir: Path, args: list[str], sock: Path, export: str | None, port: int | None):
        self.workdir = workdir
        self.sock = sock
        self.port = port
        self.export = export
        self.log_path = workdir / f"blockd-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([blockd_binary(), *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"blockd exited with {self.proc.returncode}:\n{self.log_text()}")
            if sock.exists() and _unix_open(sock) and (port is None or _port_open(port)) \
                    and all(_unix_open(monitor) for monitor in _monitor_sockets(args)):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"blockd did not start listening:\n{self.log_text()}")

    def uri(self, export: str | None = None) -> str:
        name = self.export if export is None else export
        return f"nbd+unix:///{name}?socket={self.sock}"

    def tcp_uri(self, export: str | None = None, host: str = "127.0.0.1") -> str:
        name = self.export if export is None else export
        h = f"[{host}]" if ":" in host else host
        return f"nbd://{h}:{self.port}/{name}"

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Ends the daemon (this process only, by PID) and returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _monitor_sockets(args: list[str]) -> list[Path]:
    """The unix sockets of the --chardev options: monitors start after the NBD listeners, so a test
    that talks to one right away waits for it too."""
    paths = []
    for option, value in zip(args, args[1:]):
        if option == "--chardev":
            paths += [Path(part[len("path="):]) for part in value.split(",") if part.startswith("path=")]
    return paths


def _unix_open(path: Path) -> bool:
    """True once the socket accepts connections (it exists between bind and listen too)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            s.connect(str(path))
            return True
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def start_blockd(tmp_path):
    """Factory: start_blockd(image=..., fmt='raw', writable=True, extra=[...], tcp=False, export='disk0', args=None).

    With `args` the command line is taken as given (plus the unix --nbd-server); otherwise a
    file node over `image` (or a null-co node when image is None) under a raw node is exported.
    `server_opts` is appended to the unix --nbd-server (e.g. ",max-connections=5,handshake-max-seconds=1");
    blockd takes its server limits from the first --nbd-server, which is this one unless `args` has its own."""
    started: list[Blockd] = []

    def factory(image: Path | None = None, writable: bool = True, extra: list[str] | None = None,
                tcp: bool = False, export: str = "disk0", args: list[str] | None = None,
                null_size: str = "64M", file_opts: str = "", check_exit: bool = True,
                server_opts: str = "") -> Blockd:
        sock = tmp_path / f"nbd-{len(started)}.sock"
        port = free_port() if tcp else None
        if args is None:
            if image is None:
                args = ["--blockdev", f"driver=null-co,node-name=disk0,size={null_size},read-zeroes=on"]
            else:
                args = ["--blockdev", f"driver=file,node-name=f0,filename={image}{file_opts}",
                        "--blockdev", "driver=raw,node-name=disk0,file=f0"]
            args += ["--export", f"type=nbd,id=e0,node-name=disk0,name={export},writable={'on' if writable else 'off'}"]
        args = [*args, "--nbd-server", f"addr.type=unix,addr.path={sock}{server_opts}"]
        if tcp:
            args += ["--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port}"]
        daemon = Blockd(tmp_path, args + (extra or []), sock, export, port)
        daemon.check_exit = check_exit
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        status = daemon.stop()
        if daemon.check_exit:
            assert status == 0, f"blockd exited with {status}:\n{daemon.log_text()}"


def make_image(path: Path, size: int, pattern: bytes | None = None) -> Path:
    """A sparse image of `size` bytes, optionally filled with random bytes (pattern=b'random')."""
    with open(path, "wb") as f:
        if pattern == b"random":
            f.write(os.urandom(size))
        else:
            f.truncate(size)
    return path
