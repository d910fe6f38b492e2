"""Remote servers the nbd client tests put behind blockd: nbdkit (started in the foreground, ended by
PID), and a socket that accepts and never answers."""
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import require
from qmp_client import wait_for_socket


class Nbdkit:
    """`nbdkit -f -U SOCK PLUGIN ARGS...` on a unix socket; restartable on the same socket."""

    def __init__(self, workdir: Path, plugin: list[str], filters: list[str] | None = None, name: str = "nbdkit",
                 extra: list[str] | None = None):
        require("nbdkit")
        self.workdir = workdir
        self.sock = workdir / f"{name}.sock"
        self.log_path = workdir / f"{name}.log"
        self.argv = ["nbdkit", "-f", "-U", str(self.sock), *[f"--filter={f}" for f in (filters or [])],
                     *plugin, *(extra or [])]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_socket(self.sock, self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def blockdev(self, node: str = "remote", extra: str = "") -> str:
        """--blockdev option text of an nbd node on this server."""
        return f"driver=nbd,node-name={node},server.type=unix,server.path={self.sock}{extra}"


class SilentServer:
    """A unix socket that accepts connections and never sends a byte (a hung NBD server)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.running = False
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


def wait_until(predicate, timeout: float = 10, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
