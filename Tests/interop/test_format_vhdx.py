"""The vhdx driver against qemu-img and qemu-io: dynamic and fixed images (every block size, log
size and block state option) QEMU writes read identically through a blockd export, blockd's writes
read back by qemu-img and pass its check, blockimg create/info/check/convert match qemu-img, an image
with a dirty log (an entry written here per the specification) is replayed by blockd to the same
bytes as `qemu-img check -r all` and refused read-only with QEMU's message, and corrupt images are
refused with a message."""
import json
import os
import shutil
import struct
import uuid
import zlib

import nbd
import pytest

from conftest import require
from fmt2_helpers import (compare_create, fio_verify_round_trip, convert_round_trip, corrupt, export_args, fill_with_qemu_io, nbd_map,
                          qemu_img, qemu_io_file, random_nbd_writes)
from test_blockimg import blockimg

SIZE = 12 << 20
MIB = 1 << 20


def _crc32c_table():
    table = []
    for i in range(256):
        value = i
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return table


CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def sealed(data: bytes, field: int) -> bytes:
    data = bytearray(data)
    data[field:field + 4] = b"\0\0\0\0"
    data[field:field + 4] = struct.pack("<I", crc32c(bytes(data)))
    return bytes(data)


def current_header(image) -> tuple[int, bytes]:
    data = image.read_bytes()
    headers = [(off, data[off:off + 4096]) for off in (64 << 10, 128 << 10)]
    return max(headers, key=lambda h: struct.unpack("<Q", h[1][8:16])[0])


def regions(image) -> dict:
    data = image.read_bytes()[192 << 10:(192 << 10) + 4096]
    out = {}
    for i in range(struct.unpack("<I", data[8:12])[0]):
        entry = data[16 + 32 * i:48 + 32 * i]
        out[str(uuid.UUID(bytes_le=entry[:16])).upper()] = struct.unpack("<QI", entry[16:28])
    return out


BAT_GUID = "2DC27766-F623-4200-9D64-115E9BFD4A08"


def bat_entry(image, block: int) -> int:
    offset = regions(image)[BAT_GUID][0]
    with open(image, "rb") as f:
        f.seek(offset + 8 * block)   # chunk ratio is far above the blocks of these images
        return struct.unpack("<Q", f.read(8))[0]


def make_dirty(image, changes: list, sequence: int = 5) -> None:
    """Writes one log entry per the VHDX specification (header, descriptors, data sectors, CRC-32C)
    at the start of the log and names its GUID in the current header, as a writer that crashed
    before applying it leaves the image. `changes`: ("data", file offset, 4096 bytes) or
    ("zero", file offset, length)."""
    header_offset, header = current_header(image)
    log_length, log_offset = struct.unpack("<IQ", header[68:80])
    log_guid = uuid.uuid4().bytes_le
    size = image.stat().st_size
    data_sectors = [c for c in changes if c[0] == "data"]
    descriptor_area = 64 + 32 * len(changes)
    descriptor_sectors = (descriptor_area + 4095) // 4096
    entry_length = 4096 * (descriptor_sectors + len(data_sectors))
    entry = bytearray(entry_length)
    entry[0:64] = b"loge" + struct.pack("<IIIQII", 0, entry_length, 0, sequence, len(changes), 0) + log_guid \
        + struct.pack("<QQ", size, size)
    at = 64
    sector = descriptor_sectors * 4096
    for change in changes:
        if change[0] == "data":
            _, offset, payload = change
            entry[at:at + 32] = b"desc" + struct.pack("<IQQQ", struct.unpack("<I", payload[4092:])[0],
                                                      struct.unpack("<Q", payload[:8])[0], offset, sequence)
            entry[sector:sector + 4096] = b"data" + struct.pack("<I", sequence >> 32) + payload[8:4092] \
                + struct.pack("<I", sequence & 0xFFFFFFFF)
            sector += 4096
        else:
            _, offset, length = change
            entry[at:at + 32] = b"zero" + struct.pack("<IQQQ", 0, length, offset, sequence)
        at += 32
    assert log_length >= entry_length
    corrupt(image, log_offset, sealed(bytes(entry), 4))
    new_header = bytearray(header)
    new_header[48:64] = log_guid
    corrupt(image, header_offset, sealed(bytes(new_header), 4))


@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed", "block_size=1M,log_size=2M",
                                     "subformat=dynamic,block_state_zero=off,block_size=2M",
                                     "subformat=fixed,block_state_zero=off,block_size=4M"])
def test_qemu_written_images_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", options, str(image), str(SIZE))
    fill_with_qemu_io("vhdx", image, SIZE, seed=zlib.crc32(options.encode()))
    daemon = start_blockd(args=export_args("vhdx", image, writable=False))
    assert qemu_img("compare", "-f", "vhdx", str(image), daemon.uri()).returncode == 0
    # QEMU reports every byte as data; blockd reports the blocks that are not present as holes,
    # which must read as zeroes.
    raw = tmp_path / "flat.raw"
    qemu_img("convert", "-f", "vhdx", "-O", "raw", str(image), str(raw))
    data = raw.read_bytes()
    holes = [(o, n) for o, n, f in nbd_map(daemon.uri()) if f & nbd.STATE_HOLE]
    assert all(data[o:o + n].count(0) == n for o, n in holes)
    if "block_state_zero=off" in options and "fixed" in options:
        assert holes == []


