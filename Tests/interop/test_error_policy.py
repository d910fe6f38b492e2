"""rerror/werror on devices under live exports, and QMP stop/cont. A connected libnbd client writes
while requests fail: `stop` (and `enospc` on a full disk) pause the device — the client's request
waits, it sees no error — with BLOCK_IO_ERROR (action "stop", nospace, reason) and io-status in
query-block; `cont` retries the request and the client goes on. `ignore` answers success and reports
the event; `report` passes the error on. The thin-provisioning story runs end to end on a tmpfs that
is too small and is grown while the client waits."""
import os
import subprocess
import threading
import time

import pytest

from conftest import make_image, import_or_skip, skip_or_fail
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

EIO, ENOSPC = 5, 28


class Env:
    """blockd with file node "f0" on `image`, blkdebug "dbg0" over it, and a 2.6-form device `device`
    (raw node "disk0" over dbg0) with the given policies, exported writable under the device's name."""

    def __init__(self, launcher, tmp_path, image, device: str = "disk", aio: str = "threads", blkdebug: bool = True,
                 **policies):
        self.sock = tmp_path / "nbd.sock"
        self.device = device
        self.daemon = launcher.blockd(
            "--blockdev", f"driver=file,node-name=f0,filename={image},aio={aio}",
            "--blockdev", "driver=blkdebug,node-name=dbg0,image=f0",
            "--nbd-server", f"addr.type=unix,addr.path={self.sock}")
        self.q = self.daemon.qmp()
        self.q.execute("blockdev-add", options={"driver": "raw", "id": device, "node-name": "disk0",
                                               "file": "dbg0" if blkdebug else "f0", **policies})
        self.q.execute("nbd-server-add", device=device, writable=True)

    def connect(self, name: str | None = None):
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///{name or self.device}?socket={self.sock}")
        return h

    def block(self, device: str | None = None) -> dict:
        answer = self.q.execute("query-block")
        Schema(self.q.execute("query-qmp-schema")).check_return("query-block", answer)
        return next(d for d in answer if d["device"] == (device or self.device))

    def inject(self, event: str, errno: int = EIO, once: bool = True):
        rule = {"event": event, "errno": errno, "once": once}
        assert self.q.execute("x-blockd-blkdebug-set-rules", {"node-name": "dbg0", "inject-error": [rule]}) == {}


def in_background(operation):
    """Runs `operation` on a thread; returns (thread, result list: [value] or [exception])."""
    result = []

    def body():
        try:
            result.append(operation())
        except Exception as error:  # noqa: BLE001 - the test inspects what the client saw
            result.append(error)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


