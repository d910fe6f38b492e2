"""The vpc (VHD) driver against qemu-img and qemu-io: dynamic and fixed images QEMU writes read
identically through a blockd export with the same allocation map, blockd's writes read back by
qemu-img (which has no check for vpc: the footer checksum and the table are verified here),
blockimg create/info/convert match qemu-img including the CHS geometry rule and force_size, and
corrupt images are refused with a message."""
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


def footer_ok(image) -> bool:
    """The footer at the end of the file (and its copy at the start of a dynamic image) carries a
    valid checksum: the one's complement of the byte sum without the checksum field."""
    data = image.read_bytes()
    for footer in (data[-512:], data[:512] if data[:8] == b"conectix" else data[-512:]):
        stored = struct.unpack(">I", footer[64:68])[0]
        total = sum(footer[:64]) + sum(footer[68:])
        if footer[:8] != b"conectix" or stored != (~total) & 0xffffffff:
            return False
    return True


def vpc_size(image) -> int:
    return json.loads(qemu_img("info", "-f", "vpc", "--output=json", str(image)).stdout)["virtual-size"]


@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed", "subformat=dynamic,force_size=on"])
def test_qemu_written_images_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", "-o", options, str(image), str(SIZE))
    size = vpc_size(image)
    fill_with_qemu_io("vpc", image, size, seed=zlib.crc32(options.encode()))
    daemon = start_blockd(args=export_args("vpc", image, writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.get_size() == size
    h.shutdown()
    assert qemu_img("compare", "-f", "vpc", str(image), daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map_as_nbd("vpc", image)


@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed"])
def test_blockd_writes_read_back_by_qemu(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhd"
    reference = tmp_path / "ref.raw"
    qemu_img("create", "-f", "vpc", "-o", options, str(image), str(SIZE))
    size = vpc_size(image)
    fill_with_qemu_io("vpc", image, size, seed=11)
    qemu_img("convert", "-f", "vpc", "-O", "raw", str(image), str(reference))
    daemon = start_blockd(args=export_args("vpc", image, writable=True))
    random_nbd_writes(daemon.uri(), reference, size, seed=zlib.crc32(options.encode()))
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    daemon.stop()
    assert qemu_img("compare", "-f", "vpc", "-F", "raw", str(image), str(reference)).returncode == 0
    assert footer_ok(image)
    # qemu-io allocates on after blockd: the end of data and the moved footer blockd left are right.
    qemu_io_file("vpc", image, f"write -P 0x5a {size - 4096} 4096")
    with open(reference, "r+b") as ref:
        ref.seek(size - 4096)
        ref.write(b"\x5a" * 4096)
    assert qemu_img("compare", "-f", "vpc", "-F", "raw", str(image), str(reference)).returncode == 0
    assert footer_ok(image)


@pytest.mark.parametrize("size", ["5M", "1G", "130G"])
@pytest.mark.parametrize("options", ["", "subformat=fixed", "force_size=on", "subformat=fixed,force_size=on",
                                     "subformat=dynamic,force_size=off"])
def test_create_matches_qemu_img(tmp_path, options, size):
    require("qemu-img")
    if "fixed" in options and size != "5M":
        return  # fixed images of that size are just a large sparse file: covered by 5M
    ours, theirs = compare_create(tmp_path, "vpc", options, size)
    a, b = ours.read_bytes(), theirs.read_bytes()
    # Footer fields but the timestamp (24), checksum (64) and UUID (68..84); the dynamic header and table.
    for x, y in ((a[-512:], b[-512:]), (a[:512], b[:512])):
        assert x[:24] == y[:24] and x[28:64] == y[28:64] and x[84:] == y[84:]
    if "fixed" not in options:
        assert a[512:-512] == b[512:-512]
    assert footer_ok(ours)


def test_create_refusals(tmp_path):
    bad = blockimg("create", "-f", "vpc", "-o", "subformat=foo", str(tmp_path / "a.vhd"), "1M", ok=False)
    assert bad.returncode == 1 and "Parameter 'subformat' does not accept value 'foo'" in bad.stderr
    big = blockimg("create", "-f", "vpc", "-o", "force_size=on", str(tmp_path / "b.vhd"), "2041G", ok=False)
    assert big.returncode == 1 and "too large for file format 'vpc'" in big.stderr
    assert not (tmp_path / "b.vhd").exists()


def test_info_and_convert(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", str(image), str(SIZE))
    fill_with_qemu_io("vpc", image, vpc_size(image), seed=3)
    ours = json.loads(blockimg("info", "--output=json", str(image)).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    for info in (ours, theirs):
        info.pop("actual-size")
    assert ours == theirs
    check = blockimg("check", str(image), ok=False)
    assert check.returncode == 63 and "does not support checks" in check.stderr
    converted = convert_round_trip(tmp_path, "vpc", image, "vpc")
    assert footer_ok(converted)
    convert_round_trip(tmp_path, "vpc", image, "vpc", "subformat=fixed")


def _field(offset: int, fmt: str, value: int):
    return lambda image: corrupt(image, offset, struct.pack(fmt, value))


def _footer(offset: int, data: bytes):
    """Changes the footer at the start of a dynamic image and seals it with a valid checksum again."""
    def damage(image):
        footer = bytearray(image.read_bytes()[:512])
        footer[offset:offset + len(data)] = data
        footer[64:68] = b"\0\0\0\0"
        footer[64:68] = struct.pack(">I", (~sum(footer)) & 0xffffffff)
        corrupt(image, 0, bytes(footer))
    return damage


CORRUPTIONS = {
    "bad cookie": (lambda image: corrupt(image, 0, b"xonectix") or corrupt(image, image.stat().st_size - 512, b"xonectix"),
                   "invalid VPC image"),
    "bad sparse cookie": (_field(512, ">Q", 0), "invalid dynamic VHD image"),
    "block size": (_field(512 + 32, ">I", 3000), "Invalid block size 3000"),
    "table too small": (_field(512 + 28, ">I", 1), "Page table too small"),
    "table past the end": (_field(512 + 16, ">Q", 1 << 40), "lies past the end of the file"),
    "block past the end": (_field(1536, ">I", 0x100000), "The image has been truncated"),
    "absurd size": (_footer(40, struct.pack(">QQHBB", 1 << 62, 1 << 62, 0xffff, 16, 255)), "File too large"),
    "bad checksum": (_field(64, ">I", 0), "Incorrect header checksum"),
    "truncated": (lambda image: image.write_bytes(image.read_bytes()[:300]), "File too small for a VHD header"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_images_are_refused(tmp_path, case):
    require("qemu-img")
    damage, message = CORRUPTIONS[case]
    image = tmp_path / "bad.vhd"
    qemu_img("create", "-f", "vpc", str(image), str(SIZE))
    damage(image)
    info = blockimg("info", "-f", "vpc", str(image), ok=False)
    assert info.returncode != 0 and message in info.stderr, info.stderr
    if case not in ("table past the end",):
        assert qemu_img("info", "-f", "vpc", str(image), ok=False).returncode != 0


def test_size_rule_follows_the_creator(tmp_path):
    """CHS geometry for 'qemu' images, the footer's size for Hyper-V's 'win ' ones (QEMU's table)."""
    require("qemu-img")
    image = tmp_path / "hyperv.vhd"
    qemu_img("create", "-f", "vpc", str(image), str(SIZE))
    chs = vpc_size(image)
    assert chs > SIZE
    for app, expected in ((b"qemu", chs), (b"win ", SIZE), (b"d2v ", SIZE), (b"vpc ", chs)):
        _footer(28, app)(image)
        _footer(48, struct.pack(">Q", SIZE))(image)
        ours = json.loads(blockimg("info", "-f", "vpc", "--output=json", str(image)).stdout)["virtual-size"]
        assert ours == vpc_size(image) == expected, app


def test_fio_verified_writes(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = tmp_path / "fio.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=dynamic", str(image), str(8 << 20))
    fio_verify_round_trip(start_blockd, tmp_path, "vpc", image, 8 << 20)
