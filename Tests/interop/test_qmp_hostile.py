"""The monitor and connection admission against hostile or broken clients, over real sockets.

- A monitor client that never reads must stall nobody: neither another client's commands (whose
  events it is sent), nor NBD requests whose I/O errors raise events, nor SIGTERM. One whose unread
  events pass the bound is disconnected, with a log line.
- The JSON input is kept in bounded memory: a 100 MB line of garbage or an endless string costs
  the daemon a few MiB at most, and the session answers again after a 0xFF reset, as QEMU's does.
- `\\u0000` in a string is refused (it would cut a file name short); hostile JSON (deep nesting,
  huge numbers, invalid UTF-8) is answered with errors and never crashes the monitor.
- Monitor connections are capped; one local NBD peer that keeps reconnecting cannot lock a good
  client out, while 16 connections from one client keep working."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_image
from qmp_client import QMP, MiB, launcher  # noqa: F401

EVENT_LIMIT = 1 << 20          # bytes of unread events after which blockd drops a monitor client
MONITOR_CLIENTS = 64           # monitor clients served at once


def status_kib(pid: int, field: str) -> int:
    """A memory figure of process `pid` from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} line")


class PeakMemory:
    """How far the resident set of `pid` rose above its level at creation, at its highest: the peak
    (VmHWM) is reset first through /proc/PID/clear_refs, so that a buffer freed again before the
    end still counts."""

    def __init__(self, pid: int):
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.before = status_kib(pid, "VmRSS")

    def grown_kib(self) -> int:
        return status_kib(self.pid, "VmHWM") - self.before


