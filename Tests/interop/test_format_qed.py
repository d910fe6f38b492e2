"""The qed driver against qemu-img and qemu-io: images QEMU writes read identically through a blockd
export (data and allocation map), images blockd writes read identically in QEMU and pass
`qemu-img check`, QED_F_NEED_CHECK is set while open read-write and an image left dirty is checked
and repaired at open as QEMU repairs it, blockimg create/info/check/convert answer as qemu-img does,
and corrupt images are refused or fail with EIO while another export keeps serving."""
import os
import shutil
import signal
import struct
import subprocess

import nbd
import pytest

from conftest import require
from qmp_client import QMP, monitor_args
from fmt1_helpers import (blockimg, fio_verify, check_json, export_args, info_json, nbd_map, qemu_img, qemu_io, qemu_map)

SIZE = 8 << 20
PATTERN = ["write -P 0xab 0 64k", "write -P 0x11 100k 3000", "write -z 1M 128k", "write -P 0x22 3M 4k",
           "write -P 0x33 8000k 192k", "write -z 2500k 100k"]


def need_check(image) -> bool:
    """QED_F_NEED_CHECK in the header (qemu-img info does not show it: its dirty-flag stays false)."""
    return bool(struct.unpack_from("<Q", open(image, "rb").read(64), 16)[0] & 2)


def make(path, options: str = "", size: int = SIZE, backing=None, backing_fmt=None):
    args = ["create", "-f", "qed"]
    if options:
        args += ["-o", options]
    if backing:
        args += ["-b", str(backing), "-F", backing_fmt]
    qemu_img(*args, str(path), *([str(size)] if size else []))
    return path


@pytest.mark.parametrize("options", ["", "cluster_size=4096,table_size=2", "cluster_size=1M,table_size=16",
                                     "cluster_size=16384,table_size=2"])
def test_images_qemu_writes_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io", "nbdinfo")
    image = make(tmp_path / "d.qed", options)
    qemu_io(image, "qed", *PATTERN)
    daemon = start_blockd(args=export_args(image, "qed", writable=False))
    assert qemu_img("compare", "-f", "qed", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image, "qed")


def test_backing_chain_reads_through_layers(start_blockd, tmp_path):
    require("qemu-img", "qemu-io", "nbdinfo")
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(4 << 20))
    mid = make(tmp_path / "mid.qed", size=6 << 20, backing=base.name, backing_fmt="raw")
    qemu_io(mid, "qed", "write -P 0x11 1M 100k", "write -z 2M 64k")
    top = make(tmp_path / "top.qed", size=0, backing=mid.name, backing_fmt="qed")
    qemu_io(top, "qed", "write -P 0x22 1050k 10k", "write -P 0x33 5M 4k")
    daemon = start_blockd(args=export_args(top, "qed", writable=False))
    assert qemu_img("compare", "-f", "qed", str(top), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(top, "qed")


def test_blockd_writes_read_identically_and_pass_check(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(2 << 20))
    image = make(tmp_path / "w.qed", "cluster_size=4096", size=SIZE, backing=base.name, backing_fmt="raw")
    reference = tmp_path / "ref.raw"
    shutil.copy(base, reference)
    os.truncate(reference, SIZE)
    ops = PATTERN + ["write -P 0x44 4095 2", "write -P 0x55 1M 4k", "write -z 20k 8k", "write -z 300k 5000",
                     "write -P 0x66 7M 1M", "discard 7M 64k"]
    daemon = start_blockd(args=export_args(image, "qed", writable=True))
    assert need_check(image), "QED_F_NEED_CHECK is set while blockd has the image open read-write"
    run_ops = [op for op in ops if not op.startswith("discard")]
    subprocess.run(["qemu-io", "-f", "raw", *sum((["-c", op] for op in run_ops), []), daemon.uri()], check=True,
                   capture_output=True)
    qemu_io(reference, "raw", *run_ops)
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    assert daemon.stop() == 0
    assert qemu_img("compare", "-f", "raw", "-F", "qed", str(reference), str(image)).returncode == 0
    code, report = check_json(qemu_img, image)
    assert code == 0 and report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    assert not need_check(image), "the flag is cleared at a clean close"


def test_unclean_shutdown_is_checked_at_open(start_blockd, tmp_path):
    """A kill leaves the flag set; the next read-write open checks the image (as QEMU does) and the
    data that was flushed is all there."""
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "k.qed", "cluster_size=4096")
    daemon = start_blockd(args=export_args(image, "qed", writable=True))
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 100k", "-c", "flush", daemon.uri()], check=True,
                   capture_output=True)
    daemon.check_exit = False
    daemon.stop(sig=signal.SIGKILL)
    assert need_check(image), "a kill leaves the flag set"
    # Damage that the check repairs: an L2 entry past the end of the file.
    l1 = struct.unpack_from("<Q", open(image, "rb").read(64), 40)[0]
    with open(image, "r+b") as f:
        f.seek(l1)
        l2 = struct.unpack("<Q", f.read(8))[0]
        f.seek(l2 + 8 * 30)
        f.write(struct.pack("<Q", 1 << 40))
    qemu_copy = tmp_path / "q.qed"
    shutil.copy(image, qemu_copy)
    qemu_io(qemu_copy, "qed", "read -P 0x77 0 100k")  # QEMU's open repairs its copy
    daemon = start_blockd(args=export_args(image, "qed", writable=True))
    assert daemon.stop() == 0
    assert open(image, "rb").read() == open(qemu_copy, "rb").read(), "blockd repairs as QEMU repairs"
    assert not need_check(image)
    code, report = check_json(qemu_img, image)
    assert code == 0 and report.get("corruptions", 0) == 0, report
    qemu_io(image, "qed", "read -P 0x77 0 100k", "read -P 0 120k 4k")


