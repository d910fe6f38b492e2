"""Dirty bitmaps in `transaction` (issue #12): the pull-mode backup that libvirt runs (new checkpoint,
temporary bitmap merged from the old one, old one disabled, a sync=none backup onto a fleecing
overlay, all in one transaction; the overlay exported with the temporary bitmap), run unchanged
against blockd and qemu-storage-daemon; a failing action undoing the others; bad actions answered
with QEMU's errors."""
import hashlib
import json
import time
from pathlib import Path

from client_helpers import run
from conftest import import_or_skip, require
from qmp_client import QMP, launcher  # noqa: F401 (fixture)

nbd = import_or_skip("nbd")

SIZE = 32 << 20
BEFORE_CHECKPOINT = ["write -P 1 0 4M", "write -P 2 20M 1M"]
SINCE_CHECKPOINT = ["write -P 3 1M 64k", "write -P 4 8M 4k", "write -z 20M 128k", "write -P 5 31M 512"]
AFTER_TRANSACTION = ["write -P 6 1M 128k", "write -P 7 12M 1M", "write -z 0 64k", "write -P 8 8M 4k"]


def qcow2(path: Path, size: int = SIZE) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)])
    return path


def writes(uri: str, commands: list[str]) -> None:
    run(["qemu-io", "-f", "raw", *[arg for c in commands for arg in ("-c", c)], uri])


def answer(reply: dict):
    """A reply as compared between the two daemons: the result, or the error's class and text."""
    if "error" in reply:
        return ("error", reply["error"]["class"], reply["error"]["desc"])
    return ("ok", reply["return"])


def listing(q: QMP, node: str = "disk0") -> list[tuple]:
    """The named bitmaps (QEMU also lists the anonymous one of its copy-before-write filter)."""
    entry = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == node)
    return sorted((b["name"], b["count"], b["granularity"], b["recording"], b["busy"], b["persistent"])
                  for b in entry.get("dirty-bitmaps", []) if "name" in b)


def dirty_map(uri: str, name: str) -> list[tuple[int, int, int]]:
    out = run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", uri]).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def read_all(uri: str) -> bytes:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        size = h.get_size()
        return b"".join(h.pread(min(4 << 20, size - o), o) for o in range(0, size, 4 << 20))
    finally:
        h.shutdown()


def wait_gone(q: QMP, command: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while q.execute(command):
        assert time.monotonic() < deadline, q.execute(command)
        time.sleep(0.05)


def daemon_for(launcher, program: str, args: list[str]):
    return launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)