@pytest.mark.parametrize("options", ["subformat=dynamic,block_size=1M", "subformat=fixed,block_state_zero=off,block_size=1M",
                                     "subformat=dynamic,block_state_zero=off"])
def test_blockd_writes_read_back_by_qemu(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhdx"
    reference = tmp_path / "ref.raw"
    qemu_img("create", "-f", "vhdx", "-o", options, str(image), str(SIZE))
    fill_with_qemu_io("vhdx", image, SIZE, seed=13)
    qemu_img("convert", "-f", "vhdx", "-O", "raw", str(image), str(reference))
    daemon = start_blockd(args=export_args("vhdx", image, writable=True))
    random_nbd_writes(daemon.uri(), reference, SIZE, seed=zlib.crc32(options.encode()))
    assert qemu_img("compare", "-f", "raw", str(reference), daemon.uri()).returncode == 0
    daemon.stop()
    assert qemu_img("compare", "-f", "vhdx", "-F", "raw", str(image), str(reference)).returncode == 0
    assert qemu_img("check", str(image)).returncode == 0
    qemu_io_file("vhdx", image, f"write -P 0x5a {SIZE - 8192} 8192")
    with open(reference, "r+b") as ref:
        ref.seek(SIZE - 8192)
        ref.write(b"\x5a" * 8192)
    assert qemu_img("compare", "-f", "vhdx", "-F", "raw", str(image), str(reference)).returncode == 0


@pytest.mark.parametrize("options", ["", "subformat=fixed", "block_size=1M,log_size=2M", "block_state_zero=off",
                                     "subformat=fixed,block_state_zero=off,block_size=2M", "block_size=32M"])
def test_create_matches_qemu_img(tmp_path, options):
    require("qemu-img")
    ours, theirs = compare_create(tmp_path, "vhdx", options, "40M")
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert regions(ours) == regions(theirs)
    # BAT and metadata table identical; headers differ only in GUIDs and sequence numbers.
    bat_offset, bat_length = regions(ours)[BAT_GUID]
    assert a[bat_offset:bat_offset + bat_length] == b[bat_offset:bat_offset + bat_length]
    ha, hb = current_header(ours)[1], current_header(theirs)[1]
    assert ha[64:80] == hb[64:80]
    assert qemu_img("check", str(ours)).returncode == 0


def test_create_refusals(tmp_path):
    for options, message in (("block_size=3M", "Block size must be a power of two"),
                             ("log_size=1536K", "Log size must be a multiple of 1 MB"),
                             ("subformat=foo", "Parameter 'subformat' does not accept value 'foo'")):
        bad = blockimg("create", "-f", "vhdx", "-o", options, str(tmp_path / "a.vhdx"), "8M", ok=False)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "a.vhdx").exists()


def test_info_check_and_convert(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", str(image), str(SIZE))
    fill_with_qemu_io("vhdx", image, SIZE, seed=5)
    ours = json.loads(blockimg("info", "--output=json", str(image)).stdout)
    theirs = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    for info in (ours, theirs):
        info.pop("actual-size")
    assert ours == theirs
    assert json.loads(blockimg("check", "--output=json", str(image)).stdout) == \
        json.loads(qemu_img("check", "--output=json", str(image)).stdout)
    converted = convert_round_trip(tmp_path, "vhdx", image, "vhdx")
    assert qemu_img("check", str(converted)).returncode == 0
    convert_round_trip(tmp_path, "vhdx", image, "vhdx", "subformat=fixed,block_size=2M")


def _dirty_image(tmp_path):
    image = tmp_path / "dirty.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", str(image), str(SIZE))
    qemu_io_file("vhdx", image, "write -P 0x11 0 2M", "write -P 0x22 5M 1M")
    block0 = bat_entry(image, 0) & ~0xFFFFF
    block5 = bat_entry(image, 5) & ~0xFFFFF
    bat_offset = regions(image)[BAT_GUID][0]
    bat_sector = bytearray(image.read_bytes()[bat_offset:bat_offset + 4096])
    bat_sector[8 * 1:8 * 2] = struct.pack("<Q", 2)     # block 1: ZERO state
    payload = bytes(range(256)) * 16
    make_dirty(image, [("data", block0 + 4096, payload), ("zero", block5 + 8192, 16384),
                       ("data", bat_offset, bytes(bat_sector))])
    return image, payload


