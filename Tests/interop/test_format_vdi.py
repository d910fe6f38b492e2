"""The vdi driver against qemu-img and qemu-io: dynamic and static images QEMU writes read
identically through a blockd export with the same allocation map, blockd's writes read back by
qemu-img and pass its check, blockimg create/info/check/convert match qemu-img, and corrupt images
are refused or fail with EIO while another export keeps serving."""
import json
import struct
import zlib

import nbd
import pytest

from conftest import require
from fmt2_helpers import (compare_create, fio_verify_round_trip, convert_round_trip, corrupt, export_args, fill_with_qemu_io, nbd_map,
                          qemu_img, qemu_io_file, qemu_map_as_nbd, random_nbd_writes)
from test_blockimg import blockimg

SIZE = 6 << 20


@pytest.mark.parametrize("options", ["static=off", "static=on"])
def test_qemu_written_images_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", "-o", options, str(image), str(SIZE))
    fill_with_qemu_io("vdi", image, SIZE, seed=zlib.crc32(options.encode()))
    daemon = start_blockd(args=export_args("vdi", image, writable=False))
    assert qemu_img("compare", "-f", "vdi", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map_as_nbd("vdi", image)


@pytest.mark.parametrize("options", ["static=off", "static=on"])
def test_blockd_writes_read_back_by_qemu(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vdi"
    reference = tmp_path / "ref.raw"
    qemu_img("create", "-f", "vdi", "-o", options, str(image), str(SIZE))
    fill_with_qemu_io("vdi", image, SIZE, seed=7)
    qemu_img("convert", "-f", "vdi", "-O", "raw", str(image), str(reference))
    daemon = start_blockd(args=export_args("vdi", image, writable=True))
    random_nbd_writes(daemon.uri(), reference, SIZE, seed=zlib.crc32(options.encode()))
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    daemon.stop()
    assert qemu_img("compare", "-f", "vdi", "-F", "raw", str(image), str(reference)).returncode == 0
    report = json.loads(qemu_img("check", "--output=json", str(image)).stdout)
    assert report.get("corruptions", 0) == 0 and report["check-errors"] == 0
    # qemu-io writes on after blockd: the allocation count blockd stored is right.
    qemu_io_file("vdi", image, "write -P 0x5a 0 1M")
    assert qemu_img("check", str(image)).returncode == 0


@pytest.mark.parametrize("options", ["", "static=on", "static=off,preallocation=off", "static=on,preallocation=full"])
def test_create_matches_qemu_img(tmp_path, options):
    require("qemu-img")
    ours, theirs = compare_create(tmp_path, "vdi", options)
    # The same header and block map, but for the random UUIDs.
    a, b = ours.read_bytes()[:4096], theirs.read_bytes()[:4096]
    assert a[:392] == b[:392] and a[424:] == b[424:]
    assert qemu_img("check", str(ours)).returncode == 0


def test_create_refusals(tmp_path):
    bad = blockimg("create", "-f", "vdi", "-o", "static=maybe", str(tmp_path / "a.vdi"), "1M", ok=False)
    assert bad.returncode == 1 and "Parameter 'static' expects 'on' or 'off'" in bad.stderr
    big = blockimg("create", "-f", "vdi", str(tmp_path / "b.vdi"), "2P", ok=False)
    assert big.returncode == 1 and "Unsupported VDI image size" in big.stderr
    assert not (tmp_path / "b.vdi").exists()


def test_info_check_and_convert(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", str(image), str(SIZE))
    fill_with_qemu_io("vdi", image, SIZE, seed=3)
    ours = json.loads(blockimg("info", "--output=json", str(image)).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    for info in (ours, theirs):
        info.pop("actual-size")
    assert ours == theirs
    assert json.loads(blockimg("check", "--output=json", str(image)).stdout) == \
        json.loads(qemu_img("check", "--output=json", str(image)).stdout)
    ours, theirs = blockimg("check", "-r", "all", str(image), ok=False), qemu_img("check", "-r", "all", str(image), ok=False)
    assert ours.returncode == theirs.returncode == 63
    assert ours.stderr.split(": ", 1)[1] == theirs.stderr.split(": ", 1)[1]
    converted = convert_round_trip(tmp_path, "vdi", image, "vdi")
    assert qemu_img("check", str(converted)).returncode == 0
    qcow = tmp_path / "x.qcow2"
    qemu_img("convert", "-f", "vdi", "-O", "qcow2", str(image), str(qcow))
    convert_round_trip(tmp_path, "vdi", qcow, "qcow2", "static=on")


def test_check_reports_what_qemu_reports(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", str(image), str(SIZE))
    qemu_io_file("vdi", image, "write -P 1 0 4k", "write -P 2 2M 4k")
    corrupt(image, 0x184, struct.pack("<I", 5))          # blocks_allocated wrong
    corrupt(image, 0x200 + 4 * 4, struct.pack("<I", 1))   # block 4 shares block 1's data
    theirs = qemu_img("check", "--output=json", str(image), ok=False)
    ours = blockimg("check", "--output=json", str(image), ok=False)
    assert ours.returncode == theirs.returncode == 2
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)


def _header_field(offset: int, fmt: str, value: int):
    return lambda image: corrupt(image, offset, struct.pack(fmt, value))


CORRUPTIONS = {
    "bad signature": (_header_field(64, "<I", 0x12345678), "Image not in VDI format (bad signature 12345678)"),
    "bad version": (_header_field(68, "<I", 0x00020000), "unsupported VDI image (version 2.0)"),
    "block size": (_header_field(376, "<I", 4096), "unsupported VDI image (block size 4096 is not 1048576)"),
    "unaligned map": (_header_field(340, "<I", 0x201), "unsupported VDI image (unaligned block map offset 0x201)"),
    "absurd size": (_header_field(368, "<Q", 1 << 62), "Unsupported VDI image size"),
    "map too small": (_header_field(384, "<I", 1), "image bitmap has room for 1048576"),
    "map past the end": (_header_field(340, "<I", 1 << 30), "lies past the end of the file"),
    "parent uuid": (_header_field(440, "<Q", 1), "unsupported VDI image (non-NULL parent UUID)"),
    "truncated": (lambda image: image.write_bytes(image.read_bytes()[:300]), "too short"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_images_are_refused(tmp_path, case):
    require("qemu-img")
    damage, message = CORRUPTIONS[case]
    image = tmp_path / "bad.vdi"
    qemu_img("create", "-f", "vdi", str(image), str(SIZE))
    damage(image)
    info = blockimg("info", "-f", "vdi", str(image), ok=False)
    assert info.returncode != 0 and message in info.stderr, info.stderr
    assert qemu_img("info", "-f", "vdi", str(image), ok=False).returncode != 0 or case in ("map past the end", "truncated")


def test_bad_map_entry_fails_with_eio_and_other_exports_serve(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    good, bad = tmp_path / "good.vdi", tmp_path / "bad.vdi"
    for image in (good, bad):
        qemu_img("create", "-f", "vdi", str(image), str(SIZE))
        qemu_io_file("vdi", image, "write -P 0x11 0 1M")
    corrupt(bad, 0x200, struct.pack("<I", 1000))   # block 0 → block 1000 of 6
    daemon = start_blockd(args=export_args("vdi", good, writable=False, name="good", suffix="0")
                          + export_args("vdi", bad, writable=True, name="bad", suffix="1"), export="good")
    h = nbd.NBD()
    h.connect_uri(daemon.uri("bad"))
    with pytest.raises(nbd.Error) as failure:
        h.pread(4096, 0)
    assert failure.value.errno == "EIO"
    with pytest.raises(nbd.Error):
        h.pwrite(b"x" * 512, 0)
    assert h.pread(4096, 2 << 20) == b"\0" * 4096
    h.shutdown()
    g = nbd.NBD()
    g.connect_uri(daemon.uri("good"))
    assert g.pread(4096, 0) == b"\x11" * 4096
    g.shutdown()


def test_fio_verified_writes(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = tmp_path / "fio.vdi"
    qemu_img("create", "-f", "vdi", "-o", "static=off", str(image), str(8 << 20))
    fio_verify_round_trip(start_blockd, tmp_path, "vdi", image, 8 << 20)
    assert qemu_img("check", str(image)).returncode == 0