def test_stop_pauses_the_device_and_cont_retries_the_write(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    env = Env(launcher, tmp_path, image, werror="stop")
    h = env.connect()
    env.inject("write_aio")
    thread, result = in_background(lambda: h.pwrite(b"S" * 64 * KiB, 1 * MiB))
    event = env.q.event("BLOCK_IO_ERROR")
    assert event["data"]["device"] == "disk" and event["data"]["operation"] == "write", event
    assert event["data"]["action"] == "stop" and event["data"]["nospace"] is False, event
    assert event["data"]["reason"], event
    time.sleep(0.3)
    assert thread.is_alive() and result == [], "the client's write must wait, not fail"
    assert env.block()["io-status"] == "failed"
    assert env.q.execute("cont") == {}
    assert env.q.event("RESUME")
    thread.join(5)
    assert result == [None], result
    assert env.block()["io-status"] == "ok"
    assert h.pread(64 * KiB, 1 * MiB) == b"S" * 64 * KiB
    with open(image, "rb") as f:
        f.seek(1 * MiB)
        assert f.read(64 * KiB) == b"S" * 64 * KiB
    h.shutdown()


def test_stop_on_read_pauses_only_that_device(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    env = Env(launcher, tmp_path, image, rerror="stop")
    env.q.execute("blockdev-add", options={"driver": "null-co", "id": "other", "node-name": "n1", "read-zeroes": True})
    env.q.execute("nbd-server-add", device="other", writable=True)
    h, other = env.connect(), env.connect("other")
    env.inject("read_aio")
    thread, result = in_background(lambda: h.pread(4096, 0))
    event = env.q.event("BLOCK_IO_ERROR")
    assert (event["data"]["operation"], event["data"]["action"]) == ("read", "stop"), event
    # The other device's client goes on while this one waits.
    started = time.monotonic()
    for _ in range(20):
        assert other.pread(4096, 0) == bytes(4096)
        other.pwrite(b"o" * 4096, 0)
    assert time.monotonic() - started < 10, "the other device was held up"  # generous: ~40 ms when idle
    assert thread.is_alive()
    # A second client of the paused device waits too.
    h2 = env.connect()
    thread2, result2 = in_background(lambda: h2.pread(4096, 8192))
    time.sleep(0.2)
    assert thread2.is_alive()
    env.q.execute("cont")
    thread.join(5)
    thread2.join(5)
    assert result == [image.read_bytes()[:4096]] and result2 == [image.read_bytes()[8192:12288]]
    h.shutdown()
    h2.shutdown()
    other.shutdown()


def test_ignore_completes_the_request_and_reports_the_event(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    env = Env(launcher, tmp_path, image, werror="ignore")
    h = env.connect()
    env.inject("write_aio", once=False)
    h.pwrite(b"i" * 4096, 0)  # no error reaches the client
    event = env.q.event("BLOCK_IO_ERROR")
    assert (event["data"]["action"], event["data"]["operation"]) == ("ignore", "write"), event
    assert env.block()["io-status"] == "ok"
    h.shutdown()


def test_report_passes_the_error_on(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    env = Env(launcher, tmp_path, image, werror="enospc")  # EIO under enospc: reported
    h = env.connect()
    env.inject("write_aio", errno=EIO)
    with pytest.raises(nbd.Error) as error:
        h.pwrite(b"r" * 4096, 0)
    assert error.value.errno == "EIO"
    event = env.q.event("BLOCK_IO_ERROR")
    assert (event["data"]["action"], event["data"]["nospace"]) == ("report", False), event
    # enospc stops on ENOSPC.
    env.inject("write_aio", errno=ENOSPC)
    thread, result = in_background(lambda: h.pwrite(b"r" * 4096, 0))
    event = env.q.event("BLOCK_IO_ERROR")
    assert (event["data"]["action"], event["data"]["nospace"]) == ("stop", True), event
    assert env.block()["io-status"] == "nospace"
    env.q.execute("cont")
    thread.join(5)
    assert result == [None]
    h.shutdown()


def test_qmp_stop_pauses_every_device_until_cont(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    env = Env(launcher, tmp_path, image)
    h = env.connect()
    assert env.q.execute("stop") == {}
    assert env.q.event("STOP")
    thread, result = in_background(lambda: h.pread(4096, 0))
    # A device created while stopped is stopped too.
    env.q.execute("blockdev-add", options={"driver": "null-co", "id": "late", "node-name": "nl", "read-zeroes": True})
    env.q.execute("nbd-server-add", device="late")
    late = env.connect("late")
    late_thread, late_result = in_background(lambda: late.pread(4096, 0))
    time.sleep(0.3)
    assert thread.is_alive() and late_thread.is_alive(), "requests wait while stopped"
    assert env.q.execute("cont") == {}
    assert env.q.event("RESUME")
    thread.join(5)
    late_thread.join(5)
    assert result == [image.read_bytes()[:4096]] and late_result == [bytes(4096)]
    late.shutdown()
    # cont while running: nothing happens, no event.
    assert env.q.execute("cont") == {}
    assert [e for e in env.q.no_event() if e["event"] == "RESUME"] == []
    h.shutdown()


def test_bad_policy_is_refused_and_nothing_is_created(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 1 * MiB)
    env = Env(launcher, tmp_path, image)
    error = env.q.error("blockdev-add", options={"driver": "null-co", "id": "x", "node-name": "nx", "werror": "explode"})
    assert error["class"] == "GenericError" and "werror" in error["desc"], error
    assert not [d for d in env.q.execute("query-block") if d["device"] == "x"]
    assert not [n for n in env.q.execute("query-named-block-nodes") if n["node-name"] == "nx"]


# ---------------------------------------------------------------------------------------------------
# Thin provisioning


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted for this test (root only), unmounted afterwards."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        skip_or_fail(f"cannot mount a tmpfs (needs root): {error}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("aio", ["threads", "native"])
def test_thin_provisioning_full_disk_stalls_then_finishes_after_growth_and_cont(launcher, tmp_path, small_fs, aio):
    """aio=native sends the writes through io_uring: the failed write is retried from the engine's completion."""
    image = make_image(small_fs / "thin.img", 16 * MiB)  # sparse: 16 MiB on 4 MiB of storage
    env = Env(launcher, tmp_path, image, aio=aio, blkdebug=False, werror="enospc")
    env.q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 2 * MiB})
    data = os.urandom(12 * MiB)
    chunk = 256 * KiB
    h = env.connect()

    def writer():
        for offset in range(0, len(data), chunk):
            h.pwrite(data[offset:offset + chunk], offset)
        h.flush()

    thread, result = in_background(writer)
    threshold = env.q.event("BLOCK_WRITE_THRESHOLD", timeout=10)
    assert threshold["data"]["node-name"] == "disk0"
    error = env.q.event("BLOCK_IO_ERROR", timeout=10)
    assert error["data"]["device"] == "disk" and error["data"]["action"] == "stop", error
    assert error["data"]["nospace"] is True and error["data"]["operation"] == "write", error
    assert (threshold["timestamp"]["seconds"], threshold["timestamp"]["microseconds"]) <= \
        (error["timestamp"]["seconds"], error["timestamp"]["microseconds"]), "the threshold warns first"
    time.sleep(0.5)
    assert thread.is_alive() and result == [], f"the client must stall without an error, got {result}"
    assert env.block()["io-status"] == "nospace"
    # The operator grows the storage and resumes.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    assert env.q.execute("cont") == {}
    thread.join(20)
    assert result == [None], result
    assert env.block()["io-status"] == "ok"
    # Every byte arrived: through the export and in the image.
    for offset in range(0, len(data), 1 * MiB):
        assert h.pread(1 * MiB, offset) == data[offset:offset + 1 * MiB], f"data differs at {offset}"
    with open(image, "rb") as f:
        assert f.read(len(data)) == data
    h.shutdown()


def test_shutdown_releases_a_paused_device(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 1 * MiB)
    env = Env(launcher, tmp_path, image, werror="stop")
    h = env.connect()
    env.inject("write_aio")
    thread, result = in_background(lambda: h.pwrite(b"p" * 4096, 0))
    env.q.event("BLOCK_IO_ERROR")
    started = time.monotonic()
    assert env.daemon.stop() == 0
    assert time.monotonic() - started < 5
    thread.join(5)