def source_args(disk: Path, sock: Path) -> list[str]:
    return ["--blockdev", f"driver=file,node-name=f0,filename={disk}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]


def pull_mode_backup(q: QMP, work: Path, sock: Path) -> dict:
    """libvirt's pull-mode incremental backup, step by step; what every step showed."""
    seen: dict = {"answers": []}
    src = f"nbd+unix:///disk0?socket={sock}"
    fleece_uri = f"nbd+unix:///backup-disk0?socket={sock}"

    def step(name, arguments):
        seen["answers"].append((name, answer(q.cmd(name, arguments))))

    writes(src, SINCE_CHECKPOINT)
    fleece = work / "fl.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(work / "disk.qcow2"), str(fleece)])
    step("blockdev-add", {"driver": "qcow2", "node-name": "fleece", "backing": "disk0",
                          "file": {"driver": "file", "filename": str(fleece)}})
    step("transaction", {"actions": [
        {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "chk1", "persistent": True}},
        {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "backup-tmp", "disabled": True}},
        {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "backup-tmp", "bitmaps": ["chk0"]}},
        {"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "chk0"}},
        {"type": "blockdev-backup", "data": {"device": "disk0", "target": "fleece", "sync": "none",
                                             "job-id": "backup-disk0"}},
    ]})
    step("block-export-add", {"type": "nbd", "id": "backup-disk0", "node-name": "fleece", "name": "backup-disk0",
                              "writable": False, "bitmaps": [{"node": "disk0", "name": "backup-tmp"}]})
    seen["listing-after-transaction"] = listing(q)
    seen["map"] = dirty_map(fleece_uri, "backup-tmp")
    before = read_all(fleece_uri)
    # Client writes after the transaction: the fleece export keeps the point in time.
    writes(src, AFTER_TRANSACTION)
    after = read_all(fleece_uri)
    seen["point-in-time"] = before == after
    seen["fleece-data"] = hashlib.sha256(after).hexdigest()
    seen["source-data"] = hashlib.sha256(read_all(src)).hexdigest()
    seen["map-after-writes"] = dirty_map(fleece_uri, "backup-tmp")
    seen["listing-after-writes"] = listing(q)
    seen["sha256"] = {name: q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=name)["sha256"]
                      for name in ("chk0", "chk1", "backup-tmp")}
    # Teardown as libvirt does it.
    step("block-export-del", {"id": "backup-disk0"})
    deadline = time.monotonic() + 10
    while any(e["id"] == "backup-disk0" for e in q.execute("query-block-exports")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    step("block-job-cancel", {"device": "backup-disk0", "force": True})
    wait_gone(q, "query-jobs")
    step("block-dirty-bitmap-remove", {"node": "disk0", "name": "backup-tmp"})
    step("blockdev-del", {"node-name": "fleece"})
    seen["listing-after-teardown"] = listing(q)
    return seen


def test_libvirt_pull_mode_backup_as_qemu_storage_daemon(launcher, tmp_path):
    """The whole pull-mode sequence answers as on qemu-storage-daemon; the fleece export's dirty map
    is what was written since the old checkpoint (not after the transaction), its data is the disk
    at the transaction whatever the client writes later, and the checkpoints land in the image."""
    require("qemu-storage-daemon", "qemu-img", "qemu-io", "nbdinfo")
    results = {}
    for program in ("blockd", "qsd"):
        work = tmp_path / program
        work.mkdir()
        disk = qcow2(work / "disk.qcow2")
        run(["qemu-io", "-f", "qcow2", *[a for c in BEFORE_CHECKPOINT for a in ("-c", c)], str(disk)])
        run(["qemu-img", "bitmap", "--add", str(disk), "chk0"])
        sock = work / "nbd.sock"
        daemon = daemon_for(launcher, program, source_args(disk, sock))
        with daemon.qmp() as q:
            results[program] = pull_mode_backup(q, work, sock)
        daemon.stop()
        info = json.loads(run(["qemu-img", "info", "--output=json", str(disk)]).stdout)
        results[program]["image-bitmaps"] = info["format-specific"]["data"].get("bitmaps")
        run(["qemu-img", "check", "-q", str(disk)])
    ours, theirs = results["blockd"], results["qsd"]
    for key in theirs:
        assert ours[key] == theirs[key], f"{key}: blockd {ours[key]}, qsd {theirs[key]}"
    assert ours["point-in-time"] is True
    assert all(a[1][0] == "ok" for a in ours["answers"]), ours["answers"]
    # Only what was written since chk0 is dirty in the exported bitmap (64 KiB granularity).
    dirty = [(o, n) for o, n, t in ours["map"] if t & 1]
    assert dirty == [(1 << 20, 64 << 10), (8 << 20, 64 << 10), (20 << 20, 128 << 10), (31 << 20, 64 << 10)]
    assert ours["map-after-writes"] == ours["map"]
    assert ours["fleece-data"] != ours["source-data"]


def bitmap_state(q: QMP) -> tuple:
    return (listing(q), {b[0]: q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=b[0])["sha256"]
                         for b in listing(q)})


