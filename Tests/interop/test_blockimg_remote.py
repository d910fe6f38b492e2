"""blockimg with NBD URIs where it takes a file (info, map, compare, convert from and to), against
qemu-img on the same nbdkit server."""
import json
import os

import pytest

from client_helpers import run
from conftest import import_or_skip, require
from remote_helpers import Nbdkit
from test_blockimg import blockimg_binary

nbd = import_or_skip("nbd")
MiB = 1024 * 1024


@pytest.fixture
def remote(tmp_path):
    """nbdkit's memory plugin (8 MiB: blockimg compare is slow in debug builds) with data at 1 MiB
    and 5 MiB, the rest holes."""
    require("qemu-img", "nbdkit")
    server = Nbdkit(tmp_path, ["memory", "8M"])
    h = nbd.NBD()
    h.connect_uri(server.uri())
    h.pwrite(os.urandom(256 * 1024), 1 * MiB)
    h.pwrite(os.urandom(64 * 1024), 5 * MiB + 4096)
    h.shutdown()
    yield server
    server.stop()


def blockimg(*args, ok=True):
    return run([blockimg_binary(), *args], ok=ok)


def test_info_matches_qemu_img(remote):
    ours = json.loads(blockimg("info", "--output=json", remote.uri()).stdout)
    theirs = json.loads(run(["qemu-img", "info", "--output=json", remote.uri()]).stdout)
    for key in ("virtual-size", "format"):
        assert ours[key] == theirs[key], (key, ours, theirs)


def test_map_matches_qemu_img(remote):
    fields = ("start", "length", "data", "zero")
    ours = [{k: e[k] for k in fields} for e in json.loads(blockimg("map", "--output=json", remote.uri()).stdout)]
    theirs = [{k: e[k] for k in fields} for e in json.loads(
        run(["qemu-img", "map", "--output=json", "-f", "raw", remote.uri()]).stdout)]
    assert ours == theirs
    assert any(e["data"] for e in ours) and any(not e["data"] for e in ours)


def test_convert_from_and_to_nbd_and_compare(remote, tmp_path):
    ours = tmp_path / "ours.raw"
    theirs = tmp_path / "theirs.raw"
    blockimg("convert", "-f", "raw", "-O", "raw", remote.uri(), ours)
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", remote.uri(), theirs])
    assert ours.read_bytes() == theirs.read_bytes()
    assert "identical" in blockimg("compare", "-f", "raw", "-F", "raw", remote.uri(), ours).stdout
    # Into a second server: -n writes into the existing export; without -n the export must be large enough.
    target = Nbdkit(tmp_path, ["memory", "8M"], name="target")
    try:
        source = tmp_path / "source.qcow2"
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", ours, source])
        blockimg("convert", "-n", "-f", "qcow2", "-O", "raw", source, target.uri())
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", target.uri(), ours])
        blockimg("convert", "-f", "qcow2", "-O", "raw", source, target.uri())
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", target.uri(), ours])
        small = Nbdkit(tmp_path, ["memory", "1M"], name="small")
        failed = blockimg("convert", "-f", "qcow2", "-O", "raw", source, small.uri(), ok=False)
        assert failed.returncode == 1 and "Cannot grow" in failed.stderr, failed.stderr
        small.stop()
    finally:
        target.stop()
    mismatch = blockimg("compare", "-f", "raw", "-F", "raw", remote.uri(), tmp_path / "zero.raw", ok=False) \
        if (tmp_path / "zero.raw").write_bytes(b"\0" * 8 * MiB) is not None else None
    assert mismatch.returncode == 1 and "Content mismatch" in mismatch.stdout


def test_bad_uris_are_refused(tmp_path):
    missing = tmp_path / "nothing.sock"
    failed = blockimg("info", f"nbd+unix:///x?socket={missing}", ok=False)
    assert failed.returncode == 1 and str(missing) in failed.stderr
    failed = blockimg("info", "nbd+unix:///x", ok=False)
    assert failed.returncode == 1 and "socket" in failed.stderr
