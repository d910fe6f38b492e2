"""The parallels driver against qemu-img and qemu-io: images QEMU writes read identically through a
blockd export with the same allocation map, images blockd writes are laid out byte for byte as
QEMU lays them out and pass `qemu-img check`, `in_use` is set while open read-write (and an image
left in use is refused read-write, as QEMU refuses it), blockimg create/info/check/convert answer
as qemu-img does, and corrupt images are refused or fail with EIO while another export keeps serving."""
import os
import shutil
import signal
import struct
import subprocess

import nbd
import pytest

from conftest import require
from fmt1_helpers import (blockimg, fio_verify, check_json, export_args, info_json, nbd_map, qemu_img, qemu_io, qemu_map)
from qmp_client import QMP, monitor_args

SIZE = 8 << 20
PATTERN = ["write -P 0xab 0 64k", "write -P 0x11 100k 3000", "write -z 1M 128k", "write -P 0x22 3M 4k",
           "write -P 0x33 8000k 192k", "write -P 0x44 2500k 100k"]


def make(path, options: str = "", size: int = SIZE):
    qemu_img("create", "-f", "parallels", *(["-o", options] if options else []), str(path), str(size))
    return path


@pytest.mark.parametrize("options", ["", "cluster_size=64k", "cluster_size=4k"])
def test_images_qemu_writes_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io", "nbdinfo")
    image = make(tmp_path / "d.hds", options)
    qemu_io(image, "parallels", *PATTERN)
    daemon = start_blockd(args=export_args(image, "parallels", writable=False))
    assert qemu_img("compare", "-f", "parallels", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image, "parallels")


@pytest.mark.parametrize("options", ["", "cluster_size=64k"])
def test_blockd_writes_match_qemu_and_pass_check(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "w.hds", options)
    theirs = make(tmp_path / "theirs.hds", options)
    reference = tmp_path / "ref.raw"
    reference.write_bytes(b"")
    os.truncate(reference, SIZE)
    ops = PATTERN + ["write -P 0x44 4095 2", "write -P 0x55 1M 4k", "write -P 0x66 7M 1M"]
    daemon = start_blockd(args=export_args(image, "parallels", writable=True))
    head = open(image, "rb").read(64)
    assert struct.unpack_from("<I", head, 44)[0] == 0x746F6E59, "in_use is set while open read-write"
    subprocess.run(["qemu-io", "-f", "raw", *sum((["-c", op] for op in ops), []), daemon.uri()], check=True, capture_output=True)
    qemu_io(reference, "raw", *ops)
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    assert daemon.stop() == 0
    qemu_io(theirs, "parallels", *ops)
    assert open(image, "rb").read() == open(theirs, "rb").read(), "laid out as QEMU lays it out"
    code, report = check_json(qemu_img, image)
    assert code == 0 and report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report


def test_image_left_in_use_is_refused_read_write(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "k.hds", "cluster_size=64k")
    daemon = start_blockd(args=export_args(image, "parallels", writable=True))
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 100k", "-c", "flush", daemon.uri()], check=True,
                   capture_output=True)
    daemon.check_exit = False
    daemon.stop(sig=signal.SIGKILL)
    assert qemu_io(image, "parallels", "read 0 512", ok=False).returncode != 0
    monitor = tmp_path / "qmp.sock"
    ro = start_blockd(args=export_args(image, "parallels", writable=False) + monitor_args(monitor))
    assert qemu_img("compare", "-f", "parallels", "-U", str(image), ro.uri()).returncode == 0
    with QMP(monitor) as qmp:
        error = qmp.error("blockdev-add", {"driver": "parallels", "node-name": "rw",
                                           "file": {"driver": "file", "filename": str(image)}})
        assert "not closed correctly" in error["desc"]
    assert ro.stop() == 0
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    copy = tmp_path / "copy.hds"
    shutil.copy(image, copy)
    assert check_json(blockimg, image, "-r", "all") == check_json(qemu_img, copy, "-r", "all")
    assert open(image, "rb").read() == open(copy, "rb").read()
    qemu_io(image, "parallels", "read -P 0x77 0 100k")


@pytest.mark.parametrize("options", ["", "cluster_size=64k", "cluster_size=4096", "preallocation=falloc",
                                     "cluster_size=2M,preallocation=off"])
def test_blockimg_create_matches_qemu_img(tmp_path, options):
    require("qemu-img")
    ours, theirs = tmp_path / "ours.hds", tmp_path / "theirs.hds"
    o = ["-o", options] if options else []
    mine = blockimg("create", "-f", "parallels", *o, str(ours), "5M").stdout.replace("ours.hds", "X")
    ref = qemu_img("create", "-f", "parallels", *o, str(theirs), "5M").stdout.replace("theirs.hds", "X")
    assert mine.strip() == ref.strip()
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert info_json(blockimg, ours) == info_json(qemu_img, ours)
    assert check_json(blockimg, ours) == check_json(qemu_img, ours)


