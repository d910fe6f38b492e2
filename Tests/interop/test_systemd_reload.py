"""SIGHUP (systemctl reload blockd@X): blockd re-reads its config and changes only what differs.
Unchanged exports keep their clients, removed ones disconnect theirs, new ones appear; listeners are
added and removed the same way; a file that does not parse changes nothing and is reported."""
import random
import signal
import socket
import threading
import time

import nbd
import pytest

from conftest import free_port, make_image
from client_helpers import MiB, read_file
from systemd_helpers import (NotifySocket, Process, clean_env, export_lines, nbd_exports, port_open,
                             start_blockd_config, write_config)

SIZE = 4 * MiB


@pytest.fixture
def procs():
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


class Reader(threading.Thread):
    """One libnbd connection reading random ranges of an export without pause, checking each against
    the image's bytes; any error or mismatch is recorded (and ends the thread)."""

    def __init__(self, uri: str, expected: bytes):
        super().__init__(daemon=True)
        self.handle = nbd.NBD()
        self.handle.connect_uri(uri)
        self.expected = expected
        self.reads = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        while not self.halt.is_set():
            offset = rng.randrange(0, len(self.expected) // 4096) * 4096
            length = min(rng.choice((4096, 65536, 262144)), len(self.expected) - offset)
            try:
                data = self.handle.pread(length, offset)
            except nbd.Error as error:
                self.failures.append(f"read {offset}+{length} after {self.reads} reads: {error}")
                return
            if data != self.expected[offset:offset + length]:
                self.failures.append(f"read {offset}+{length} after {self.reads} reads: wrong data")
                return
            self.reads += 1

    def wait_reads(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.reads < count and not self.failures and self.is_alive():
            assert time.monotonic() < deadline, f"only {self.reads} reads in {timeout}s"
            time.sleep(0.005)

    def finish(self) -> None:
        self.halt.set()
        self.join(10)
        assert not self.failures, self.failures
        self.handle.shutdown()


@pytest.fixture
def abc(tmp_path):
    """Three random images A, B, C and their bytes."""
    images = {name: make_image(tmp_path / f"{name}.img", SIZE, b"random") for name in "ABC"}
    return images, {name: read_file(path) for name, path in images.items()}


def _config(tmp_path, images, names, listeners):
    lines = [line for name in names for line in export_lines(name, images[name])]
    return write_config(tmp_path / "blockd.conf", lines + listeners)


def _reload(p: Process, notify: NotifySocket) -> None:
    """SIGHUP, then wait for the READY=1 that ends the reload (systemctl reload waits for it too)."""
    count = len(notify.messages)
    p.send(signal.SIGHUP)
    reloading, _ = notify.wait_for("RELOADING", "1", after=count, process=p)
    notify.wait_for("READY", "1", after=reloading + 1, process=p)


def _start(tmp_path, procs, config):
    notify = NotifySocket(tmp_path / "notify")
    p = start_blockd_config(tmp_path, config, clean_env(NOTIFY_SOCKET=notify.address))
    procs.append(p)
    notify.wait_for("READY", "1", process=p)
    return p, notify


def test_reload_swaps_exports_and_keeps_the_unchanged_ones_clients(tmp_path, procs, abc):
    images, data = abc
    sock = tmp_path / "nbd.sock"
    listeners = [f"nbd-server addr.type=unix,addr.path={sock}"]
    config = _config(tmp_path, images, "AB", listeners)
    p, notify = _start(tmp_path, procs, config)
    uri = f"nbd+unix:///{{}}?socket={sock}"
    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["A", "B"]

    reader = Reader(uri.format("A"), data["A"])
    reader.start()
    b_client = nbd.NBD()
    b_client.connect_uri(uri.format("B"))
    assert b_client.pread(4096, 0) == data["B"][:4096]
    reader.wait_reads(50)

    _config(tmp_path, images, "AC", listeners)   # B removed, C added, A's lines unchanged
    at_reload = reader.reads
    _reload(p, notify)
    reader.wait_reads(at_reload + 200)           # the A client goes on, on the same connection

    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["A", "C"]
    h = nbd.NBD()
    h.connect_uri(uri.format("C"))
    assert h.pread(SIZE, 0) == data["C"]
    h.shutdown()
    with pytest.raises(nbd.Error):
        b_client.pread(4096, 0)                  # B's client was disconnected
    failed = nbd.NBD()
    with pytest.raises(nbd.Error):
        failed.connect_uri(uri.format("B"))

    reader.finish()
    assert reader.reads > at_reload + 200
    log = p.log_text()
    assert log.count("connected to export 'A'") == 1, log
    assert "export 'B' removed" in log, log
    assert p.stop() == 0, p.log_text()


BAD_LINES = {
    "unknown-option": "frobnicate driver=null-co",
    "malformed-value": "blockdev bogus",
    "no-value": "export",
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_reload_of_a_broken_file_changes_nothing(tmp_path, procs, abc, case):
    images, data = abc
    sock = tmp_path / "nbd.sock"
    listeners = [f"nbd-server addr.type=unix,addr.path={sock}"]
    config = _config(tmp_path, images, "AB", listeners)
    p, notify = _start(tmp_path, procs, config)
    reader = Reader(f"nbd+unix:///A?socket={sock}", data["A"])
    reader.start()
    reader.wait_reads(20)

    # C added and B removed, but one line is wrong: none of it may happen.
    good = [line for name in "AC" for line in export_lines(name, images[name])] + listeners
    bad = good[:2] + [BAD_LINES[case]] + good[2:]
    write_config(config, bad)
    at_reload = reader.reads
    _reload(p, notify)
    reader.wait_reads(at_reload + 50)
    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["A", "B"]

    log = p.log_text()
    errors = [line for line in log.splitlines() if "error" in line]
    assert errors, f"the broken config was not reported:\n{log}"
    # README: "a mistake is reported with the file and line" (line 1 is write_config's comment).
    assert any(f"{config}:4" in line for line in errors), (
        f"the error does not name {config}:4 (the line '{BAD_LINES[case]}'): {errors}")

    # Fixing the file and reloading again applies the change.
    write_config(config, good)
    _reload(p, notify)
    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["A", "C"]
    reader.finish()
    assert p.stop() == 0, p.log_text()


def test_reload_adds_and_removes_listeners(tmp_path, procs, abc):
    images, data = abc
    one, two, port = tmp_path / "one.sock", tmp_path / "two.sock", free_port()
    config = _config(tmp_path, images, "A", [f"nbd-server addr.type=unix,addr.path={one}",
                                             f"nbd-server addr.type=unix,addr.path={two}"])
    p, notify = _start(tmp_path, procs, config)
    reader = Reader(f"nbd+unix:///A?socket={one}", data["A"])
    reader.start()
    reader.wait_reads(20)

    _config(tmp_path, images, "A", [f"nbd-server addr.type=unix,addr.path={one}",
                                    f"nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port={port}"])
    at_reload = reader.reads
    _reload(p, notify)
    reader.wait_reads(at_reload + 50)
    assert nbd_exports(f"nbd://127.0.0.1:{port}") == ["A"]
    assert not two.exists(), "the removed listener's socket file is still there"
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(str(two))
    status = notify.messages[-1][1].get("STATUS", "")
    assert f"127.0.0.1:{port}" in status and str(two) not in status, status
    reader.finish()
    assert p.stop() == 0, p.log_text()
    assert not port_open(port) and not one.exists()


def test_reload_leaves_out_a_node_that_cannot_be_opened(tmp_path, procs, abc):
    """A well-formed file whose new image is missing: that node and its export are reported and left
    out (the Daemon.reload contract), everything else is applied, and the reload still ends in READY=1."""
    images, data = abc
    sock = tmp_path / "nbd.sock"
    listeners = [f"nbd-server addr.type=unix,addr.path={sock}"]
    config = _config(tmp_path, images, "AB", listeners)
    p, notify = _start(tmp_path, procs, config)
    missing = tmp_path / "missing.img"
    write_config(config, [line for name in "AC" for line in export_lines(name, images[name])]
                 + export_lines("M", missing) + listeners)
    _reload(p, notify)
    assert nbd_exports(f"nbd+unix://?socket={sock}") == ["A", "C"]
    errors = [line for line in p.log_text().splitlines() if "error" in line]
    assert any("file-M" in line and str(missing) in line for line in errors), errors
    assert p.stop() == 0, p.log_text()
