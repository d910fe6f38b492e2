"""The qcow (version 1) driver against qemu-img and qemu-io: images QEMU writes (plain, with a
backing file, with compressed clusters) read identically through a blockd export with the same
allocation map, images blockd writes read identically in QEMU, blockimg create/info/convert answer
as qemu-img does, and corrupt images are refused or fail with EIO while another export keeps serving."""
import os
import shutil
import struct
import subprocess

import nbd
import pytest

from conftest import require
from fmt1_helpers import blockimg, fio_verify, export_args, info_json, nbd_map, qemu_img, qemu_io, qemu_map
from qmp_client import QMP, monitor_args

SIZE = 8 << 20
PATTERN = ["write -P 0xab 0 64k", "write -P 0x11 100k 3000", "write -z 1M 128k", "write -P 0x22 3M 4k",
           "write -P 0x33 8000k 192k", "write -P 0x44 2500k 100k"]


def make(path, size=SIZE, backing=None, backing_fmt=None):
    args = ["create", "-f", "qcow"]
    if backing:
        args += ["-b", str(backing), "-F", backing_fmt]
    qemu_img(*args, str(path), *([str(size)] if size else []))
    return path


def test_images_qemu_writes_read_identically(start_blockd, tmp_path):
    require("qemu-img", "qemu-io", "nbdinfo")
    image = make(tmp_path / "d.qcow")
    qemu_io(image, "qcow", *PATTERN)
    daemon = start_blockd(args=export_args(image, "qcow", writable=False))
    assert qemu_img("compare", "-f", "qcow", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image, "qcow")


def compressed_image(path):
    """A qcow image with compressed clusters: qemu-io writes them one cluster at a time (qemu-img
    convert -c cannot write qcow in QEMU 7.2)."""
    make(path, size=4 << 20)
    commands = [f"write -c -P {i + 1} {i * 4096} 4k" for i in range(64)]
    commands += [f"write -c -P {200 + i} {(1 << 20) + i * 65536} 4k" for i in range(8)]
    qemu_io(path, "qcow", *commands, "write -P 0x99 3M 16k")
    return path


def test_compressed_clusters_read_identically(start_blockd, tmp_path):
    require("qemu-img", "qemu-io", "nbdinfo")
    image = compressed_image(tmp_path / "c.qcow")
    assert any(e[2][1] for e in qemu_map(image, "qcow"))
    daemon = start_blockd(args=export_args(image, "qcow", writable=False))
    assert qemu_img("compare", "-f", "qcow", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image, "qcow")


def test_writes_over_compressed_clusters(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = compressed_image(tmp_path / "c.qcow")
    raw = tmp_path / "ref.raw"
    qemu_img("convert", "-f", "qcow", "-O", "raw", str(image), str(raw))
    ops = ["write -P 0x61 1000 100", "write -P 0x62 8k 4k", "write -P 0x63 1M 70000"]
    daemon = start_blockd(args=export_args(image, "qcow", writable=True))
    subprocess.run(["qemu-io", "-f", "raw", *sum((["-c", op] for op in ops), []), daemon.uri()], check=True, capture_output=True)
    assert daemon.stop() == 0
    qemu_io(raw, "raw", *ops)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow", str(raw), str(image)).returncode == 0


def test_backing_chain_reads_through_layers(start_blockd, tmp_path):
    require("qemu-img", "qemu-io", "nbdinfo")
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(4 << 20))
    mid = make(tmp_path / "mid.qcow", size=6 << 20, backing=base.name, backing_fmt="raw")
    qemu_io(mid, "qcow", "write -P 0x11 1M 100k", "write -z 2M 64k")
    top = make(tmp_path / "top.qcow", size=0, backing=mid.name, backing_fmt="qcow")
    qemu_io(top, "qcow", "write -P 0x22 1050k 10k", "write -P 0x33 5M 4k")
    daemon = start_blockd(args=export_args(top, "qcow", writable=False))
    assert qemu_img("compare", "-f", "qcow", str(top), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(top, "qcow")


@pytest.mark.parametrize("with_backing", [False, True])
def test_blockd_writes_read_identically(start_blockd, tmp_path, with_backing):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(2 << 20))
    image = make(tmp_path / "w.qcow", backing=base.name if with_backing else None, backing_fmt="raw")
    reference = tmp_path / "ref.raw"
    shutil.copy(base, reference) if with_backing else reference.write_bytes(b"")
    os.truncate(reference, SIZE)
    ops = PATTERN + ["write -P 0x44 4095 2", "write -P 0x55 1M 4k", "write -z 20k 8k", "write -P 0x66 7M 1M"]
    daemon = start_blockd(args=export_args(image, "qcow", writable=True))
    subprocess.run(["qemu-io", "-f", "raw", *sum((["-c", op] for op in ops), []), daemon.uri()], check=True, capture_output=True)
    qemu_io(reference, "raw", *ops)
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    assert daemon.stop() == 0
    assert qemu_img("compare", "-f", "raw", "-F", "qcow", str(reference), str(image)).returncode == 0
    # The same writes through QEMU lay the file out byte for byte alike.
    theirs = make(tmp_path / "theirs.qcow", backing=base.name if with_backing else None, backing_fmt="raw")
    qemu_io(theirs, "qcow", *ops)
    assert open(theirs, "rb").read() == open(image, "rb").read()