def non_reader(daemon, rcvbuf: int = 4096) -> socket.socket:
    """A monitor client that negotiates, then never reads again (its receive buffer made small)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(str(daemon.qmp_path))
    data = b""
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    while data.count(b"\n") < 2:       # the greeting and the capabilities reply
        data += s.recv(4096)
    assert b'"return"' in data, data
    return s


def timed(q: QMP, message: dict, limit: float = 5.0) -> dict:
    """Sends one request and returns its reply, which must come within `limit` seconds."""
    q.sock.settimeout(limit)
    try:
        return q.request(message)
    except socket.timeout:
        raise AssertionError(f"no answer to {message} within {limit} s: the monitor is stalled") from None
    finally:
        q.sock.settimeout(10)


def wait_for_log(daemon, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in daemon.log_text():
        assert time.monotonic() < deadline, f"no log line with {text!r}:\n{daemon.log_text()[-3000:]}"
        time.sleep(0.05)
    return next(line for line in daemon.log_text().splitlines() if text in line)


@pytest.fixture
def daemon(launcher, tmp_path):
    """blockd with a null-co node n0 and an NBD server on a unix socket (started over QMP)."""
    d = launcher.blockd("--blockdev", "driver=null-co,node-name=n0,size=64M,read-zeroes=on")
    with d.qmp() as q:
        q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(tmp_path / "nbd.sock")}})
    return d


# =================================================================================================
# A client that never reads
# =================================================================================================

def test_a_client_that_never_reads_stalls_no_other_client(daemon):
    """3000 block-export-add/del cycles, each raising BLOCK_EXPORT_DELETED, with a negotiated client
    that never reads: every command is answered promptly and the reading client gets every event,
    in order, each before the reply to the command that raised it."""
    stalled = non_reader(daemon)
    q = daemon.qmp()
    slowest = 0.0
    for i in range(3000):
        start = time.monotonic()
        added = timed(q, {"execute": "block-export-add", "id": f"a{i}",
                          "arguments": {"type": "nbd", "id": f"e{i}", "node-name": "n0", "name": f"x{i}"}})
        assert added == {"id": f"a{i}", "return": {}}, added
        deleted = timed(q, {"execute": "block-export-del", "id": f"d{i}", "arguments": {"id": f"e{i}"}})
        assert deleted == {"id": f"d{i}", "return": {}}, deleted
        # The event came before the reply (QMP.reply queues events met on the way).
        assert q.events and q.events[-1]["event"] == "BLOCK_EXPORT_DELETED", q.events[-3:]
        assert q.events[-1]["data"] == {"id": f"e{i}"}
        slowest = max(slowest, time.monotonic() - start)
    assert [e["data"]["id"] for e in q.events] == [f"e{i}" for i in range(3000)]
    assert slowest < 2, f"a command cycle took {slowest:.2f} s"
    # The non-reader was sent far more than its socket holds, yet it is still connected: its events
    # wait in its own queue (about 130 bytes each, below the bound).
    assert "QMP client disconnected" not in daemon.log_text()
    stalled.close()
    q.close()


def test_a_client_whose_unread_events_overflow_is_disconnected(daemon):
    stalled = non_reader(daemon)
    q = daemon.qmp()
    # stop/cont raise STOP and RESUME (about 80 bytes each, never more than 90); 500 pairs at a time,
    # until the non-reader is dropped (its socket holds a few hundred KiB, its queue 1 MiB).
    batch = b'{"execute": "stop"}\n{"execute": "cont"}\n' * 500
    sent_events = 0
    while "QMP client disconnected" not in daemon.log_text():
        assert sent_events < 20 * EVENT_LIMIT // 80, "the client that never reads was never disconnected"
        q.send_raw(batch)
        q.sock.settimeout(5)
        for _ in range(1000):
            assert q.reply() == {"return": {}}
        sent_events += 1000
    assert sent_events * 90 >= EVENT_LIMIT, f"disconnected after only {sent_events} events"
    line = wait_for_log(daemon, "QMP client disconnected")
    assert "bytes of events unread" in line, line
    # The server closed the connection: what the kernel buffered, then end of stream.
    stalled.settimeout(5)
    received = 0
    while chunk := stalled.recv(65536):
        received += len(chunk)
    assert received < EVENT_LIMIT, f"{received} bytes reached the client: the queue was not dropped"
    # The reading client still works and got every event.
    assert len([e for e in q.events if e["event"] in ("STOP", "RESUME")]) == sent_events
    assert q.execute("query-version")["qemu"]["major"] == 2
    q.close()


def test_sigterm_ends_the_daemon_promptly_with_a_client_that_never_reads(launcher):
    d = launcher.blockd("--blockdev", "driver=null-co,node-name=n0,size=1M")
    stalled = non_reader(d)
    q = d.qmp()
    # Fill the non-reader's socket and part of its queue (2000 events), below the bound.
    q.send_raw(b'{"execute": "stop"}\n{"execute": "cont"}\n' * 1000)
    q.sock.settimeout(5)
    for _ in range(2000):
        assert q.reply() == {"return": {}}
    start = time.monotonic()
    d.proc.terminate()
    try:
        status = d.proc.wait(5)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        d.proc.wait()
        pytest.fail(f"blockd still running 5 s after SIGTERM with a client that never reads:\n{d.log_text()[-2000:]}")
    elapsed = time.monotonic() - start
    assert status == 0, d.log_text()[-2000:]
    assert elapsed < 3, f"SIGTERM took {elapsed:.2f} s"
    # The reading client was sent SHUTDOWN before the end.
    assert q.event("SHUTDOWN", timeout=2)["event"] == "SHUTDOWN"
    stalled.close()
    q.close()


def test_io_error_events_do_not_stall_nbd_requests(launcher, tmp_path):
    """Every read fails (blkdebug, rerror=report) and raises BLOCK_IO_ERROR on the NBD request's
    thread; with a client that never reads, 2000 failing reads still all get their error reply."""
    nbd = pytest.importorskip("nbd")
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    sock = tmp_path / "nbd.sock"
    d = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=blkdebug,node-name=dbg0,image=f0",
        "--nbd-server", f"addr.type=unix,addr.path={sock}")
    q = d.qmp()
    q.execute("blockdev-add", options={"driver": "raw", "id": "disk", "node-name": "disk0", "file": "dbg0",
                                       "rerror": "report"})
    q.execute("nbd-server-add", device="disk")
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///disk?socket={sock}")
    q.execute("x-blockd-blkdebug-set-rules", {"node-name": "dbg0", "inject-error": [
        {"event": "read_aio", "errno": 5, "once": False}]})
    stalled = non_reader(d)
    outcome = []

    def reads():
        failed = 0
        for _ in range(2000):
            try:
                h.pread(512, 0)
            except nbd.Error:
                failed += 1
        outcome.append(failed)

    thread = threading.Thread(target=reads, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome == [2000], "NBD reads stalled behind BLOCK_IO_ERROR events for a client that never reads"
    assert q.event("BLOCK_IO_ERROR")["data"]["operation"] == "read"
    h.shutdown()
    stalled.close()
    q.close()


# =================================================================================================
# Bounded input
# =================================================================================================

def send_chunks(sock: socket.socket, total: int, chunk: bytes) -> None:
    sent = 0
    while sent < total:
        sock.sendall(chunk)
        sent += len(chunk)


def test_a_100_mb_garbage_line_costs_no_memory_and_the_session_goes_on(daemon):
    q = daemon.qmp()
    assert q.execute("query-version")   # the session's thread and buffers exist before measuring
    peak = PeakMemory(daemon.proc.pid)
    send_chunks(q.sock, 100 * MiB, b"x" * MiB)
    q.send_raw(b"\n")
    reply = q.reply()
    # A run of letters is one keyword token to QEMU's lexer, and this one is far too long.
    assert reply["error"] == {"class": "GenericError", "desc": "JSON token size limit exceeded"}, reply
    assert q.request({"execute": "query-version", "id": "after"})["id"] == "after"
    grown = peak.grown_kib()
    assert grown < 4 * 1024, f"RSS rose by {grown} KiB for a 100 MB garbage line"
    q.close()


def test_an_endless_string_is_dropped_at_the_limit_and_0xff_resets(daemon):
    """A value that never ends (an unmatched quote) is answered once at the size limit (QEMU's
    "JSON token size limit exceeded") and skipped without being kept; 0xFF ends it."""
    q = daemon.qmp()
    assert q.execute("query-version")
    peak = PeakMemory(daemon.proc.pid)
    q.send_raw(b'{"execute": "blockdev-add", "arguments": {"driver": "file", "filename": "')
    send_chunks(q.sock, 100 * MiB, b"y" * MiB)
    assert q.reply() == {"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}
    # Still inside the value that was dropped: a command now is lexed as part of it and does not
    # run (its pieces may be answered with errors, as QEMU's lexer answers them). 0xFF resets; a
    # command after it runs.
    q.send_raw(b'{"execute": "query-version", "id": "swallowed"}')
    q.send_raw(b"\xff")
    q.send_raw(b'{"execute": "query-version", "id": "after"}\n')
    while (reply := q.reply()).get("id") != "after":
        assert "error" in reply and reply.get("id") != "swallowed", reply
    grown = peak.grown_kib()
    assert grown < 24 * 1024, f"RSS rose by {grown} KiB for an endless string (16 MiB are kept at most)"
    q.close()


def test_0xff_resets_an_unmatched_brace(daemon):
    q = daemon.qmp()
    q.send_raw(b'{"execute": "query-version", "arguments": {\n')
    q.send_raw(b'{"execute": "query-version", "id": "swallowed"}\n')
    q.send_raw(b"\xff")
    reply = q.reply()
    assert reply == {"error": {"class": "GenericError", "desc": "JSON parse error, stray '\ufffd'"}}, reply
    assert q.request({"execute": "query-version", "id": "after"})["id"] == "after"
    # A 0xFF with nothing pending is answered with one error too (clients ignore it).
    q.send_raw(b"\xff")
    assert q.reply()["error"]["class"] == "GenericError"
    assert q.request({"execute": "query-block-jobs", "id": 2}) == {"id": 2, "return": []}
    q.close()


# =================================================================================================
# Hostile JSON
# =================================================================================================

def test_nul_escape_is_refused(daemon, tmp_path):
    """"a.img\\u0000.evil" must not open a.img."""
    image = make_image(tmp_path / "a.img", MiB)
    q = daemon.qmp()
    name = str(image) + "\u0000.evil"
    text = json.dumps({"execute": "blockdev-add", "id": 1,
                       "arguments": {"driver": "file", "node-name": "evil", "filename": name}})
    assert "\\u0000" in text
    q.send_raw(text.encode() + b"\n")
    reply = q.reply()
    assert reply["error"]["class"] == "GenericError", reply
    assert reply["error"]["desc"].startswith("JSON parse error") and "\\u0000" in reply["error"]["desc"], reply
    assert "evil" not in {n["node-name"] for n in q.execute("query-named-block-nodes")}
    q.close()


@pytest.mark.parametrize("text,desc", [
    (b"[" * 100_000 + b"]" * 100_000, "JSON nesting depth limit exceeded"),
    (b'{"a": ' * 500 + b"1" + b"}" * 500, None),
    (b'{"execute": "query-version", "id": ' + b"9" * 1_000_000 + b"}", None),
    (b'{"execute": "query-version", "id": 1e99999}', None),
    (b'{"execute": "query-version", "id": "\xc0\x80"}', None),
    (b'{"execute": "query-version", "id": "\xed\xa0\x80"}', None),
    (b'{"execute": "query-version", "id": "\\ud800"}', None),
    (b'{"execute": "query-version", "id": "\\u12"}', None),
], ids=["deep", "deep-objects", "long-number", "huge-exponent", "overlong-nul", "surrogate-utf8",
        "lone-surrogate", "short-escape"])
def test_hostile_json_is_answered_and_never_crashes(daemon, text, desc):
    q = daemon.qmp()
    q.send_raw(text + b"\n")
    reply = q.reply()
    if desc is not None:
        assert reply == {"error": {"class": "GenericError", "desc": desc}}, reply
    elif "error" in reply:
        assert reply["error"]["class"] == "GenericError", reply
    else:   # a huge number is a number (QEMU: a double, as strtod reads it)
        assert "return" in reply, reply
    assert q.request({"execute": "query-version", "id": "alive"})["id"] == "alive"
    assert daemon.proc.poll() is None
    q.close()


# =================================================================================================
# Admission
# =================================================================================================

def connect_monitor(daemon, timeout: float = 5) -> QMP:
    """A monitor client, retried while a slot freed a moment ago is still being released."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return daemon.qmp(negotiate=False)
        except (EOFError, ConnectionResetError):
            assert time.monotonic() < deadline, "no monitor slot became free"
            time.sleep(0.05)


