"""detect-zeroes on a running export, through a connected libnbd client: with "unmap", 64 MiB of
zeroes written as ordinary WRITE commands leave the image file without a single allocated block
(SEEK_DATA finds nothing, st_blocks is 0); the setting changes live with x-blockd-set-detect-zeroes
between two writes of the same connection, and query-named-block-nodes / query-block show it.
"unmap" needs discard=unmap, at open and live, with QEMU's wording."""
import errno
import os

import pytest

from conftest import make_image, import_or_skip
from qmp_client import MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 64 * MiB
CHUNK = 32 * MiB  # the largest payload blockd accepts


def exported(launcher, tmp_path, detect: str = "off"):
    """blockd exporting raw "disk0" (discard=unmap, detect-zeroes=`detect`) over file "f0" (discard=unmap)."""
    image = make_image(tmp_path / "disk.img", SIZE)
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image},discard=unmap",
        "--blockdev", f"driver=raw,node-name=disk0,file=f0,discard=unmap,detect-zeroes={detect}",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///disk0?socket={sock}")
    return daemon.qmp(), h, image


def write_all(h, byte: int) -> None:
    """The whole 64 MiB export written with plain WRITE commands of `byte`, then flushed."""
    payload = bytes([byte]) * CHUNK
    for offset in range(0, SIZE, CHUNK):
        h.pwrite(payload, offset)
    h.flush()


def allocated(image) -> int:
    return os.stat(image).st_blocks * 512


def has_data(image) -> bool:
    with open(image, "rb") as f:
        try:
            os.lseek(f.fileno(), 0, os.SEEK_DATA)
            return True
        except OSError as e:
            assert e.errno == errno.ENXIO
            return False


def detect_zeroes(q) -> dict:
    nodes = q.execute("query-named-block-nodes")
    Schema(q.execute("query-qmp-schema")).check_return("query-named-block-nodes", nodes)
    return {n["node-name"]: n["detect_zeroes"] for n in nodes}


def test_unmap_leaves_64m_of_zeroes_unallocated(launcher, tmp_path):
    q, h, image = exported(launcher, tmp_path, detect="unmap")
    assert detect_zeroes(q) == {"disk0": "unmap", "f0": "off"}
    write_all(h, 0x5A)
    assert allocated(image) >= SIZE
    write_all(h, 0)
    assert not has_data(image), "SEEK_DATA found data after 64 MiB of zeroes with detect-zeroes=unmap"
    assert allocated(image) == 0
    assert h.pread(4096, SIZE - 4096) == bytes(4096)
    h.shutdown()


def test_toggled_live_between_writes_of_one_connection(launcher, tmp_path):
    q, h, image = exported(launcher, tmp_path)
    assert detect_zeroes(q)["disk0"] == "off"
    write_all(h, 0x11)
    write_all(h, 0)
    assert allocated(image) >= SIZE, "off: zeroes are written as data"

    assert q.execute("x-blockd-set-detect-zeroes", {"node-name": "disk0", "detect-zeroes": "unmap"}) == {}
    assert detect_zeroes(q)["disk0"] == "unmap"
    write_all(h, 0)
    assert not has_data(image) and allocated(image) == 0

    assert q.execute("x-blockd-set-detect-zeroes", {"node-name": "disk0", "detect-zeroes": "on"}) == {}
    write_all(h, 0x22)
    write_all(h, 0)
    assert allocated(image) >= SIZE, "on: zeroes are written as zero-writes that keep the blocks"
    assert h.pread(4096, 0) == bytes(4096)

    # The same connection goes on: data that is not all zero is written as it came.
    h.pwrite(b"\0" * 4095 + b"\1", 0)
    assert h.pread(4096, 0) == b"\0" * 4095 + b"\1"
    blocks = q.execute("query-block", **{"x-blockd-exports": True})  # the export's own device
    Schema(q.execute("query-qmp-schema")).check_return("query-block", blocks)
    assert [b["inserted"]["detect_zeroes"] for b in blocks if b["device"] == "e0"] == ["on"]
    q.execute("x-blockd-set-detect-zeroes", {"node-name": "disk0", "detect-zeroes": "off"})
    assert detect_zeroes(q)["disk0"] == "off"
    h.shutdown()


UNMAP_WITHOUT_DISCARD = "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"


def test_unmap_needs_discard_unmap(launcher, tmp_path):
    q, h, image = exported(launcher, tmp_path)
    assert q.error("x-blockd-set-detect-zeroes", {"node-name": "nope", "detect-zeroes": "on"}) == {
        "class": "GenericError", "desc": "Device 'nope' not found"}
    assert q.error("x-blockd-set-detect-zeroes", {"node-name": "disk0", "detect-zeroes": "sometimes"}) == {
        "class": "GenericError", "desc": "Parameter 'detect-zeroes' does not accept value 'sometimes'"}
    # f0 was opened with discard=unmap; a new node without it refuses unmap, live and at open.
    q.execute("blockdev-add", {"driver": "null-co", "node-name": "n1", "size": MiB})
    assert q.error("x-blockd-set-detect-zeroes", {"node-name": "n1", "detect-zeroes": "unmap"}) == {
        "class": "GenericError", "desc": UNMAP_WITHOUT_DISCARD}
    assert detect_zeroes(q)["n1"] == "off"
    assert q.error("blockdev-add", {"driver": "null-co", "node-name": "n2", "detect-zeroes": "unmap"}) == {
        "class": "GenericError", "desc": UNMAP_WITHOUT_DISCARD}
    q.execute("blockdev-add", {"driver": "null-co", "node-name": "n3", "detect-zeroes": "unmap", "discard": "unmap"})
    assert detect_zeroes(q)["n3"] == "unmap"
    h.shutdown()


def test_qemu_storage_daemon_words_the_refusal_alike(launcher, tmp_path):
    from conftest import require
    require("qemu-storage-daemon")
    with launcher.qsd("--blockdev", f"driver=null-co,node-name=n0,size={MiB}").qmp() as q:
        assert q.error("blockdev-add", {"driver": "null-co", "node-name": "n2", "detect-zeroes": "unmap"}) == {
            "class": "GenericError", "desc": UNMAP_WITHOUT_DISCARD}