@pytest.mark.parametrize("options", ["", "backing_file=base.raw,backing_fmt=raw", "backing_file=base.qcow,backing_fmt=qcow"])
def test_blockimg_create_and_info_match_qemu_img(tmp_path, options):
    require("qemu-img")
    (tmp_path / "base.raw").write_bytes(b"\0" * (1 << 20))
    make(tmp_path / "base.qcow", size=3 << 20)
    ours, theirs = tmp_path / "ours.qcow", tmp_path / "theirs.qcow"
    size = [] if "backing" in options else ["5M"]
    o = ["-o", options] if options else []
    mine = blockimg("create", "-f", "qcow", *o, str(ours), *size).stdout.replace("ours.qcow", "X")
    ref = qemu_img("create", "-f", "qcow", *o, str(theirs), *size).stdout.replace("theirs.qcow", "X")
    assert mine.strip() == ref.strip()
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert info_json(blockimg, ours) == info_json(qemu_img, ours)
    assert blockimg("check", str(ours), ok=False).returncode == qemu_img("check", str(ours), ok=False).returncode == 63


def test_convert_round_trips(tmp_path):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(bytes(bytearray(os.urandom(3 << 20)) + b"\0" * (2 << 20) + bytes([7]) * (1 << 20)))
    image = tmp_path / "c.qcow"
    back = tmp_path / "back.raw"
    blockimg("convert", "-f", "raw", "-O", "qcow", str(raw), str(image))
    assert qemu_img("compare", "-f", "raw", "-F", "qcow", str(raw), str(image)).returncode == 0
    blockimg("convert", "-f", "qcow", "-O", "raw", str(image), str(back))
    assert back.read_bytes() == raw.read_bytes()


def _corrupt(path, offset, value: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


CATALOGUE = {
    "bad magic": lambda p: _corrupt(p, 0, b"QFI\0"),
    "version 3": lambda p: _corrupt(p, 4, struct.pack(">I", 3)),
    "truncated header": lambda p: os.truncate(p, 40),
    "cluster bits absurd": lambda p: _corrupt(p, 32, bytes([40])),
    "cluster bits too small": lambda p: _corrupt(p, 32, bytes([4])),
    "l2 bits absurd": lambda p: _corrupt(p, 33, bytes([30])),
    "size absurd": lambda p: _corrupt(p, 24, struct.pack(">Q", 1 << 62)),
    "L1 past the end": lambda p: _corrupt(p, 40, struct.pack(">Q", 1 << 40)),
    "encrypted": lambda p: _corrupt(p, 36, struct.pack(">I", 1)),
    "unknown cipher": lambda p: _corrupt(p, 36, struct.pack(">I", 7)),
    "backing name too long": lambda p: _corrupt(p, 8, struct.pack(">QI", 48, 5000)),
}


# QEMU opens these and reads what lies past the end of the file as zeroes; blockd refuses them.
LENIENT_QEMU = {"L1 past the end", "truncated header"}


def test_corrupt_images_are_refused(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    good = make(tmp_path / "good.qcow")
    qemu_io(good, "qcow", "write -P 0x5a 0 1M")
    monitor = tmp_path / "qmp.sock"
    daemon = start_blockd(args=export_args(good, "qcow", writable=False) + monitor_args(monitor))
    with QMP(monitor) as qmp:
        for index, name in enumerate(sorted(CATALOGUE)):
            bad = make(tmp_path / f"bad{index}.qcow")
            CATALOGUE[name](bad)
            if name not in LENIENT_QEMU:
                assert qemu_io(bad, "qcow", "read 0 512", ok=False).returncode != 0, f"QEMU refuses too: {name}"
            error = qmp.error("blockdev-add", {"driver": "qcow", "node-name": f"bad{index}", "read-only": True,
                                               "file": {"driver": "file", "filename": str(bad), "read-only": True}})
            assert error["desc"], name
        assert qemu_img("compare", "-f", "qcow", str(good), daemon.uri()).returncode == 0


def test_table_entries_past_the_end_fail_with_eio(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "e.qcow")
    qemu_io(image, "qcow", "write -P 1 0 8k", "write -P 2 3M 4k")
    l1 = struct.unpack_from(">Q", open(image, "rb").read(48), 40)[0]
    with open(image, "r+b") as f:
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l2 + 8)
        f.write(struct.pack(">Q", 1 << 40))
    daemon = start_blockd(args=export_args(image, "qcow", writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(4096, 0) == b"\1" * 4096
    with pytest.raises(nbd.Error):
        h.pread(4096, 4096)
    assert h.pread(4096, 3 << 20) == b"\2" * 4096, "other clusters still read"
    h.shutdown()


def test_fio_verify_through_the_export(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = make(tmp_path / "v.qcow")
    daemon = start_blockd(args=export_args(image, "qcow", writable=True))
    fio_verify(daemon.uri())
    dump = tmp_path / "dump.raw"
    qemu_img("convert", "-f", "raw", "-O", "raw", daemon.uri(), str(dump))
    assert daemon.stop() == 0
    assert qemu_img("compare", "-f", "raw", "-F", "qcow", str(dump), str(image)).returncode == 0, "QEMU reads what fio wrote"
