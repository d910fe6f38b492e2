"""Live snapshots, block-stream and block-commit on a live export (issue #13): the chain each
leaves is checked with qemu-img check / info --backing-chain / compare, the data byte for byte
against what a libnbd client wrote, and the state sequences against qemu-storage-daemon's."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require, import_or_skip
from qmp_client import launcher  # noqa: F401 (fixture)
from test_jobs import job_trace, read_all, run

nbd = import_or_skip("nbd")
require("qemu-img", "qemu-io")

MiB = 1024 * 1024
SIZE = 8 * MiB


def base_image(work: Path) -> Path:
    image = work / "base.raw"
    run("qemu-img", "create", "-f", "raw", str(image), str(SIZE))
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 5M 1M", str(image))
    return image


def args(work: Path, image: Path) -> list[str]:
    return ["--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk,file=f0",
            "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}",
            "--export", "type=nbd,id=e0,node-name=disk,name=disk,writable=on"]


def chain_of(image: Path) -> list[str]:
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", "--backing-chain", str(image)).stdout)
    return [Path(entry["filename"]).name for entry in info]


def write(uri: str, pattern: int, offset: int, length: int) -> None:
    h = nbd.NBD()
    h.connect_uri(uri)
    h.pwrite(bytes([pattern]) * length, offset)
    h.flush()
    h.shutdown()


def test_snapshot_then_active_commit_keeps_clients_and_data(launcher, tmp_path):
    image = base_image(tmp_path)
    daemon = launcher.blockd(*args(tmp_path, image), name="blockd")
    uri = f"nbd+unix:///disk?socket={tmp_path / 'nbd.sock'}"
    h = nbd.NBD()
    h.connect_uri(uri)  # a client connected through snapshot and commit
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-snapshot-sync", {"node-name": "disk", "snapshot-file": str(tmp_path / "snap.qcow2"),
                                               "snapshot-node-name": "snap", "format": "qcow2"})
        h.pwrite(b"\x33" * MiB, 2 * MiB)
        h.flush()
        assert chain_of(tmp_path / "snap.qcow2") == ["snap.qcow2", "base.raw"]
        run("qemu-img", "check", "-U", str(tmp_path / "snap.qcow2"))
        # The base is no longer written: the client's data is in the overlay only.
        assert (tmp_path / "base.raw").read_bytes()[2 * MiB:3 * MiB] == b"\x11" * MiB
        expected = read_all(uri, SIZE)
        error = qmp.error("blockdev-snapshot-sync", {"node-name": "disk", "snapshot-file": str(tmp_path / "s2.qcow2")})
        assert error == {"class": "GenericError", "desc": "Node 'disk' is busy: node is used as backing hd of 'snap'"}
        qmp.execute("block-commit", {"job-id": "c1", "device": "snap"})
        qmp.event("BLOCK_JOB_READY", timeout=20)
        h.pwrite(b"\x44" * 4096, 7 * MiB)  # during the commit: reaches the base through the pivot
        expected = expected[:7 * MiB] + b"\x44" * 4096 + expected[7 * MiB + 4096:]
        qmp.execute("block-job-complete", device="c1")
        assert "error" not in qmp.event("BLOCK_JOB_COMPLETED", timeout=20)["data"]
        h.flush()
        assert h.pread(SIZE, 0) == expected
        names = [node["node-name"] for node in qmp.execute("query-named-block-nodes")]
        assert "snap" not in names and "disk" in names
    h.shutdown()
    launcher.stop_all()
    assert (tmp_path / "base.raw").read_bytes() == expected


def qcow2_chain(work: Path) -> Path:
    """base.raw <- mid.qcow2 <- top.qcow2, each layer with data of its own."""
    base = base_image(work)
    run("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(work / "mid.qcow2"))
    run("qemu-io", "-c", "write -P 0x55 1M 1M", str(work / "mid.qcow2"))
    run("qemu-img", "create", "-f", "qcow2", "-b", str(work / "mid.qcow2"), "-F", "qcow2", str(work / "top.qcow2"))
    run("qemu-io", "-c", "write -P 0x66 4M 64k", str(work / "top.qcow2"))
    return work / "top.qcow2"


def chain_args(work: Path, top: Path) -> list[str]:
    return ["--blockdev", f"driver=qcow2,node-name=top,file.driver=file,file.filename={top}",
            "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}",
            "--export", "type=nbd,id=e0,node-name=top,name=top,writable=on"]


@pytest.mark.parametrize("base", [None, "base.raw"])
def test_stream_while_a_client_writes(launcher, tmp_path, base):
    top = qcow2_chain(tmp_path)
    before = run("qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={top}", f"of={tmp_path / 'before.raw'}")
    expected = bytearray((tmp_path / "before.raw").read_bytes())
    daemon = launcher.blockd(*chain_args(tmp_path, top), name="blockd")
    uri = f"nbd+unix:///top?socket={tmp_path / 'nbd.sock'}"
    with daemon.qmp() as qmp:
        arguments = {"job-id": "s1", "device": "top", "speed": 4 * MiB}
        if base:
            arguments["base"] = str(tmp_path / base)
        qmp.execute("block-stream", arguments)
        write(uri, 0x77, 1 * MiB + 512 * 1024, 4096)  # into a range the stream copies
        expected[1 * MiB + 512 * 1024:1 * MiB + 512 * 1024 + 4096] = b"\x77" * 4096
        qmp.execute("block-job-set-speed", device="s1", speed=0)
        assert "error" not in qmp.event("BLOCK_JOB_COMPLETED", timeout=20)["data"]
        assert read_all(uri, SIZE) == bytes(expected)
    launcher.stop_all()
    run("qemu-img", "check", str(top))
    assert chain_of(top) == (["top.qcow2", "base.raw"] if base else ["top.qcow2"])
    run("qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={top}", f"of={tmp_path / 'after.raw'}")
    assert (tmp_path / "after.raw").read_bytes() == bytes(expected)


def test_commit_of_an_inner_image(launcher, tmp_path):
    top = qcow2_chain(tmp_path)
    run("qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={top}", f"of={tmp_path / 'before.raw'}")
    daemon = launcher.blockd(*chain_args(tmp_path, top), name="blockd")
    with daemon.qmp() as qmp:
        qmp.execute("block-commit", {"job-id": "c1", "device": "top", "top": str(tmp_path / "mid.qcow2"),
                                     "base": str(tmp_path / "base.raw")})
        assert "error" not in qmp.event("BLOCK_JOB_COMPLETED", timeout=20)["data"]
    launcher.stop_all()
    run("qemu-img", "check", str(top))
    assert chain_of(top) == ["top.qcow2", "base.raw"]
    run("qemu-img", "compare", "-F", "raw", str(top), str(tmp_path / "before.raw"))


def test_commit_and_stream_refusals_match_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    replies = {}
    for kind in ("qsd", "blockd"):
        work = tmp_path / kind
        work.mkdir()
        top = qcow2_chain(work)
        daemon = (launcher.qsd if kind == "qsd" else launcher.blockd)(*chain_args(work, top), name=kind)
        with daemon.qmp() as qmp:
            got = [qmp.cmd("block-commit", {"job-id": "c1", "device": "nope"}),
                   qmp.cmd("block-commit", {"job-id": "c1", "device": "top", "base": str(work / "top.qcow2")}),
                   qmp.cmd("block-stream", {"job-id": "s1", "device": "nope"}),
                   qmp.cmd("block-stream", {"device": "top"}),
                   qmp.cmd("block-stream", {"job-id": "s1", "device": "top", "speed": 1}),
                   qmp.cmd("block-commit", {"job-id": "c2", "device": "top"}),
                   qmp.cmd("job-cancel", id="s1"),
                   job_trace(qmp, "status:null")]
        replies[kind] = json.loads(json.dumps(got).replace(str(work), "$WORK"))
    assert replies["blockd"] == replies["qsd"]


def test_transaction_is_all_or_nothing(launcher, tmp_path):
    image = base_image(tmp_path)
    run("qemu-img", "create", "-f", "qcow2", str(tmp_path / "other.qcow2"), str(SIZE))
    daemon = launcher.blockd(*args(tmp_path, image), name="blockd")
    uri = f"nbd+unix:///disk?socket={tmp_path / 'nbd.sock'}"
    before = read_all(uri, SIZE)
    with daemon.qmp() as qmp:
        snapshot = {"type": "blockdev-snapshot-sync",
                    "data": {"node-name": "disk", "snapshot-file": str(tmp_path / "snap.qcow2"),
                             "snapshot-node-name": "snap", "format": "qcow2"}}
        failing = {"type": "blockdev-backup", "data": {"job-id": "b1", "device": "disk", "target": "nope", "sync": "full"}}
        error = qmp.error("transaction", actions=[snapshot, failing])
        assert error == {"class": "GenericError", "desc": "Cannot find device='nope' nor node-name='nope'"}
        assert [n["node-name"] for n in qmp.execute("query-named-block-nodes") if n["node-name"] == "snap"] == []
        assert qmp.execute("query-block-jobs") == []
        write(uri, 0x99, 0, 4096)  # still goes to the base image
        assert (tmp_path / "base.raw").read_bytes()[:4096] == b"\x99" * 4096
        before = b"\x99" * 4096 + before[4096:]
        # Both at once: the backup is of the disk as it was when the overlay went in.
        backup = {"type": "drive-backup", "data": {"job-id": "b1", "device": "disk", "target": str(tmp_path / "backup.qcow2"),
                                                   "format": "qcow2", "sync": "full", "speed": 4 * MiB}}
        qmp.execute("transaction", actions=[snapshot, backup])
        write(uri, 0xaa, 0, 4096)  # into the overlay
        qmp.execute("block-job-set-speed", device="b1", speed=0)
        assert "error" not in qmp.event("BLOCK_JOB_COMPLETED", timeout=20)["data"]
    launcher.stop_all()
    assert chain_of(tmp_path / "snap.qcow2") == ["snap.qcow2", "base.raw"]
    assert (tmp_path / "base.raw").read_bytes() == before
    run("qemu-img", "compare", "-F", "raw", str(tmp_path / "backup.qcow2"), str(tmp_path / "base.raw"))


def snapshot_script(qmp, work: Path) -> list:
    results = [qmp.cmd("blockdev-snapshot-sync", {"node-name": "disk", "snapshot-file": str(work / "ov.qcow2"),
                                                  "snapshot-node-name": "ov", "format": "qcow2"})]
    results.append(qmp.cmd("blockdev-snapshot-sync", {"node-name": "disk", "snapshot-file": str(work / "ov9.qcow2")}))
    results.append(qmp.cmd("blockdev-snapshot-sync", {"node-name": "ov", "snapshot-file": str(work / "ov2.qcow2"),
                                                      "snapshot-node-name": "ov2", "mode": "existing"}))
    results.append(qmp.cmd("blockdev-snapshot-sync", {"node-name": "ov", "snapshot-file": str(work / "ov.qcow2"),
                                                      "snapshot-node-name": "ov3"}))
    results.append(qmp.cmd("blockdev-snapshot-sync", {"node-name": "nope", "snapshot-file": str(work / "x.qcow2")}))
    results.append(qmp.cmd("blockdev-snapshot-sync", {"device": "nope", "snapshot-file": str(work / "x.qcow2")}))
    run("qemu-img", "create", "-f", "qcow2", str(work / "ov2.qcow2"), str(SIZE))
    results.append(qmp.cmd("blockdev-add", {"driver": "qcow2", "node-name": "ov2", "backing": None,
                                            "file": {"driver": "file", "filename": str(work / "ov2.qcow2")}}))
    results.append(qmp.cmd("blockdev-snapshot", node="ov", overlay="ov2"))
    results.append(qmp.cmd("blockdev-snapshot", node="ov", overlay="ov2"))
    results.append([e["node-name"] for e in qmp.execute("query-block-exports")])
    results.append(qmp.cmd("change-backing-file", device="ov2", **{"image-node-name": "ov2"},
                           **{"backing-file": str(work / "renamed.qcow2")}))
    return results


def test_snapshots_like_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    replies = {}
    for kind in ("qsd", "blockd"):
        work = tmp_path / kind
        work.mkdir()
        image = base_image(work)
        daemon = (launcher.qsd if kind == "qsd" else launcher.blockd)(*args(work, image), name=kind)
        with daemon.qmp() as qmp:
            replies[kind] = json.loads(json.dumps(snapshot_script(qmp, work)).replace(str(work), "$WORK"))
    assert replies["blockd"] == replies["qsd"]
    launcher.stop_all()
    for kind in ("qsd", "blockd"):
        chain = json.loads(run("qemu-img", "info", "--output=json", str(tmp_path / kind / "ov2.qcow2")).stdout)
        replies[kind] = chain.get("backing-filename", "").replace(str(tmp_path / kind), "$WORK")
    assert replies["blockd"] == replies["qsd"]
