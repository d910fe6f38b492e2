"""A long-lived daemon (blockd or qemu-storage-daemon) that opens one image at a time through QMP
(blockdev-add of qcow2 over file, block-export-add), reads it over NBD in chunks with a deadline,
and reports what happened: refused at open, per-chunk data or errno, died (and how), or hung.
A daemon that dies or hangs is replaced by a fresh one before the next image."""
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbd

from qmp_client import QMP, monitor_args, wait_for_socket

CHUNK = 64 << 10
DEADLINE = 20.0  # seconds one image may take (open, reads, writes, close) before it counts as hung


@dataclass
class Outcome:
    """What one daemon did with one image."""
    refused: str | None = None        # the open error, when blockdev-add or block-export-add failed
    size: int | None = None
    chunks: dict[int, bytes | str] = field(default_factory=dict)  # offset -> data, or errno name
    writes: list[str] = field(default_factory=list)               # "ok" or errno name per write/flush
    died: str | None = None           # "signal SIGSEGV", "exit 1", ... with the log tail
    hung: str | None = None           # what was in progress when the deadline passed
    fatal: str | None = None          # a Swift "Fatal error" line in the log

    @property
    def broken(self) -> str | None:
        return self.died or self.hung or self.fatal


class Hung(Exception):
    """The deadline passed while waiting for the daemon."""


