"""Helpers for the test_systemd*.py files: blockd started the way systemd starts it (a config file,
an environment of NOTIFY_SOCKET / WATCHDOG_USEC / JOURNAL_STREAM / LISTEN_FDS), a stand-in for the
service manager's notification socket, and config-file writing."""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import blockd_binary

# Variables of the test's own environment that would change what blockd does under test.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                     "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    env.update(extra)
    return env


def export_lines(name: str, image: Path | None = None, writable: bool = True, size: str = "4M") -> list[str]:
    """Config lines for one export `name` over node `name` (a file under a raw node, or null-co)."""
    if image is None:
        nodes = [f"blockdev driver=null-co,node-name={name},size={size},read-zeroes=on"]
    else:
        nodes = [f"blockdev driver=file,node-name=file-{name},filename={image}",
                 f"blockdev driver=raw,node-name={name},file=file-{name}"]
    return nodes + [f"export type=nbd,id=export-{name},node-name={name},name={name},"
                    f"writable={'on' if writable else 'off'}"]


def write_config(path: Path, lines: list[str]) -> Path:
    """Writes a config file atomically (a reload must never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# written by the systemd interop tests\n" + "\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


class Process:
    """A process the test started (blockd, or systemd-socket-activate exec'ing blockd), with its
    standard output and error in a file. Stopped by PID only."""

    def __init__(self, workdir: Path, cmd: list[str], env: dict, pass_fds=()):
        self.log_path = workdir / f"proc-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.cmd = [str(c) for c in cmd]
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     pass_fds=pass_fds)
        self.pid = self.proc.pid

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log:
                return log
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode} before logging {text!r}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log}")
            time.sleep(0.02)

    def send(self, number: int) -> None:
        assert self.proc.poll() is None, f"process already exited {self.proc.returncode}:\n{self.log_text()}"
        self.proc.send_signal(number)

    def stop(self, number: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(number)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 10) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process still running after {timeout}s:\n{self.log_text()}")


def start_blockd_config(workdir: Path, config: Path, env: dict | None = None, extra: list[str] = ()) -> Process:
    return Process(workdir, [blockd_binary(), "--config", config, *extra], env if env is not None else clean_env())


class NotifySocket:
    """The service manager's end of sd_notify(3): a datagram socket bound in the test's directory
    (or in the abstract namespace). `messages` holds (monotonic time of arrival, {key: value})."""

    def __init__(self, path: Path | None = None, abstract: str | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[tuple[float, dict[str, str], str]] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        now = time.monotonic()
        text = data.decode()
        fields = dict(line.split("=", 1) for line in text.split("\n") if line)
        self.messages.append((now, fields, text))
        return True

    def collect(self, seconds: float) -> None:
        """Receives everything that arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10, after: int = 0,
                 process: Process | None = None) -> tuple[int, dict[str, str]]:
        """The first message (at index >= after) with `key` (= `value`); returns (index, fields)."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after, len(self.messages)):
                fields = self.messages[index][1]
                if key in fields and (value is None or fields[key] == value):
                    return index, fields
            left = deadline - time.monotonic()
            if left <= 0:
                log = process.log_text() if process else ""
                raise AssertionError(f"no {key}={value or '*'} notification within {timeout}s; "
                                     f"got {[m[2] for m in self.messages]}\n{log}")
            if process is not None and process.proc.poll() is not None and not self._receive(0.05):
                raise AssertionError(f"blockd exited {process.proc.returncode} without sending {key}:\n"
                                     f"{process.log_text()}")
            self._receive(min(left, 0.1))

    def texts(self) -> list[str]:
        return [m[2] for m in self.messages]


def nbd_exports(uri: str) -> list[str]:
    """Export names from `nbdinfo --list --json`."""
    proc = subprocess.run(["nbdinfo", "--list", "--json", uri], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, f"nbdinfo --list {uri} failed:\n{proc.stdout}{proc.stderr}"
    return sorted(e["export-name"] for e in json.loads(proc.stdout)["exports"])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