@pytest.mark.parametrize("options", ["", "cluster_size=4096", "cluster_size=4096,table_size=2", "table_size=16",
                                     "cluster_size=65536,table_size=4", "backing_file=base.raw,backing_fmt=raw",
                                     "backing_file=base.qed,backing_fmt=qed,cluster_size=1M"])
def test_blockimg_create_matches_qemu_img(tmp_path, options):
    require("qemu-img")
    (tmp_path / "base.raw").write_bytes(b"\0" * (1 << 20))
    make(tmp_path / "base.qed", size=3 << 20)
    ours, theirs = tmp_path / "ours.qed", tmp_path / "theirs.qed"
    size = [] if "backing" in options else ["5M"]
    o = ["-o", options] if options else []
    mine = blockimg("create", "-f", "qed", *o, str(ours), *size).stdout.replace("ours.qed", "X")
    ref = qemu_img("create", "-f", "qed", *o, str(theirs), *size).stdout.replace("theirs.qed", "X")
    assert mine.strip() == ref.strip()
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert info_json(blockimg, ours) == {**info_json(qemu_img, ours)}
    code, report = check_json(qemu_img, ours)
    assert code == 0, report


def test_blockimg_create_refuses_what_qemu_refuses(tmp_path):
    for options, size in [("cluster_size=1024", "1M"), ("table_size=3", "1M"), ("table_size=32", "1M"),
                          ("cluster_size=4096,table_size=1", "3G")]:
        ours = blockimg("create", "-f", "qed", "-o", options, str(tmp_path / "x.qed"), size, ok=False)
        theirs = qemu_img("create", "-f", "qed", "-o", options, str(tmp_path / "y.qed"), size, ok=False)
        assert ours.returncode != 0 and theirs.returncode != 0
        assert theirs.stderr.strip().split(": ")[-1] in ours.stderr, (ours.stderr, theirs.stderr)
        assert not (tmp_path / "x.qed").exists()


def test_blockimg_info_and_check_match_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    image = make(tmp_path / "i.qed", "cluster_size=4096", backing=base.name, backing_fmt="raw", size=SIZE)
    qemu_io(image, "qed", *PATTERN, "write -P 1 12k 4k", "write -P 2 8k 4k")
    assert info_json(blockimg, image) == info_json(qemu_img, image)
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    # A leaked cluster (the file grew past what the tables use) and an invalid L2 entry.
    with open(image, "r+b") as f:
        f.seek(0, 2)
        f.write(b"\0" * 8192)
    assert check_json(blockimg, image) == check_json(qemu_img, image)
    l1 = struct.unpack_from("<Q", open(image, "rb").read(64), 40)[0]
    with open(image, "r+b") as f:
        f.seek(l1)
        l2 = struct.unpack("<Q", f.read(8))[0]
        f.seek(l2 + 8 * 5)
        f.write(struct.pack("<Q", 12345 * 4096 * 1000))
    ours, theirs = check_json(blockimg, image), check_json(qemu_img, image)
    assert ours[0] == theirs[0] == 2
    assert ours[1]["corruptions"] == theirs[1]["corruptions"] == 1
    copy = tmp_path / "copy.qed"
    shutil.copy(image, copy)
    assert check_json(blockimg, image, "-r", "all")[1].get("corruptions-fixed") == check_json(qemu_img, copy, "-r", "all")[1].get("corruptions-fixed")
    assert open(image, "rb").read() == open(copy, "rb").read()


def test_convert_round_trips(tmp_path):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    data = bytearray(os.urandom(3 << 20)) + b"\0" * (2 << 20) + bytes([7]) * (1 << 20)
    raw.write_bytes(bytes(data))
    image = tmp_path / "c.qed"
    back = tmp_path / "back.raw"
    blockimg("convert", "-f", "raw", "-O", "qed", str(raw), str(image))
    assert qemu_img("compare", "-f", "raw", "-F", "qed", str(raw), str(image)).returncode == 0
    assert check_json(qemu_img, image)[0] == 0
    blockimg("convert", "-f", "qed", "-O", "raw", str(image), str(back))
    assert back.read_bytes() == raw.read_bytes()