def test_monitor_clients_are_capped(daemon):
    clients = [connect_monitor(daemon) for _ in range(MONITOR_CLIENTS)]
    with socket.socket(socket.AF_UNIX) as extra:
        extra.settimeout(5)
        extra.connect(str(daemon.qmp_path))
        assert extra.recv(4096) == b"", "a monitor client beyond the cap was served"
    assert "64 monitor clients are connected" in wait_for_log(daemon, "QMP client refused")
    # Those admitted all work; a freed slot is taken again.
    assert clients[0].execute("qmp_capabilities") == {}
    clients.pop().close()
    with connect_monitor(daemon) as q:
        assert q.execute("qmp_capabilities") == {}
    for c in clients:
        c.close()


HOG = r"""
import select, socket, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
held, connects, end = [], 0, time.monotonic() + seconds
while time.monotonic() < end:
    if len(held) >= 300:    # drop the connections the server closed, and connect again
        readable, _, _ = select.select(held, [], [], 0)
        for s in readable:
            try:
                gone = s.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                gone = True
            if gone:
                held.remove(s)
                s.close()
        time.sleep(0.002)
        continue
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    held.append(s)
    connects += 1
    if connects % 50 == 0:
        print(connects, flush=True)
    time.sleep(0.001)
"""


def test_a_reconnecting_peer_cannot_lock_out_a_good_client(launcher, tmp_path):
    """A process that keeps opening connections (and holds them idle) fills all 100 slots; a client
    from another process still gets in, 16 connections of it, and keeps them."""
    nbd = pytest.importorskip("nbd")
    sock = tmp_path / "nbd.sock"
    d = launcher.blockd("--blockdev", "driver=null-co,node-name=n0,size=1M,read-zeroes=on",
                        "--export", "type=nbd,id=e0,node-name=n0,name=disk0",
                        "--nbd-server", f"addr.type=unix,addr.path={sock}")
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(sock), "8"], stdout=subprocess.PIPE, text=True)
    try:
        # Wait until the hog held every slot (it keeps connecting: the rest are refused).
        for line in hog.stdout:
            if int(line) >= 150:
                break
        assert "connection limit 100 reached" in d.log_text()   # once 16 of the hog's wait as well
        handles = []
        for _ in range(16):
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///disk0?socket={sock}")
            handles.append(h)
        time.sleep(0.5)   # the hog keeps reconnecting meanwhile
        for h in handles:
            assert h.pread(4096, 0) == bytes(4096)
        assert "closed to admit" in d.log_text()
        for h in handles:
            h.shutdown()
    finally:
        hog.kill()
        hog.wait()