class Prober:
    """One daemon at a time for program `program` (blockd or qemu-storage-daemon) in `workdir`."""

    def __init__(self, program: str, workdir: Path, name: str):
        self.program, self.workdir, self.name = program, workdir, name
        self.generation = 0
        self.counter = 0
        self.proc: subprocess.Popen | None = None

    # --- daemon lifecycle ----------------------------------------------------------------------
    def _start(self) -> None:
        self.generation += 1
        tag = f"{self.name}-{self.generation}"
        self.qmp_path = self.workdir / f"{tag}.qmp"
        self.nbd_path = self.workdir / f"{tag}.nbd"
        self.log_path = self.workdir / f"{tag}.log"
        self.log_seen = 0
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.program, *monitor_args(self.qmp_path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_socket(self.qmp_path, self.proc, timeout=60)
            self.qmp = QMP(self.qmp_path, timeout=DEADLINE)
            self.qmp.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(self.nbd_path)}})
        except (OSError, RuntimeError, EOFError, AssertionError) as error:
            self._kill()
            raise RuntimeError(f"{self.name} did not start: {error}\n{self.log_tail()}") from error

    def _ensure(self) -> None:
        """A running daemon: the current one, or a new one (a second try on a busy machine)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        try:
            self._start()
        except RuntimeError:
            self._start()

    def _kill(self) -> None:
        """SIGKILL to this daemon only, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        if getattr(self, "qmp", None) is not None:
            self.qmp.close()
            self.qmp = None

    def stop(self) -> int | None:
        """SIGTERM and the exit status (None when no daemon runs)."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                self._kill()
                return None
        self.proc = None
        return proc.returncode

    def log_tail(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _death(self, grace: float = 0.0) -> str | None:
        """How the daemon ended ("signal SIGSEGV; log tail: ..."), None while it runs; `grace`
        seconds are given to a daemon that is still on its way out (it closed its sockets first)."""
        if self.proc is None:
            return None
        if grace:
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            return None
        code = self.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return f"{how}; log tail:\n{self.log_tail()}"

    def _fatal_in_log(self) -> str | None:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_seen)
            new = f.read()
        self.log_seen += len(new)
        for line in new.decode(errors="replace").splitlines():
            if "Fatal error" in line or "fatalError" in line:
                return line.strip()
        return None

    # --- one image ----------------------------------------------------------------------------
    def probe(self, image: Path, *, read_limit: int, writes: list[tuple[int, bytes]] = (),
              offsets: list[int] | None = None) -> Outcome:
        """Opens `image` (read-only unless `writes` are given), reads [0, min(size, read_limit))
        chunk by chunk (and the middle and last chunks of a larger image) or just the chunks at
        `offsets`, performs `writes` and a flush, then closes it."""
        out = Outcome()
        if self.proc is not None and self.proc.poll() is not None:
            out.died = f"between images (after the previous one): {self._death()}"
            self.proc = None
            return out
        try:
            self._ensure()
        except RuntimeError as error:
            out.hung = str(error)
            return out
        self.counter += 1
        node, export = f"q{self.counter}", f"c{self.counter}"
        deadline = time.monotonic() + DEADLINE
        self.step = "blockdev-add"
        added = False
        try:
            ro = not writes
            reply = self._cmd(deadline, "blockdev-add", {
                "driver": "qcow2", "node-name": node, "read-only": ro,
                "file": {"driver": "file", "filename": str(image), "read-only": ro}})
            if "error" in reply:
                out.refused = reply["error"]["desc"]
                return out
            added = True
            self.step = "block-export-add"
            reply = self._cmd(deadline, "block-export-add", {"type": "nbd", "id": export, "node-name": node,
                                                             "name": export, "writable": not ro})
            if "error" in reply:
                out.refused = f"export: {reply['error']['desc']}"
                return out
            self._transfer(f"nbd+unix:///{export}?socket={self.nbd_path}", out, read_limit, offsets, writes,
                           deadline)
            self.step = "block-export-del"
            self._cmd(deadline, "block-export-del", {"id": export, "mode": "hard"})
            self._event(deadline, "BLOCK_EXPORT_DELETED")
            self.step = "blockdev-del"
            self._cmd(deadline, "blockdev-del", {"node-name": node})
            added = False
        except Hung:
            out.hung = f"no answer within {DEADLINE:.0f} s during {self.step}"
        except (OSError, EOFError) as error:
            if self._death(grace=2.0) is None:
                out.hung = f"{self.step} failed: {error}"
        finally:
            out.died = self._death()
            if out.died is None and out.hung is None:
                out.fatal = self._fatal_in_log()
            if out.broken:
                self._kill()
            elif added:
                try:
                    self._cmd(deadline, "blockdev-del", {"node-name": node})
                except (Hung, OSError, EOFError):
                    self._kill()
        return out

    def _transfer(self, uri: str, out: Outcome, read_limit: int, offsets: list[int] | None,
                  writes: list[tuple[int, bytes]], deadline: float) -> None:
        """The NBD part of a probe. A connection the server drops while it lives on fails the
        chunks not read yet ("ENOTCONN"), as QEMU drops it after finding an image corrupt."""
        self.step = "NBD connect"
        h = nbd.NBD()
        try:
            _connect(h, uri, deadline)
            out.size = h.get_size()
            self.step = "reads"
            if offsets is None:
                end = min(out.size, read_limit)
                offsets = list(range(0, end, CHUNK))
                offsets += sorted({o for o in (out.size // 2 // CHUNK * CHUNK, (out.size - 1) // CHUNK * CHUNK)
                                   if o >= end})
            _read_all(h, [o for o in offsets if o < out.size], out.size, deadline, out.chunks)
            self.step = "writes"
            for offset, payload in writes:
                if offset + len(payload) <= out.size:
                    out.writes.append(_wait(h, h.aio_pwrite(payload, offset), deadline))
            if writes:
                out.writes.append(_wait(h, h.aio_flush(), deadline))
            self.step = "disconnect"
            h.aio_disconnect()
            while not h.aio_is_closed() and not h.aio_is_dead():
                _poll(h, deadline)
        except nbd.Error as error:
            if self._death(grace=0.5) is not None or out.size is None:
                raise OSError(str(error)) from error
            for offset in offsets or []:
                out.chunks.setdefault(offset, "ENOTCONN")
            out.writes.append("ENOTCONN")
        finally:
            del h

    def _cmd(self, deadline: float, name: str, arguments: dict) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Hung()
        self.qmp.sock.settimeout(remaining)
        try:
            return self.qmp.cmd(name, arguments)
        except socket.timeout as error:
            raise Hung() from error

    def _event(self, deadline: float, name: str) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Hung()
        try:
            return self.qmp.event(name, timeout=remaining)
        except AssertionError as error:
            raise Hung() from error


def _connect(h: "nbd.NBD", uri: str, deadline: float) -> None:
    h.aio_connect_uri(uri)
    while not h.aio_is_ready():
        if h.aio_is_dead() or h.aio_is_closed():
            raise nbd.Error("connection died during the handshake", None)
        _poll(h, deadline)


def _poll(h: "nbd.NBD", deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Hung()
    h.poll(max(1, int(min(remaining, 1.0) * 1000)))


def _wait(h: "nbd.NBD", cookie: int, deadline: float) -> str:
    while True:
        try:
            if h.aio_command_completed(cookie):
                return "ok"
        except nbd.Error as error:
            if h.aio_is_dead() or h.aio_is_closed():
                raise
            return error.errno or str(error)
        _poll(h, deadline)


def _read_all(h: "nbd.NBD", offsets: list[int], size: int, deadline: float, results: dict[int, bytes | str]) -> None:
    """Reads a CHUNK at each offset (clipped to the size), 32 in flight, into `results`: the data
    or the errno name per offset."""
    pending: dict[int, tuple[int, "nbd.Buffer"]] = {}
    queue = list(offsets)
    while queue or pending:
        while queue and len(pending) < 32:
            offset = queue.pop(0)
            buf = nbd.Buffer(min(CHUNK, size - offset))
            pending[h.aio_pread(buf, offset)] = (offset, buf)
        for cookie in list(pending):
            offset, buf = pending[cookie]
            try:
                done = h.aio_command_completed(cookie)
            except nbd.Error as error:
                if h.aio_is_dead() or h.aio_is_closed():
                    raise
                results[offset] = error.errno or str(error)
                del pending[cookie]
                continue
            if done:
                results[offset] = bytes(buf.to_bytearray())
                del pending[cookie]
        if pending:
            _poll(h, deadline)