def _corrupt(path, offset, value: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


CATALOGUE = {
    "bad magic": lambda p: _corrupt(p, 0, b"QEX\0"),
    "truncated header": lambda p: os.truncate(p, 40),
    "truncated L1": lambda p: os.truncate(p, 65536 + 100),
    "cluster size not a power of two": lambda p: _corrupt(p, 4, struct.pack("<I", 65537)),
    "cluster size absurd": lambda p: _corrupt(p, 4, struct.pack("<I", 1 << 31)),
    "table size absurd": lambda p: _corrupt(p, 8, struct.pack("<I", 1 << 20)),
    "image size absurd": lambda p: _corrupt(p, 48, struct.pack("<Q", 1 << 62)),
    "image size unaligned": lambda p: _corrupt(p, 48, struct.pack("<Q", 1000)),
    "L1 offset past the end": lambda p: _corrupt(p, 40, struct.pack("<Q", 1 << 40)),
    "L1 offset unaligned": lambda p: _corrupt(p, 40, struct.pack("<Q", 65536 + 8)),
    "unknown feature": lambda p: _corrupt(p, 16, struct.pack("<Q", 1 << 20)),
    "backing name outside the header": lambda p: _corrupt(p, 16, struct.pack("<Q", 1) + b"\0" * 32 + struct.pack("<II", 65530, 100)),
}


def test_corrupt_images_are_refused(start_blockd, tmp_path):
    """Each damaged image is refused by blockdev-add with a message, while another export keeps serving."""
    require("qemu-img", "qemu-io")
    good = make(tmp_path / "good.qed")
    qemu_io(good, "qed", "write -P 0x5a 0 1M")
    monitor = tmp_path / "qmp.sock"
    daemon = start_blockd(args=export_args(good, "qed", writable=False) + monitor_args(monitor))
    with QMP(monitor) as qmp:
        for index, name in enumerate(sorted(CATALOGUE)):
            bad = make(tmp_path / f"bad{index}.qed")
            CATALOGUE[name](bad)
            assert qemu_io(bad, "qed", "read 0 512", ok=False).returncode != 0, f"QEMU refuses too: {name}"
            error = qmp.error("blockdev-add", {"driver": "qed", "node-name": f"bad{index}", "read-only": True,
                                               "file": {"driver": "file", "filename": str(bad), "read-only": True}})
            assert error["desc"], name
            assert qemu_img("compare", "-f", "qed", str(good), daemon.uri()).returncode == 0


def test_table_entries_past_the_end_fail_with_eio(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = make(tmp_path / "e.qed", "cluster_size=4096")
    qemu_io(image, "qed", "write -P 1 0 8k", "write -P 2 2M 4k")
    l1 = struct.unpack_from("<Q", open(image, "rb").read(64), 40)[0]
    with open(image, "r+b") as f:
        f.seek(l1)
        l2 = struct.unpack("<Q", f.read(8))[0]
        f.seek(l2 + 8)
        f.write(struct.pack("<Q", 1 << 40))
    daemon = start_blockd(args=export_args(image, "qed", writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(4096, 0) == b"\1" * 4096
    with pytest.raises(nbd.Error) as failure:
        h.pread(4096, 4096)
    assert failure.value.errno in (5, None) or "Input/output" in str(failure.value)
    assert h.pread(4096, 2 << 20) == b"\2" * 4096, "other clusters still read"
    h.shutdown()


def test_backing_loop_is_refused(tmp_path):
    require("qemu-img")
    image = make(tmp_path / "loop.qed", size=1 << 20)
    other = make(tmp_path / "other.qed", size=1 << 20, backing=image.name, backing_fmt="qed")
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qed", "-b", other.name, "-F", "qed", str(image)], check=True)
    proc = subprocess.run([os.environ.get("BLOCKD", ""), "--blockdev", f"driver=file,node-name=f,filename={image},read-only=on",
                           "--blockdev", "driver=qed,node-name=d,file=f,read-only=on"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "loop" in proc.stderr, proc.stderr


def test_fio_verify_through_the_export(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = make(tmp_path / "v.qed", "cluster_size=4096")
    daemon = start_blockd(args=export_args(image, "qed", writable=True))
    fio_verify(daemon.uri())
    dump = tmp_path / "dump.raw"
    qemu_img("convert", "-f", "raw", "-O", "raw", daemon.uri(), str(dump))
    assert daemon.stop() == 0
    assert qemu_img("compare", "-f", "raw", "-F", "qed", str(dump), str(image)).returncode == 0, "QEMU reads what fio wrote"
    code, report = check_json(qemu_img, image)
    assert code == 0, report
