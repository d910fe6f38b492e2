"""quorum and blkverify under a running export, read and written by a connected libnbd client:
a child whose image is changed behind blockd's back is outvoted (QUORUM_REPORT_BAD) and, with
rewrite-corrupted, repaired; a read no majority agrees on fails (QUORUM_FAILURE); a child that fails
(blkdebug under it) is reported with its error; read-pattern=fifo; blkverify fails a read whose test
and raw images differ. The quorum events match qemu-storage-daemon's for the same sequence."""
import os

import pytest

from client_helpers import nbd_outcome
from conftest import make_image, require, import_or_skip
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 1 * MiB


def images(tmp_path, count: int, prefix: str = "c") -> list:
    """`count` images with the same random contents."""
    data = os.urandom(SIZE)
    paths = []
    for i in range(count):
        path = tmp_path / f"{prefix}{i}.img"
        path.write_bytes(data)
        paths.append(path)
    return paths


def poke(path, offset: int, data: bytes) -> None:
    """Changes an image file behind the daemon's back."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def quorum_daemon(launcher, tmp_path, program: str = "blockd", **quorum):
    """A daemon with file nodes c0..c2, a quorum node "q0" over them, exported as "q0"; (qmp, nbd handle, images)."""
    paths = images(tmp_path, 3, prefix=f"{program}-c")
    sock = tmp_path / f"{program}-nbd.sock"
    daemon = launcher.blockd(name=program) if program == "blockd" else launcher.qsd()
    q = daemon.qmp()
    for i, path in enumerate(paths):
        q.execute("blockdev-add", {"driver": "file", "node-name": f"c{i}", "filename": str(path)})
    q.execute("blockdev-add", {"driver": "quorum", "node-name": "q0", "children": ["c0", "c1", "c2"],
                               "vote-threshold": 2, **quorum})
    q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})
    q.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "q0", "writable": True})
    h = nbd.NBD()
    h.set_request_structured_replies(False)  # QEMU's server drops a client whose structured read fails
    h.connect_uri(f"nbd+unix:///q0?socket={sock}")
    return q, h, paths


def quorum_events(q, seconds: float = 0.5) -> list[dict]:
    """The quorum events that arrived since the last call (taken off the client's queue)."""
    events = [{"event": e["event"], **e["data"]} for e in q.no_event(seconds) if e["event"].startswith("QUORUM")]
    q.events.clear()
    return events


outcome = nbd_outcome


def test_outvoted_child_is_reported_and_rewritten(launcher, tmp_path):
    q, h, paths = quorum_daemon(launcher, tmp_path, **{"rewrite-corrupted": True})
    good = paths[0].read_bytes()[64 * KiB:68 * KiB]
    poke(paths[2], 64 * KiB + 100, b"corrupt!")
    assert h.pread(4096, 64 * KiB) == good
    assert quorum_events(q) == [{"event": "QUORUM_REPORT_BAD", "type": "read", "node-name": "c2",
                                 "sector-num": 128, "sectors-count": 8}]
    assert paths[2].read_bytes()[64 * KiB:68 * KiB] == good, "rewrite-corrupted repairs the outvoted child"
    # A second change, to another child as well: no two agree, the read fails.
    poke(paths[1], 64 * KiB, b"one")
    poke(paths[2], 64 * KiB, b"two")
    assert outcome(lambda: h.pread(4096, 64 * KiB)) == "EIO"
    assert quorum_events(q) == [{"event": "QUORUM_FAILURE", "reference": "q0", "sector-num": 128, "sectors-count": 8}]
    # Writes go to every child.
    h.pwrite(b"w" * 4096, 0)
    assert all(p.read_bytes()[:4096] == b"w" * 4096 for p in paths)
    h.shutdown()


def test_failing_children(launcher, tmp_path):
    paths = images(tmp_path, 3)
    sock = tmp_path / "nbd.sock"
    args = []
    for i, path in enumerate(paths):
        args += ["--blockdev", f"driver=file,node-name=f{i},filename={path}",
                 "--blockdev", f"driver=blkdebug,node-name=c{i},image=f{i}"]
    args += ["--blockdev", "driver=quorum,node-name=q0,children.0=c0,children.1=c1,children.2=c2,vote-threshold=2",
             "--blockdev", "driver=quorum,node-name=q1,children.0=f0,children.1=f1,vote-threshold=1,read-pattern=fifo",
             "--nbd-server", f"addr.type=unix,addr.path={sock}",
             "--export", "type=nbd,id=e0,node-name=q0,name=q0,writable=on"]
    q = launcher.blockd(*args).qmp()
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///q0?socket={sock}")
    expected = paths[0].read_bytes()[:4096]
    # One child fails its writes (pwritev is raised by the blkdebug node itself): reported, the write succeeds.
    q.execute("x-blockd-blkdebug-set-rules", {"node-name": "c0", "inject-error": [{"event": "pwritev", "once": True}]})
    h.pwrite(expected, 0)
    assert quorum_events(q) == [{"event": "QUORUM_REPORT_BAD", "type": "write", "error": "Input/output error",
                                 "node-name": "c0", "sector-num": 0, "sectors-count": 8}]
    # Two of three fail: the write fails with the children's errno, and QUORUM_FAILURE says so.
    for node in ("c0", "c1"):
        q.execute("x-blockd-blkdebug-set-rules", {"node-name": node,
                                                  "inject-error": [{"event": "pwritev", "errno": 28, "once": True}]})
    assert outcome(lambda: h.pwrite(b"x" * 512, 512)) == "ENOSPC"
    assert [e["event"] for e in quorum_events(q)] == ["QUORUM_REPORT_BAD", "QUORUM_REPORT_BAD", "QUORUM_FAILURE"]
    h.shutdown()


def test_fifo_reads_the_first_child_that_works(launcher, tmp_path):
    paths = images(tmp_path, 2)
    sock = tmp_path / "nbd.sock"
    q = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={paths[0]}",
        "--blockdev", "driver=blkdebug,node-name=c0,image=f0,inject-error.0.event=pwritev_done",
        "--blockdev", f"driver=file,node-name=c1,filename={paths[1]}",
        "--blockdev", "driver=quorum,node-name=q0,children.0=c0,children.1=c1,vote-threshold=1,read-pattern=fifo",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=q0,name=q0,writable=on").qmp()
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///q0?socket={sock}")
    poke(paths[1], 0, b"second child")
    assert h.pread(12, 0) == paths[0].read_bytes()[:12], "fifo reads child 0 while it works"
    # A write arms the rule on c0 (pwritev_done), so that its next read fails and c1 answers.
    h.pwrite(b"\0" * 512, 4096)
    assert h.pread(12, 0) == b"second child"
    assert quorum_events(q) == [{"event": "QUORUM_REPORT_BAD", "type": "read", "error": "Input/output error",
                                 "node-name": "c0", "sector-num": 0, "sectors-count": 1}]
    h.shutdown()


def test_open_errors(launcher, tmp_path):
    paths = images(tmp_path, 2)
    q = launcher.blockd(*[a for i, p in enumerate(paths)
                          for a in ("--blockdev", f"driver=file,node-name=c{i},filename={p}")]).qmp()
    base = {"driver": "quorum", "node-name": "q", "children": ["c0", "c1"]}
    cases = [({"vote-threshold": 0}, "Parameter 'vote-threshold' expects value >= 1"),
             ({"vote-threshold": 3}, "threshold may not exceed children count"),
             ({}, "Parameter 'vote-threshold' is missing"),
             ({"vote-threshold": 1, "blkverify": True},
              "blkverify=on can only be set if there are exactly two files and vote-threshold is 2"),
             ({"vote-threshold": 2, "blkverify": True, "rewrite-corrupted": True},
              "rewrite-corrupted=on cannot be used with blkverify=on"),
             ({"vote-threshold": 1, "children": []}, "Number of provided children must be 1 or more")]
    for extra, desc in cases:
        assert q.error("blockdev-add", {**base, **extra}) == {"class": "GenericError", "desc": desc}, extra
    q.execute("blockdev-add", {**base, "vote-threshold": 2, "blkverify": True})
    nodes = {n["node-name"]: n for n in q.execute("query-named-block-nodes")}
    assert nodes["q"]["drv"] == "quorum"


def test_blkverify_fails_a_read_whose_images_differ(launcher, tmp_path):
    test, reference = images(tmp_path, 2)
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd(
        "--blockdev", f"driver=blkverify,node-name=v0,test.driver=file,test.filename={test},"
                      f"raw.driver=file,raw.filename={reference}",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=v0,name=v0,writable=on")
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///v0?socket={sock}")
    h.pwrite(b"both" * 1024, 8192)
    assert test.read_bytes()[8192:12288] == reference.read_bytes()[8192:12288] == b"both" * 1024
    assert h.pread(4096, 8192) == b"both" * 1024
    poke(test, 8192 + 1000, b"X")
    assert outcome(lambda: h.pread(4096, 8192)) == "EIO"
    assert "contents mismatch at offset 9192" in daemon.log_text()
    assert h.pread(4096, 0) == reference.read_bytes()[:4096], "ranges that agree still read"
    h.shutdown()


def test_same_quorum_events_as_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    seen = {}
    for program in ("blockd", "qsd"):
        q, h, paths = quorum_daemon(launcher, tmp_path, program=program)
        poke(paths[1], 100, b"corrupt")
        h.pread(4096, 0)
        events = quorum_events(q)
        poke(paths[2], 8192, b"two")
        poke(paths[1], 8192, b"one")
        results = outcome(lambda: h.pread(1024, 8192))
        seen[program] = (events, results, quorum_events(q))
        h.shutdown()
    assert seen["blockd"] == seen["qsd"]
    assert seen["blockd"][0] == [{"event": "QUORUM_REPORT_BAD", "type": "read", "node-name": "c1",
                                  "sector-num": 0, "sectors-count": 8}]