def test_check_matches_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "c.hds", "cluster_size=64k")
    qemu_io(image, "parallels", *PATTERN, "write -P 1 6M 4k", "write -P 2 5M 4k")
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    with open(image, "ab") as f:
        f.write(b"\0" * 100000)
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    with open(image, "r+b") as f:
        f.seek(64 + 4 * 3)
        f.write(struct.pack("<I", 100000))
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    copy = tmp_path / "copy.hds"
    shutil.copy(image, copy)
    assert check_json(blockimg, image, "-r", "all") == check_json(qemu_img, copy, "-r", "all")
    # QEMU 7.2 leaves its copy grown to where the cleared entry pointed; blockd's ends at the data.
    assert os.path.getsize(image) == 851968
    qemu_io(image, "parallels", "read -P 0x22 3M 4k")


def test_convert_round_trips(tmp_path):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(bytes(bytearray(os.urandom(3 << 20)) + b"\0" * (2 << 20) + bytes([7]) * (1 << 20)))
    image = tmp_path / "c.hds"
    back = tmp_path / "back.raw"
    blockimg("convert", "-f", "raw", "-O", "parallels", str(raw), str(image))
    assert qemu_img("compare", "-f", "raw", "-F", "parallels", str(raw), str(image)).returncode == 0
    assert check_json(qemu_img, image)[0] == 0
    blockimg("convert", "-f", "parallels", "-O", "raw", str(image), str(back))
    assert back.read_bytes() == raw.read_bytes()


def _corrupt(path, offset, value: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


CATALOGUE = {
    "bad magic": lambda p: _corrupt(p, 0, b"WithoutFreeSpacX"),
    "version 3": lambda p: _corrupt(p, 16, struct.pack("<I", 3)),
    "truncated header": lambda p: os.truncate(p, 40),
    "zero cluster size": lambda p: _corrupt(p, 28, struct.pack("<I", 0)),
    "absurd cluster size": lambda p: _corrupt(p, 28, struct.pack("<I", 1 << 30)),
    "BAT past the end": lambda p: _corrupt(p, 32, struct.pack("<I", 1 << 28)),
    "catalog too large": lambda p: _corrupt(p, 32, struct.pack("<I", 0xffffffff)),
}


def test_corrupt_images_are_refused(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    good = make(tmp_path / "good.hds")
    qemu_io(good, "parallels", "write -P 0x5a 0 1M")
    monitor = tmp_path / "qmp.sock"
    daemon = start_blockd(args=export_args(good, "parallels", writable=False) + monitor_args(monitor))
    with QMP(monitor) as qmp:
        for index, name in enumerate(sorted(CATALOGUE)):
            bad = make(tmp_path / f"bad{index}.hds")
            CATALOGUE[name](bad)
            error = qmp.error("blockdev-add", {"driver": "parallels", "node-name": f"bad{index}", "read-only": True,
                                               "file": {"driver": "file", "filename": str(bad), "read-only": True}})
            assert error["desc"], name
        assert qemu_img("compare", "-f", "parallels", str(good), daemon.uri()).returncode == 0


def test_bat_entries_past_the_end_fail_with_eio(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "e.hds", "cluster_size=4k")
    qemu_io(image, "parallels", "write -P 1 0 8k", "write -P 2 3M 4k")
    with open(image, "r+b") as f:
        f.seek(64 + 4)
        f.write(struct.pack("<I", 1 << 20))
    daemon = start_blockd(args=export_args(image, "parallels", writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(4096, 0) == b"\1" * 4096
    with pytest.raises(nbd.Error):
        h.pread(4096, 4096)
    assert h.pread(4096, 3 << 20) == b"\2" * 4096, "other clusters still read"
    h.shutdown()


def test_fio_verify_through_the_export(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = make(tmp_path / "v.parallels", "cluster_size=64k")
    daemon = start_blockd(args=export_args(image, "parallels", writable=True))
    fio_verify(daemon.uri())
    dump = tmp_path / "dump.raw"
    qemu_img("convert", "-f", "raw", "-O", "raw", daemon.uri(), str(dump))
    assert daemon.stop() == 0
    assert qemu_img("compare", "-f", "raw", "-F", "parallels", str(dump), str(image)).returncode == 0, "QEMU reads what fio wrote"
    code, report = check_json(qemu_img, image)
    assert code == 0, report


def test_convert_between_formats_round_trips(tmp_path):
    """raw → qed → qcow → parallels → qcow2 → qed → raw with blockimg, byte for byte, each step
    read by qemu-img too."""
    require("qemu-img")
    raw = tmp_path / "src.raw"
    raw.write_bytes(bytes(bytearray(os.urandom(1 << 20)) + b"\0" * (1 << 20) + bytes([9]) * 700000 + b"\0" * 348576))
    chain = ["qed", "qcow", "parallels", "qcow2", "qed"]
    previous, previous_fmt = raw, "raw"
    for index, fmt in enumerate(chain):
        target = tmp_path / f"step{index}.{fmt}"
        blockimg("convert", "-f", previous_fmt, "-O", fmt, str(previous), str(target))
        assert qemu_img("compare", "-f", "raw", "-F", fmt, str(raw), str(target)).returncode == 0, fmt
        previous, previous_fmt = target, fmt
    back = tmp_path / "back.raw"
    blockimg("convert", "-f", previous_fmt, "-O", "raw", str(previous), str(back))
    assert back.read_bytes() == raw.read_bytes()
