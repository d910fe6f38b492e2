"""I/O statistics over QMP, counted for real: a known workload is run through an export with
qemu-io or libnbd, then query-blockstats must report exactly those bytes and operations, the
highest write offset, times, idle time, invalid and failed requests, and the timed statistics of a
device created with "stats-intervals"."""
import os
import subprocess
import time

import pytest

from client_helpers import qemu_io
from conftest import make_image, require, import_or_skip, skip_or_fail
from library_monitor import monitor
from qmp_client import KiB, MiB, Schema, launcher, stats_of  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 4 * MiB
# An export's own device is listed only when asked for (a blockd extension; QSD lists none).
EXPORT_DEVICES = {"x-blockd-exports": True}


def blockstats(q, **arguments) -> list[dict]:
    answer = q.execute("query-blockstats", **arguments)
    Schema(q.execute("query-qmp-schema")).check_return("query-blockstats", answer)
    return answer


def exported_file(launcher, image, sock):
    """blockd exporting a raw node "disk0" over a file node "f0" as export "e0" (no named device)."""
    return launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=f0",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")


def device_26(q, device: str, node: str, filename, sock=None, **options) -> None:
    """A 2.6-form device over a file, exported writable under the device's name."""
    q.execute("blockdev-add", options={"driver": "raw", "id": device, "node-name": node,
                                       "file": {"driver": "file", "filename": str(filename)}, **options})
    if sock is not None and not q.execute("query-block-exports"):
        q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
    q.execute("nbd-server-add", device=device, writable=True)


def connect(sock, name: str):
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///{name}?socket={sock}")
    return h


