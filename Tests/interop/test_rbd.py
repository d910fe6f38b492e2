"""The rbd driver against a real one-node Ceph cluster (scripts/ceph-one-node, --long): data written by
QEMU's own rbd driver reads back byte for byte through blockd and the other way round, sparse areas
stay holes, a second writer is refused by the exclusive lock, snapshots open read-only. Without
librbd, asking for an rbd node says what to install (not --long: it needs no cluster)."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from qmp_client import QMP
from conftest import ROOT, blockd_binary, require, require_long, skip_or_fail

MiB = 1 << 20


def rbd_node(conf: Path, image: str, **extra) -> str:
    return json.dumps({"driver": "rbd", "node-name": "r0", "pool": "rbd", "image": image, "conf": str(conf), **extra})


def test_without_librbd_says_what_to_install(tmp_path):
    env = dict(os.environ, BLOCKD_LIBRBD=str(tmp_path / "missing" / "librbd.so.1"))
    run = subprocess.run([blockd_binary(), "--blockdev", json.dumps({"driver": "rbd", "node-name": "r0", "pool": "rbd", "image": "x"})],
                         capture_output=True, text=True, timeout=30, env=env)
    assert run.returncode == 1
    assert "rbd: librbd is not installed (Debian package librbd1)" in run.stderr


@pytest.fixture(scope="module")
def ceph(tmp_path_factory, request):
    require_long(request)
    require("ceph-mon", "ceph-osd", "rbd", "qemu-img", "qemu-io")
    if not Path("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so").exists():
        skip_or_fail("QEMU's rbd driver is not installed (Debian package qemu-block-extra)")
    directory = tmp_path_factory.mktemp("ceph") / "cluster"
    start = subprocess.run([str(ROOT / "scripts" / "ceph-one-node"), "start", str(directory)], capture_output=True, text=True,
                           timeout=180)
    if start.returncode != 0:
        subprocess.run([str(ROOT / "scripts" / "ceph-one-node"), "stop", str(directory)], timeout=60)
        pytest.fail(f"the one-node Ceph cluster did not start:\n{start.stdout}\n{start.stderr}")
    yield Path(start.stdout.strip().splitlines()[-1])
    subprocess.run([str(ROOT / "scripts" / "ceph-one-node"), "stop", str(directory)], timeout=60)


def rbd(conf: Path, *args: str) -> str:
    run = subprocess.run(["rbd", "-c", str(conf), *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def qemu_rbd(conf: Path, image: str, snapshot: str | None = None) -> str:
    return f"rbd:rbd/{image}{'@' + snapshot if snapshot else ''}:conf={conf}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qemu_writes_blockd_reads(ceph, start_blockd, tmp_path):
    rbd(ceph, "create", "--size", "64M", "rbd/q2b")
    source = tmp_path / "source.raw"
    with open(source, "wb") as f:
        f.truncate(64 * MiB)
        for offset in (0, 5 * MiB, 40 * MiB + 12345):
            f.seek(offset)
            f.write(os.urandom(MiB))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), qemu_rbd(ceph, "q2b")], check=True, timeout=120)
    daemon = start_blockd(args=["--blockdev", rbd_node(ceph, "q2b", **{"read-only": True}),
                                "--export", "type=nbd,id=e0,node-name=r0,name=disk0"])
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", daemon.uri(), str(copy)], check=True, timeout=120)
    assert digest(copy) == digest(source)
    exported = tmp_path / "exported.raw"
    rbd(ceph, "export", "rbd/q2b", str(exported))
    assert digest(exported) == digest(source)
    # Block status: the untouched middle of the image is a hole.
    mapping = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "-f", "raw", daemon.uri()], capture_output=True,
                                        text=True, check=True, timeout=60).stdout)
    hole = next(e for e in mapping if e["start"] <= 20 * MiB < e["start"] + e["length"])
    assert hole["data"] is False and hole["zero"] is True


def test_blockd_writes_qemu_reads_and_lock(ceph, start_blockd, tmp_path):
    rbd(ceph, "create", "--size", "32M", "rbd/b2q")
    daemon = start_blockd(args=["--blockdev", rbd_node(ceph, "b2q"), "--export", "type=nbd,id=e0,node-name=r0,name=disk0,writable=on"])
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(32 * MiB))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), daemon.uri()], check=True, timeout=120)
    # A second writer is refused while blockd holds the exclusive lock.
    second = subprocess.run([blockd_binary(), "--blockdev", rbd_node(ceph, "b2q")], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "exclusive lock" in second.stderr, second.stderr
    daemon.stop()
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", qemu_rbd(ceph, "b2q"), str(copy)], check=True, timeout=120)
    assert digest(copy) == digest(source)
    # A snapshot opens read-only, and only read-only.
    rbd(ceph, "snap", "create", "rbd/b2q@s1")
    refused = subprocess.run([blockd_binary(), "--blockdev", rbd_node(ceph, "b2q", snapshot="s1")], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "read-only" in refused.stderr
    qmp_path = tmp_path / "qmp.sock"
    snap = start_blockd(args=["--blockdev", rbd_node(ceph, "b2q", snapshot="s1", **{"read-only": True}),
                              "--export", "type=nbd,id=e1,node-name=r0,name=disk0",
                              "--chardev", f"socket,id=m,path={qmp_path},server=on,wait=off", "--monitor", "chardev=m"])
    # The image's own snapshots are listed as QEMU's rbd driver lists them.
    with QMP(qmp_path) as qmp:
        node = next(n for n in qmp.execute("query-named-block-nodes") if n["node-name"] == "r0")
    assert [(s["name"], s["id"], s["vm-state-size"]) for s in node["image"]["snapshots"]] == [("s1", "s1", 32 * MiB)]
    snap_copy = tmp_path / "snap.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", snap.uri(), str(snap_copy)], check=True, timeout=120)
    assert digest(snap_copy) == digest(source)
