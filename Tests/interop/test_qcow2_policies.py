"""Live policies on qcow2 nodes: a write threshold set on the qcow2 node is measured on host offsets
of its image file, blkdebug under qcow2 sees qcow2's metadata events, and an allocation that would
overwrite metadata emits BLOCK_IMAGE_CORRUPTED, and cache-clean-interval drops cached tables."""
import subprocess
import time

import pytest

from conftest import require, import_or_skip
from qmp_client import KiB, MiB, launcher  # noqa: F401

nbd = import_or_skip("nbd")


def connect(uri: str):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def qcow2_daemon(launcher, tmp_path, *, blkdebug: bool = False, cluster: int = 65536, size: str = "1G", image=None,
                 qcow2_options: str = ""):
    """blockd exporting a writable qcow2 node "disk0" (over blkdebug "dbg0" when asked) of `image`,
    or of a new empty image, with `qcow2_options` (",key=value...") on the qcow2 node; (qmp, nbd handle, image)."""
    require("qemu-img")
    if image is None:
        image = tmp_path / "img.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", str(image), size], check=True)
    sock = tmp_path / "nbd.sock"
    args = ["--blockdev", f"driver=file,node-name=f0,filename={image}"]
    if blkdebug:
        args += ["--blockdev", "driver=blkdebug,node-name=dbg0,image=f0",
                 "--blockdev", f"driver=qcow2,node-name=disk0,file=dbg0{qcow2_options}"]
    else:
        args += ["--blockdev", f"driver=qcow2,node-name=disk0,file=f0{qcow2_options}"]
    daemon = launcher.blockd(*args, "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    return daemon.qmp(), connect(f"nbd+unix:///disk0?socket={sock}"), image


def test_threshold_on_the_qcow2_node_is_measured_on_host_offsets(launcher, tmp_path):
    q, h, image = qcow2_daemon(launcher, tmp_path)
    start = image.stat().st_size
    threshold = start + 4 * 64 * KiB
    q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": threshold})
    for n in range(8):  # guest offsets far apart (and far past the threshold); host clusters appended
        h.pwrite(bytes([n + 1]) * 4096, n * 100 * MiB)
    events = [e["data"] for e in q.no_event(0.5) if e["event"] == "BLOCK_WRITE_THRESHOLD"]
    assert len(events) == 1, events
    assert events[0]["node-name"] == "disk0" and events[0]["write-threshold"] == threshold
    assert 0 < events[0]["amount-exceeded"] <= 2 * 64 * KiB, "host offsets, not guest offsets"
    h.shutdown()


def test_blkdebug_under_qcow2_fails_the_next_allocation_once(launcher, tmp_path):
    q, h, _ = qcow2_daemon(launcher, tmp_path, blkdebug=True, size="16M")
    h.pwrite(b"a" * 4096, 0)  # allocates cluster 0; later writes to it allocate nothing
    assert q.execute("x-blockd-blkdebug-set-rules", {
        "node-name": "dbg0", "inject-error": [{"event": "cluster_alloc", "once": True, "errno": 28}]}) == {}
    h.pwrite(b"b" * 4096, 4096)  # same cluster, in place: no allocation, no error
    with pytest.raises(nbd.Error) as failure:
        h.pwrite(b"c" * 4096, 8 * MiB)
    assert failure.value.errno == "ENOSPC"
    h.pwrite(b"c" * 4096, 8 * MiB)  # once: the retry succeeds
    assert h.pread(4096, 8 * MiB) == b"c" * 4096
    assert h.pread(8192, 0) == b"a" * 4096 + b"b" * 4096
    h.shutdown()


def test_blkdebug_state_machine_on_l2_events(launcher, tmp_path):
    q, h, _ = qcow2_daemon(launcher, tmp_path, blkdebug=True, cluster=4096, size="64M")
    # After an L2 table is written back (a flush after an allocating write), reads fail in state 2.
    assert q.execute("x-blockd-blkdebug-set-rules", {
        "node-name": "dbg0",
        "set-state": [{"event": "l2_update", "state": 1, "new_state": 2}],
        "inject-error": [{"event": "read_aio", "state": 2, "errno": 5}]}) == {}
    h.pwrite(b"x" * 4096, 0)
    assert h.pread(4096, 0) == b"x" * 4096, "state 1: reads work"
    h.flush()
    with pytest.raises(nbd.Error) as failure:
        h.pread(4096, 0)
    assert failure.value.errno == "EIO"
    h.shutdown()


def test_overlapping_allocation_emits_block_image_corrupted(launcher, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(image), "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 4k", str(image)], check=True, capture_output=True)
    data = image.read_bytes()
    l1 = int.from_bytes(data[40:48], "big")
    reftable = int.from_bytes(data[48:56], "big")
    l2 = int.from_bytes(data[l1:l1 + 8], "big") & 0x00fffffffffffe00
    block = int.from_bytes(data[reftable:reftable + 8], "big")
    with open(image, "r+b") as f:
        f.seek(block + (l2 // 4096) * 2)
        f.write(b"\0\0")
    q, h, _ = qcow2_daemon(launcher, tmp_path, image=image)
    with pytest.raises(nbd.Error):
        h.pwrite(b"\x09" * 4096, 65536)
    event = q.event("BLOCK_IMAGE_CORRUPTED")["data"]
    assert event["node-name"] == "disk0" and event["fatal"] is True
    assert event["offset"] == l2 and event["size"] == 4096
    assert event["device"] == ""
    h.shutdown()


@pytest.mark.parametrize("interval", [1, 0])
def test_cache_clean_interval_drops_the_cached_l2_tables(launcher, tmp_path, interval):
    """With cache-clean-interval=1 the clean L2 table is dropped within two seconds, so the next read
    loads it again: blkdebug's l2_load event fires and the error injected on it fails the read. With 0
    (never) the table stays cached and the read succeeds. (The rule is not `once`: a read may look up
    its cluster twice, first for the mapped path, which falls back quietly when that fails.)"""
    q, h, _ = qcow2_daemon(launcher, tmp_path, blkdebug=True, size="16M",
                           qcow2_options=f",cache-clean-interval={interval}")
    h.pwrite(b"L" * 4096, 0)
    h.flush()  # the L2 table is written back: clean, so it may be dropped
    assert h.pread(4096, 0) == b"L" * 4096
    assert q.execute("x-blockd-blkdebug-set-rules", {
        "node-name": "dbg0", "inject-error": [{"event": "l2_load", "errno": 5}]}) == {}
    time.sleep(2.5)
    if interval:
        with pytest.raises(nbd.Error) as failure:
            h.pread(4096, 0)
        assert failure.value.errno == "EIO"
        assert q.execute("x-blockd-blkdebug-set-rules", {"node-name": "dbg0"}) == {}
        assert h.pread(4096, 0) == b"L" * 4096, "the table loads again once the rule is gone"
    else:
        assert h.pread(4096, 0) == b"L" * 4096
    h.shutdown()