def test_qemu_io_workload_is_counted_exactly(launcher, tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", SIZE)
    sock = tmp_path / "nbd.sock"
    q = monitor(exported_file(launcher, image, sock))
    before = stats_of(blockstats(q, **EXPORT_DEVICES), "device", "e0")
    assert before["node-name"] == "disk0"
    assert "idle_time_ns" not in before["stats"]  # no request yet
    assert all(v == 0 for k, v in before["stats"].items() if isinstance(v, int) and not isinstance(v, bool))

    writes = [(i * 4 * KiB, 4 * KiB) for i in range(5)] + [(1 * MiB, 4 * KiB)]
    reads = [(0, 4 * KiB), (8 * KiB, 4 * KiB), (2 * MiB, 64 * KiB)]
    commands = [f"write -P {i + 1} {off} {length}" for i, (off, length) in enumerate(writes)]
    commands += [f"read {off} {length}" for off, length in reads]
    # qemu-io sends exactly these requests, then one flush when it closes the image.
    qemu_io(f"nbd+unix:///disk0?socket={sock}", *commands)

    stats = stats_of(blockstats(q, **EXPORT_DEVICES), "device", "e0")["stats"]
    assert stats["wr_operations"] == len(writes)
    assert stats["wr_bytes"] == sum(length for _, length in writes)
    assert stats["rd_operations"] == len(reads)
    assert stats["rd_bytes"] == sum(length for _, length in reads)
    assert stats["flush_operations"] == 1
    assert stats["wr_highest_offset"] == 1 * MiB + 4 * KiB
    assert stats["rd_total_time_ns"] > 0 and stats["wr_total_time_ns"] > 0 and stats["flush_total_time_ns"] > 0
    for key in ("rd_merged", "wr_merged", "failed_rd_operations", "failed_wr_operations", "failed_flush_operations",
                "invalid_rd_operations", "invalid_wr_operations", "invalid_flush_operations"):
        assert stats[key] == 0, key
    assert stats["account_invalid"] is True and stats["account_failed"] is True
    assert stats["timed_stats"] == []
    # Idle time: present once there was a request, and growing while there is none.
    first = stats["idle_time_ns"]
    time.sleep(0.2)
    second = stats_of(blockstats(q, **EXPORT_DEVICES), "device", "e0")["stats"]["idle_time_ns"]
    assert 0 < first < second and second - first >= 150_000_000, (first, second)
    q.close()


def test_blockstats_report_the_file_child_as_parent(launcher, tmp_path):
    """QEMU 2.6 (block/qapi.c, bdrv_query_stats): every entry of a node with a "file" child has a
    "parent" member with that child's statistics, in both modes of query-blockstats, and each
    node's wr_highest_offset is the end of the highest write that reached it."""
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", SIZE)
    sock = tmp_path / "nbd.sock"
    q = monitor(exported_file(launcher, image, sock))
    qemu_io(f"nbd+unix:///disk0?socket={sock}", "write 1M 64k")
    device = stats_of(blockstats(q, **EXPORT_DEVICES), "device", "e0")
    assert "parent" in device, f"no parent in {device}"
    assert device["parent"]["node-name"] == "f0"
    assert device["parent"]["stats"]["wr_highest_offset"] == 1 * MiB + 64 * KiB
    nodes = blockstats(q, **{"query-nodes": True})
    assert {n["node-name"] for n in nodes} == {"disk0", "f0"}
    assert all("device" not in n and "backing" not in n for n in nodes)
    assert blockstats(q) == [], "an export's device is listed without x-blockd-exports"
    disk0, f0 = stats_of(nodes, "node-name", "disk0"), stats_of(nodes, "node-name", "f0")
    assert disk0["stats"]["wr_highest_offset"] == 1 * MiB + 64 * KiB
    assert f0["stats"]["wr_highest_offset"] == 1 * MiB + 64 * KiB
    assert "parent" not in f0
    assert disk0.get("parent", {}).get("node-name") == "f0", f"no parent in {disk0}"
    q.close()


def check_interval(timed: dict, length: int) -> None:
    assert timed["interval_length"] == length
    for kind in ("rd", "wr", "flush"):
        low, mean, high = (timed[f"{which}_{kind}_latency_ns"] for which in ("min", "avg", "max"))
        assert 0 < low <= mean <= high, (kind, timed)
    assert timed["avg_rd_queue_depth"] > 0 and timed["avg_wr_queue_depth"] > 0, timed


def test_libnbd_workload_invalid_requests_and_timed_stats(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", SIZE)
    sock = tmp_path / "nbd.sock"
    q = monitor(launcher.blockd())
    # The 1-second interval's window opens when the device is created: a workload that ends
    # within that second is all in the figures reported. The 60-second interval is the check for
    # a machine too slow for that.
    created = time.monotonic()
    device_26(q, "dev0", "r0", image, sock, **{"stats-intervals": [1, 60]})
    h = connect(sock, "dev0")
    h.set_strict_mode(0)  # let libnbd send requests past the end
    data = os.urandom(4 * KiB)
    for i in range(8):
        h.pwrite(data, SIZE - (i + 1) * 4 * KiB)
    for i in range(4):
        assert h.pread(16 * KiB, SIZE - 16 * KiB)[-4 * KiB:] == data
    h.flush()
    h.flush()
    with pytest.raises(nbd.Error) as failure:
        h.pread(4 * KiB, SIZE - 2 * KiB)
    assert failure.value.errno == "EINVAL"
    with pytest.raises(nbd.Error) as failure:
        h.pwrite(data, SIZE)
    assert failure.value.errno == "ENOSPC"
    entry = stats_of(blockstats(q), "device", "dev0")
    within_first_second = time.monotonic() - created < 0.95
    assert entry["node-name"] == "r0"
    stats = entry["stats"]
    assert (stats["wr_operations"], stats["wr_bytes"]) == (8, 8 * 4 * KiB)
    assert (stats["rd_operations"], stats["rd_bytes"]) == (4, 4 * 16 * KiB)
    assert stats["flush_operations"] == 2
    assert stats["wr_highest_offset"] == SIZE
    assert stats["invalid_rd_operations"] == 1 and stats["invalid_wr_operations"] == 1
    assert stats["invalid_flush_operations"] == 0
    assert stats["failed_rd_operations"] == stats["failed_wr_operations"] == 0
    assert [t["interval_length"] for t in stats["timed_stats"]] == [1, 60]
    one, sixty = stats["timed_stats"]
    check_interval(sixty, 60)
    if within_first_second:
        check_interval(one, 1)
    # The totals cover at least what the interval saw.
    assert stats["rd_total_time_ns"] >= 4 * sixty["min_rd_latency_ns"]
    assert stats["wr_total_time_ns"] >= 8 * sixty["min_wr_latency_ns"]
    assert stats["flush_total_time_ns"] >= 2 * sixty["min_flush_latency_ns"]
    # Two idle seconds later the 1-second interval has nothing left to report; the 60-second one
    # still has it all, and the cumulative counters are unchanged.
    time.sleep(2.1)
    later = stats_of(blockstats(q), "device", "dev0")["stats"]
    one, still = later["timed_stats"]
    assert {k: v for k, v in one.items() if k != "interval_length"} == dict.fromkeys(
        [k for k in one if k != "interval_length"], 0), one
    # (queue depths are averages over the time elapsed, which QEMU lets change; latencies may not)
    latencies = [k for k in sixty if k.endswith("latency_ns")]
    assert {k: still[k] for k in latencies} == {k: sixty[k] for k in latencies}
    assert still["avg_rd_queue_depth"] > 0 and still["avg_wr_queue_depth"] > 0
    assert (later["rd_operations"], later["wr_operations"], later["flush_operations"]) == (4, 8, 2)
    h.shutdown()
    q.close()


def test_stats_account_invalid_decides_whether_invalid_requests_end_idleness(launcher, tmp_path):
    sock = tmp_path / "nbd.sock"
    q = monitor(launcher.blockd())
    device_26(q, "counted", "n1", make_image(tmp_path / "a.img", SIZE), sock)
    device_26(q, "ignored", "n2", make_image(tmp_path / "b.img", SIZE), sock,
              **{"stats-account-invalid": False, "stats-account-failed": False})
    handles = {name: connect(sock, name) for name in ("counted", "ignored")}
    for h in handles.values():
        h.set_strict_mode(0)
        h.pread(512, 0)
    time.sleep(0.3)
    for h in handles.values():
        with pytest.raises(nbd.Error):
            h.pread(4 * KiB, SIZE)
    stats = blockstats(q)
    counted, ignored = stats_of(stats, "device", "counted")["stats"], stats_of(stats, "device", "ignored")["stats"]
    assert (counted["account_invalid"], counted["account_failed"]) == (True, True)
    assert (ignored["account_invalid"], ignored["account_failed"]) == (False, False)
    assert counted["invalid_rd_operations"] == ignored["invalid_rd_operations"] == 1
    assert counted["rd_operations"] == ignored["rd_operations"] == 1
    assert counted["idle_time_ns"] < 250_000_000, counted
    assert ignored["idle_time_ns"] >= 300_000_000, ignored
    for h in handles.values():
        h.shutdown()
    q.close()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root); unmounted at the end even when the test fails."""
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def test_failed_writes_on_a_full_filesystem(launcher, tmp_path, small_tmpfs):
    image = make_image(small_tmpfs / "disk.img", SIZE)  # 4 MiB of holes on 1 MiB of space
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd()
    try:
        q = monitor(daemon)
        device_26(q, "dev0", "r0", image, sock)
        h = connect(sock, "dev0")
        chunk = 256 * KiB
        outcomes = []
        for i in range(8):
            try:
                h.pwrite(os.urandom(chunk), i * chunk)
                outcomes.append("ok")
            except nbd.Error as error:
                outcomes.append(error.errno)
        assert "ok" in outcomes and set(outcomes) <= {"ok", "ENOSPC"}, outcomes
        failed = outcomes.count("ENOSPC")
        assert failed >= 1, outcomes
        stats = stats_of(blockstats(q), "device", "dev0")["stats"]
        assert stats["failed_wr_operations"] == failed
        assert stats["wr_operations"] == 8 - failed
        assert stats["wr_bytes"] == (8 - failed) * chunk
        assert stats["failed_rd_operations"] == stats["invalid_wr_operations"] == 0
        h.shutdown()
        q.close()
    finally:
        assert daemon.stop() == 0, daemon.log_text()  # the image must be closed before the unmount
