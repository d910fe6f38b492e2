"""block-set-write-threshold on a running export: a connected libnbd client writes, and
BLOCK_WRITE_THRESHOLD must arrive exactly once, for the first write that reaches past the
threshold, with the node's name, the bytes past it and the threshold; query-named-block-nodes shows
the threshold live and 0 once it fired. Also the same on the protocol node under the raw node, with
write-zeroes, with qemu-io, and against qemu-storage-daemon's answer for the same sequence."""
import subprocess

import pytest

from client_helpers import qemu_io
from conftest import make_image, require, import_or_skip
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 8 * MiB


def exported(launcher, tmp_path, program: str = "blockd"):
    """A daemon exporting raw node "disk0" over file node "f0" as "disk0"; (daemon, uri)."""
    image = make_image(tmp_path / f"{program}.img", SIZE)
    sock = tmp_path / f"{program}-nbd.sock"
    args = ["--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk0,file=f0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
    daemon = launcher.blockd(*args) if program == "blockd" else launcher.qsd(*args)
    return daemon, f"nbd+unix:///disk0?socket={sock}"


def connect(uri: str):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def thresholds(q) -> dict:
    nodes = q.execute("query-named-block-nodes")
    Schema(q.execute("query-qmp-schema")).check_return("query-named-block-nodes", nodes)
    return {n["node-name"]: n["write_threshold"] for n in nodes}


def test_event_fires_once_for_the_first_crossing_write(launcher, tmp_path):
    daemon, uri = exported(launcher, tmp_path)
    q = daemon.qmp()
    h = connect(uri)
    h.pwrite(b"a" * 4096, 0)
    assert q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 1 * MiB}) == {}
    assert thresholds(q) == {"disk0": 1 * MiB, "f0": 0}
    # Below and up to the threshold: nothing.
    h.pwrite(b"b" * 4096, 1 * MiB - 4096)
    assert q.no_event() == []
    # The first write past it: one event, with how far past it went.
    h.pwrite(b"c" * 8192, 1 * MiB - 1000)
    event = q.event("BLOCK_WRITE_THRESHOLD")
    assert event["data"] == {"node-name": "disk0", "amount-exceeded": 8192 - 1000, "write-threshold": 1 * MiB}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    assert thresholds(q)["disk0"] == 0, "the threshold clears itself"
    # Later writes, further out: no second event.
    h.pwrite(b"d" * 4096, 4 * MiB)
    h.pwrite(b"e" * 4096, 1 * MiB)
    assert [e for e in q.no_event() if e["event"] == "BLOCK_WRITE_THRESHOLD"] == []
    h.shutdown()


def test_zero_disarms_and_zero_writes_count(launcher, tmp_path):
    daemon, uri = exported(launcher, tmp_path)
    q = daemon.qmp()
    h = connect(uri)
    q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 64 * KiB})
    q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 0})
    assert thresholds(q)["disk0"] == 0
    h.pwrite(b"x" * 4096, 2 * MiB)
    assert q.no_event() == []
    # Re-armed, a write-zeroes request crosses it like a write.
    q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 3 * MiB})
    h.zero(1 * MiB, 3 * MiB - 512 * KiB)
    assert q.event("BLOCK_WRITE_THRESHOLD")["data"] == {
        "node-name": "disk0", "amount-exceeded": 512 * KiB, "write-threshold": 3 * MiB}
    h.shutdown()


def test_threshold_on_the_protocol_node_sees_offsets_there(launcher, tmp_path):
    """Thin provisioning watches the node that stores the data; here the file node under the raw node."""
    daemon, uri = exported(launcher, tmp_path)
    q = daemon.qmp()
    q.execute("block-set-write-threshold", {"node-name": "f0", "write-threshold": 2 * MiB})
    assert thresholds(q) == {"disk0": 0, "f0": 2 * MiB}
    h = connect(uri)
    h.pwrite(b"z" * 64 * KiB, 2 * MiB)
    assert q.event("BLOCK_WRITE_THRESHOLD")["data"] == {
        "node-name": "f0", "amount-exceeded": 64 * KiB, "write-threshold": 2 * MiB}
    h.shutdown()


def test_qemu_io_client_and_errors(launcher, tmp_path):
    require("qemu-io")
    daemon, uri = exported(launcher, tmp_path)
    q = daemon.qmp()
    q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 100 * KiB})
    qemu_io(uri, "write -P 0x11 0 64k", "write -P 0x22 96k 64k", "write -P 0x33 1M 64k")
    events = [e for e in q.no_event(0.5) if e["event"] == "BLOCK_WRITE_THRESHOLD"]
    assert [e["data"] for e in events] == [
        {"node-name": "disk0", "amount-exceeded": 60 * KiB, "write-threshold": 100 * KiB}]
    assert q.error("block-set-write-threshold", {"node-name": "nope", "write-threshold": 1}) == {
        "class": "GenericError", "desc": "Device 'nope' not found"}
    assert q.error("block-set-write-threshold", {"node-name": "disk0", "write-threshold": -1})["class"] == "GenericError"


def test_same_event_as_qemu_storage_daemon(launcher, tmp_path):
    """The same sequence against qemu-storage-daemon gives the same event data."""
    require("qemu-storage-daemon")
    results = []
    for program in ("blockd", "qsd"):
        daemon, uri = exported(launcher, tmp_path, program)
        with daemon.qmp() as q:
            q.execute("block-set-write-threshold", {"node-name": "disk0", "write-threshold": 1 * MiB})
            h = connect(uri)
            h.pwrite(b"a" * 4096, 0)
            h.pwrite(b"b" * 12288, 1 * MiB - 4096)
            h.pwrite(b"c" * 4096, 2 * MiB)
            results.append([e["data"] for e in q.no_event(0.5) if e["event"] == "BLOCK_WRITE_THRESHOLD"])
            h.shutdown()
    assert results[0] == results[1] == [{"node-name": "disk0", "amount-exceeded": 8192, "write-threshold": 1 * MiB}]


def test_qcow2_threshold_on_its_file_node_sees_host_offsets(launcher, tmp_path):
    """Thin provisioning of a qcow2 image: the threshold is set on the file node, whose offsets are
    where clusters land in the image file, whatever guest offset the client writes."""
    require("qemu-img")
    image = tmp_path / "thin.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", str(image), "1G"], check=True)
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    q = daemon.qmp()
    h = connect(f"nbd+unix:///disk0?socket={sock}")
    start = image.stat().st_size
    threshold = start + 4 * 64 * KiB
    q.execute("block-set-write-threshold", {"node-name": "f0", "write-threshold": threshold})
    # Guest offsets far apart, each a new cluster appended to the image file.
    for n in range(8):
        h.pwrite(bytes([n + 1]) * 64 * KiB, n * 100 * MiB)
    events = [e["data"] for e in q.no_event(0.5) if e["event"] == "BLOCK_WRITE_THRESHOLD"]
    assert len(events) == 1, events
    assert events[0]["node-name"] == "f0" and events[0]["write-threshold"] == threshold
    assert 0 < events[0]["amount-exceeded"] <= 2 * 64 * KiB
    assert thresholds(q)["f0"] == 0
    assert [h.pread(1, n * 100 * MiB) for n in range(8)] == [bytes([n + 1]) for n in range(8)]
    h.shutdown()
