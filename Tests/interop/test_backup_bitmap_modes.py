"""Backups with `sync: bitmap` and `bitmap-mode` on-success / never / always (issue #12), and a
bitmap given to `sync: full` / `top`: the same script against blockd and qemu-storage-daemon 7.2,
with the bitmap's sha256 (x-debug-block-dirty-bitmap-sha256) after every job, jobs that fail on a
blkdebug target included (mode `always` then keeps only what was not copied), every refusal's
wording, and the clusters a sync=bitmap backup copied."""
import json
import os
import time
from pathlib import Path

from client_helpers import run
from conftest import require
from qmp_client import QMP, launcher  # noqa: F401 (fixture)

SIZE = 8 << 20


def qcow2(path: Path) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(SIZE)])
    return path


def allocated(image: Path) -> list[tuple[int, int]]:
    out = json.loads(run(["qemu-img", "map", "--output=json", "-U", str(image)]).stdout)
    return [(e["start"], e["length"]) for e in out if e["data"]]


def answer(reply: dict):
    if "error" in reply:
        return ("error", reply["error"]["class"], reply["error"]["desc"])
    return ("ok", reply["return"])


def wait_jobs_gone(q: QMP, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while q.execute("query-jobs"):
        assert time.monotonic() < deadline, q.execute("query-jobs")
        time.sleep(0.05)


def state(q: QMP) -> tuple:
    entry = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == "disk0")
    b = next(b for b in entry.get("dirty-bitmaps", []) if b.get("name") == "b")
    return (b["count"], b["recording"], b["busy"], q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name="b")["sha256"])


def backup(target: str, sync: str, **extra) -> dict:
    return {"job-id": "j", "device": "disk0", "target": target, "sync": sync, **extra}


REFUSALS = [
    ("blockdev-backup", backup("t1", "bitmap")),
    ("blockdev-backup", backup("t1", "bitmap", bitmap="b")),
    ("blockdev-backup", backup("t1", "bitmap", bitmap="zz", **{"bitmap-mode": "always"})),
    ("blockdev-backup", backup("t1", "full", bitmap="b", **{"bitmap-mode": "never"})),
    ("blockdev-backup", backup("t1", "top", bitmap="b", **{"bitmap-mode": "never"})),
    ("blockdev-backup", backup("t1", "none", bitmap="b", **{"bitmap-mode": "on-success"})),
    ("blockdev-backup", backup("t1", "full", **{"bitmap-mode": "always"})),
    ("blockdev-backup", backup("t1", "incremental", bitmap="b", **{"bitmap-mode": "always"})),
    ("blockdev-backup", backup("t1", "incremental", bitmap="b", **{"bitmap-mode": "never"})),
    ("blockdev-mirror", {"job-id": "m", "device": "disk0", "target": "t1", "sync": "bitmap"}),
]

# (writes before, the backup, whether the target fails)
ROUNDS = [
    (["write -P 1 1M 64k", "write -P 2 3M 4k"], backup("t1", "bitmap", bitmap="b", **{"bitmap-mode": "never"})),
    ([], backup("bad", "bitmap", bitmap="b", **{"bitmap-mode": "on-success"})),
    ([], backup("bad", "bitmap", bitmap="b", **{"bitmap-mode": "always"})),
    (["write -P 3 5M 128k"], backup("t2", "bitmap", bitmap="b", **{"bitmap-mode": "on-success"})),
    (["write -P 4 2M 64k"], backup("bad", "full", bitmap="b", **{"bitmap-mode": "on-success"})),
    ([], backup("bad", "full", bitmap="b", **{"bitmap-mode": "always"})),
    (["write -P 5 7M 4k"], backup("t3", "full", bitmap="b", **{"bitmap-mode": "always"})),
    (["write -P 6 6M 8k"], backup("t4", "top", bitmap="b", **{"bitmap-mode": "on-success"})),
    (["write -P 7 0 4k"], backup("t5", "bitmap", bitmap="b", **{"bitmap-mode": "always"})),
]


def script(q: QMP, uri: str) -> list:
    seen = []
    q.execute("block-dirty-bitmap-add", node="disk0", name="b")
    for name, arguments in REFUSALS:
        seen.append((name, answer(q.cmd(name, arguments))))
    seen.append(state(q))
    for writes, arguments in ROUNDS:
        if writes:
            run(["qemu-io", "-f", "raw", *[a for w in writes for a in ("-c", w)], uri])
        seen.append(("before", arguments["target"], arguments["sync"], arguments.get("bitmap-mode"), state(q)))
        seen.append(answer(q.cmd("blockdev-backup", arguments)))
        wait_jobs_gone(q)
        seen.append(("after", state(q)))
    # drive-backup takes bitmap-mode too.
    run(["qemu-io", "-f", "raw", "-c", "write -P 8 4M 64k", uri])
    return seen


def test_bitmap_modes_as_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon", "qemu-img", "qemu-io")
    results = {}
    for program in ("blockd", "qsd"):
        work = tmp_path / program
        work.mkdir()
        disk = qcow2(work / "disk.qcow2")
        # Every cluster holds data, so that every copy is a data write (which the blkdebug target fails).
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P 9 0 {SIZE}", str(disk)])
        bad = work / "bad.raw"
        bad.write_bytes(b"")
        os.truncate(bad, SIZE)
        args = ["--blockdev", f"driver=file,node-name=f0,filename={disk}",
                "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                "--blockdev", f"driver=blkdebug,node-name=bad,image.driver=file,image.filename={bad},"
                              "inject-error.0.event=pwritev,inject-error.0.errno=5,"
                              "inject-error.1.event=pwritev_zero,inject-error.1.errno=5",
                "--nbd-server", f"addr.type=unix,addr.path={work}/nbd.sock",
                "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
        for index in range(1, 6):
            image = qcow2(work / f"t{index}.qcow2")
            args += ["--blockdev", f"driver=qcow2,node-name=t{index},file.driver=file,file.filename={image}"]
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        with daemon.qmp() as q:
            seen = script(q, f"nbd+unix:///disk0?socket={work}/nbd.sock")
            seen.append(answer(q.cmd("drive-backup", {"job-id": "d", "device": "disk0", "target": str(work / "d.qcow2"),
                                                      "format": "qcow2", "sync": "bitmap", "bitmap": "b",
                                                      "bitmap-mode": "on-success"})))
            wait_jobs_gone(q)
            seen.append(("after drive-backup", state(q)))
        daemon.stop()
        results[program] = (seen, [allocated(work / f"t{i}.qcow2") for i in (1, 2, 5)], allocated(work / "d.qcow2"))
    ours, theirs = results["blockd"], results["qsd"]
    for index, (a, b) in enumerate(zip(ours[0], theirs[0])):
        assert a == b, f"step {index}: blockd {a}, qsd {b}"
    assert len(ours[0]) == len(theirs[0])
    assert ours[1:] == theirs[1:]
    # sync=bitmap copied only the dirty clusters.
    assert ours[1][0] == [(1 << 20, 64 << 10), (3 << 20, 64 << 10)]