FAILING_TRANSACTIONS = [
    # Each action takes effect, then the last one fails: everything is undone.
    [{"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "new", "granularity": 4096}},
     {"type": "block-dirty-bitmap-clear", "data": {"node": "disk0", "name": "a"}},
     {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "b", "bitmaps": ["a", "new"]}},
     {"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "b"}},
     {"type": "block-dirty-bitmap-enable", "data": {"node": "disk0", "name": "off"}},
     {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "c"}},
     {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "a"}}],
    [{"type": "block-dirty-bitmap-clear", "data": {"node": "disk0", "name": "b"}},
     {"type": "blockdev-backup", "data": {"device": "disk0", "target": "nowhere", "sync": "full", "job-id": "j"}}],
    [{"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "a"}},
     {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "a", "bitmaps": ["zz"]}}],
    [{"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "c"}},
     {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "c"}}],
    # Bad input of each action.
    [{"type": "block-dirty-bitmap-add", "data": {"node": "zz", "name": "x"}}],
    [{"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "x", "granularity": 1000}}],
    [{"type": "block-dirty-bitmap-add", "data": {"node": "disk0"}}],
    [{"type": "block-dirty-bitmap-clear", "data": {"node": "disk0", "name": "zz"}}],
    [{"type": "block-dirty-bitmap-clear", "data": {"node": "zz", "name": "a"}}],
    [{"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "zz", "extra": 1}}],
    [{"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "zz", "bitmaps": ["a"]}}],
    [{"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "a", "bitmaps": [{"node": "disk0"}]}}],
    [{"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "zz"}}],
    [{"type": "block-dirty-bitmap-frobnicate", "data": {"node": "disk0", "name": "a"}}],
]

# Each succeeds; the state after each is compared.
SUCCEEDING_TRANSACTIONS = [
    [{"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "t1", "disabled": True}},
     {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "t1", "bitmaps": ["a", "b"]}},
     {"type": "block-dirty-bitmap-clear", "data": {"node": "disk0", "name": "a"}},
     {"type": "block-dirty-bitmap-enable", "data": {"node": "disk0", "name": "off"}},
     {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "c"}}],
    [{"type": "block-dirty-bitmap-disable", "data": {"node": "disk0", "name": "t1"}},
     {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "c", "granularity": 512}},
     {"type": "block-dirty-bitmap-merge", "data": {"node": "disk0", "target": "c", "bitmaps": [{"node": "disk0", "name": "t1"}]}}],
]


def test_failing_action_undoes_the_others_as_qemu_storage_daemon(launcher, tmp_path):
    """A transaction whose last action fails leaves every bitmap as it was (an added one gone, a
    cleared or merged one with its old bits, enable/disable reverted, a removed one still there),
    bit for bit; the error of every bad action is QEMU's; succeeding ones change what QEMU changes."""
    require("qemu-storage-daemon", "qemu-io")
    results = {}
    for program in ("blockd", "qsd"):
        disk = qcow2(tmp_path / f"{program}.qcow2")
        sock = tmp_path / f"{program}.nbd"
        daemon = daemon_for(launcher, program, source_args(disk, sock))
        uri = f"nbd+unix:///disk0?socket={sock}"
        got = []
        with daemon.qmp() as q:
            q.execute("block-dirty-bitmap-add", node="disk0", name="a")
            writes(uri, ["write 0 64k", "write 1M 4k"])
            q.execute("block-dirty-bitmap-add", node="disk0", name="b", granularity=4096)
            q.execute("block-dirty-bitmap-add", node="disk0", name="c", persistent=True)
            q.execute("block-dirty-bitmap-add", node="disk0", name="off", disabled=True)
            writes(uri, ["write 4M 8k", "write 1M 512"])
            before = bitmap_state(q)
            for actions in FAILING_TRANSACTIONS:
                got.append(answer(q.cmd("transaction", {"actions": actions})))
                state = bitmap_state(q)
                assert state == before, f"{program}: {json.dumps(actions)[:120]} left {state}, was {before}"
            if program == "blockd":
                # qemu-storage-daemon 7.2 crashes on this one (its undo of a failed enable).
                for action in ("block-dirty-bitmap-enable", "block-dirty-bitmap-disable"):
                    assert q.error("transaction", actions=[{"type": action, "data": {"node": "disk0", "name": "zz"}}]) == \
                        {"class": "GenericError", "desc": "Dirty bitmap 'zz' not found"}
                    assert bitmap_state(q) == before
            for actions in SUCCEEDING_TRANSACTIONS:
                got.append(answer(q.cmd("transaction", {"actions": actions})))
                writes(uri, ["write 6M 4k"])
                got.append(bitmap_state(q))
        results[program] = (before, got)
    ours, theirs = results["blockd"], results["qsd"]
    assert ours[0] == theirs[0]
    for index, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert a == b, f"step {index}: blockd {a}, qsd {b}"