def test_dirty_log_is_replayed_like_qemu(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image, payload = _dirty_image(tmp_path)
    # Read-only, the log cannot be replayed: QEMU's refusal, from qemu-img, blockimg and blockd.
    message = f"VHDX image file '{image}' opened read-only, but contains a log that needs to be replayed"
    assert message in qemu_img("info", str(image), ok=False).stderr
    assert message in blockimg("info", str(image), ok=False).stderr
    with pytest.raises(RuntimeError) as refused:
        start_blockd(args=export_args("vhdx", image, writable=False))
    assert message in str(refused.value)
    by_qemu, by_blockd = tmp_path / "qemu.vhdx", tmp_path / "blockd.vhdx"
    shutil.copy(image, by_qemu)
    shutil.copy(image, by_blockd)
    repaired = qemu_img("check", "-r", "all", str(by_qemu))
    assert "1 corruptions" in repaired.stdout
    daemon = start_blockd(args=export_args("vhdx", by_blockd, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(8192, 0) == b"\x11" * 4096 + payload
    assert h.pread(4096, 1 << 20) == b"\0" * 4096
    assert h.pread(16384 + 8192, (5 << 20) + 4096) == b"\x22" * 4096 + b"\0" * 16384 + b"\x22" * 4096
    h.shutdown()
    daemon.stop()
    a, b = by_qemu.read_bytes(), by_blockd.read_bytes()
    assert len(a) == len(b)
    # The same bytes but the two headers (new GUIDs and sequence numbers in each).
    assert a[:64 << 10] == b[:64 << 10] and a[192 << 10:] == b[192 << 10:]
    for image_after in (by_qemu, by_blockd):
        assert struct.unpack("<Q", current_header(image_after)[1][48:56])[0] == 0  # log GUID cleared
    assert qemu_img("compare", "-f", "vhdx", "-F", "vhdx", str(by_qemu), str(by_blockd)).returncode == 0
    # blockimg check -r all replays too, as qemu-img's does.
    third = tmp_path / "third.vhdx"
    shutil.copy(image, third)
    check = blockimg("check", "-r", "all", str(third))
    assert "1 corruptions" in check.stdout
    assert third.read_bytes()[192 << 10:] == a[192 << 10:]


def test_invalid_log_entry_is_not_replayed(start_blockd, tmp_path):
    """An entry whose checksum is wrong is no entry: the image opens read-only as if clean, like QEMU."""
    require("qemu-img", "qemu-io")
    image, _ = _dirty_image(tmp_path)
    _, header = current_header(image)
    log_offset = struct.unpack("<Q", header[72:80])[0]
    corrupt(image, log_offset + 100, b"\xff")
    assert qemu_img("info", str(image)).returncode == 0
    daemon = start_blockd(args=export_args("vhdx", image, writable=False))
    assert qemu_img("compare", "-f", "vhdx", str(image), daemon.uri()).returncode == 0


CORRUPTIONS = {
    "bad identifier": (lambda image: corrupt(image, 0, b"vhdxfilX"), "no 'vhdxfile' file identifier"),
    "both headers bad": (lambda image: corrupt(image, 64 << 10, b"x") or corrupt(image, 128 << 10, b"x"),
                         "No valid VHDX header found"),
    "region table checksum": (lambda image: corrupt(image, (192 << 10) + 40, b"\x01"), "region table is invalid"),
    "bat past the end": (lambda image: corrupt(image, bat_offset_of(image), struct.pack("<Q", (1 << 40) | 6)),
                         "points after end of file"),
    "truncated": (lambda image: image.write_bytes(image.read_bytes()[:100000]), "too short"),
}


def bat_offset_of(image):
    return regions(image)[BAT_GUID][0]


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_images_are_refused(tmp_path, case):
    require("qemu-img")
    damage, message = CORRUPTIONS[case]
    image = tmp_path / "bad.vhdx"
    qemu_img("create", "-f", "vhdx", str(image), str(SIZE))
    damage(image)
    info = blockimg("info", "-f", "vhdx", str(image), ok=False)
    assert info.returncode != 0 and message in info.stderr, info.stderr
    assert qemu_img("info", "-f", "vhdx", str(image), ok=False).returncode != 0


def test_fio_verified_writes(start_blockd, tmp_path):
    require("qemu-img", "fio")
    image = tmp_path / "fio.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", str(image), str(8 << 20))
    fio_verify_round_trip(start_blockd, tmp_path, "vhdx", image, 8 << 20)
    assert qemu_img("check", str(image)).returncode == 0


def test_convert_between_every_pair_of_fmt2_formats(tmp_path):
    """blockimg convert through each pair of vdi, vpc, vhdx (and qcow2, raw): every image holds the
    source's bytes (vpc rounds the size up to its geometry: the tail reads as zeroes)."""
    require("qemu-img", "qemu-io")
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(1 << 20) + b"\0" * (1 << 20) + os.urandom(300000) + b"\0" * ((2 << 20) - 300000))
    formats = ["vdi", "vpc", "vhdx", "qcow2", "raw"]
    for first in formats[:3]:
        a = tmp_path / f"a.{first}"
        blockimg("convert", "-f", "raw", "-O", first, str(source), str(a))
        for second in formats:
            if first == second:
                continue
            b = tmp_path / f"b.{second}"
            blockimg("convert", "-f", first, "-O", second, str(a), str(b))
            assert qemu_img("compare", "-f", second, "-F", "raw", str(b), str(source)).returncode == 0, (first, second)
            b.unlink()
