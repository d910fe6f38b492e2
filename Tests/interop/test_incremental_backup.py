"""Incremental backup (issues #12 and #13): a full backup, client writes recorded by a dirty bitmap,
then `blockdev-backup sync=incremental bitmap=b0` copies only the dirty clusters; the incremental
image rebased onto the full one restores the disk as it is. Every answer, the bitmap afterwards and
the clusters the incremental image holds are compared with qemu-storage-daemon's for the same script."""
import json
import time
from pathlib import Path

from client_helpers import run
from conftest import require
from qmp_client import QMP, launcher  # noqa: F401 (fixture)

SIZE = 32 << 20
# The zero-write lands on data the full backup holds: the incremental image must hold those zeroes.
WRITES = ["write -P 5 1M 64k", "write -P 6 10M 4k", "write -z 16M 128k"]


def qcow2(path: Path) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(SIZE)])
    return path


def wait_jobs_gone(q: QMP, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while q.execute("query-jobs"):
        assert time.monotonic() < deadline, q.execute("query-jobs")
        time.sleep(0.05)


def allocated(image: Path) -> list[tuple[int, int]]:
    """The ranges the image itself holds (not its backing file)."""
    out = json.loads(run(["qemu-img", "map", "--output=json", "-U", str(image)]).stdout)
    return [(e["start"], e["length"]) for e in out if e.get("depth", 0) == 0 and e.get("present", e["data"])]


def script(q: QMP, uri: str) -> list:
    answers = []
    # Refusals first: nothing may change.
    answers.append(q.cmd("blockdev-backup", {"job-id": "x", "device": "disk0", "target": "inc", "sync": "incremental"}))
    answers.append(q.cmd("blockdev-backup", {"job-id": "x", "device": "disk0", "target": "inc", "sync": "incremental",
                                             "bitmap": "nope"}))
    answers.append(q.cmd("blockdev-backup", {"job-id": "x", "device": "disk0", "target": "inc", "sync": "incremental",
                                             "bitmap": "b0", "bitmap-mode": "never"}))
    answers.append(q.cmd("block-dirty-bitmap-add", node="disk0", name="b0"))
    answers.append(q.cmd("blockdev-backup", {"job-id": "full", "device": "disk0", "target": "full", "sync": "full"}))
    wait_jobs_gone(q)
    run(["qemu-io", "-f", "raw", *[a for w in WRITES for a in ("-c", w)], uri])
    answers.append([(b["name"], b["count"]) for b in bitmaps(q)])
    answers.append(q.cmd("blockdev-backup", {"job-id": "inc1", "device": "disk0", "target": "inc", "sync": "incremental",
                                             "bitmap": "b0"}))
    wait_jobs_gone(q)
    # A successful incremental backup leaves the bitmap clean, recording again.
    answers.append([(b["name"], b["count"], b["recording"], b["busy"]) for b in bitmaps(q)])
    return answers


def bitmaps(q: QMP) -> list[dict]:
    entry = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == "disk0")
    return entry.get("dirty-bitmaps", [])


def test_incremental_backup_copies_the_dirty_clusters_as_qemu_storage_daemon_does(launcher, tmp_path):
    require("qemu-storage-daemon", "qemu-img", "qemu-io")
    results = {}
    for program in ("blockd", "qsd"):
        work = tmp_path / program
        work.mkdir()
        disk = qcow2(work / "disk.qcow2")
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4M", "-c", "write -P 2 16M 2M", str(disk)])
        full, inc = qcow2(work / "full.qcow2"), qcow2(work / "inc.qcow2")
        sock = work / "nbd.sock"
        args = ["--blockdev", f"driver=file,node-name=f0,filename={disk}",
                "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                "--blockdev", f"driver=file,node-name=f1,filename={full}",
                "--blockdev", "driver=qcow2,node-name=full,file=f1",
                "--blockdev", f"driver=file,node-name=f2,filename={inc}",
                "--blockdev", "driver=qcow2,node-name=inc,file=f2",
                "--nbd-server", f"addr.type=unix,addr.path={sock}",
                "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        with daemon.qmp() as q:
            answers = script(q, f"nbd+unix:///disk0?socket={sock}")
        daemon.stop()
        # Restore: the incremental image over the full one is the disk as it is now.
        run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(full), "-F", "qcow2", str(inc)])
        run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(inc), str(disk)])
        results[program] = (answers, allocated(inc))
    (ours, our_clusters), (theirs, their_clusters) = results["blockd"], results["qsd"]
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"step {index}: blockd {a}, qsd {b}"
    # Only the clusters the client wrote were copied (the bitmap's 64 KiB granularity), as in QEMU.
    assert our_clusters == their_clusters
    assert sum(length for _, length in our_clusters) < 1 << 20, our_clusters
