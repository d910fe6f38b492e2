"""A generator of dmg (UDIF) images for the read-only format tests, where Debian has no tool that
makes them: chunks of every type (raw, zeroes, ignored, zlib, bzip2, lzfse), with the chunk table
in a resource fork or in an XML property list. Each image is first checked against qemu-img (or
dmg2img for bzip2, which Debian's qemu-img is built without) by the tests before blockd reads it."""
import base64
import bz2
import struct
import zlib

SECTOR = 512
TYPES = {"zero": 0, "raw": 1, "ignore": 2, "adc": 0x80000004, "zlib": 0x80000005, "bzip2": 0x80000006,
         "lzfse": 0x80000007}
COMMENT, LAST = 0x7FFFFFFE, 0xFFFFFFFF


def _mish(first_sector: int, sector_count: int, entries: list[tuple[int, int, int, int, int]]) -> bytes:
    """A `mish` block: header (204 bytes) then 40-byte chunk entries (type, comment, sector,
    sector count, offset, length), relative to first_sector and to the data fork."""
    head = struct.pack(">4sIQQQII24s", b"mish", 1, first_sector, sector_count, 0, 0, len(entries), b"")
    head += struct.pack(">II128s", 0, 0, b"")  # checksum: none
    head += struct.pack(">I", len(entries))
    assert len(head) == 204
    body = b"".join(struct.pack(">IIQQQQ", *entry) for entry in entries)
    return head + body


def _plist(blocks: list[bytes]) -> bytes:
    items = "".join(
        "\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n\t\t\t\t<string>0x0050</string>\n"
        "\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n"
        + "\n".join("\t\t\t\t" + line for line in _wrap(base64.b64encode(block).decode()))
        + f"\n\t\t\t\t</data>\n\t\t\t\t<key>Name</key>\n\t\t\t\t<string>partition {index}</string>\n\t\t\t</dict>\n"
        for index, block in enumerate(blocks))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
            '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n'
            + items + "\t\t</array>\n\t</dict>\n</dict>\n</plist>\n").encode()


def _wrap(text: str, width: int = 52) -> list[str]:
    return [text[i:i + width] for i in range(0, len(text), width)] or [""]


def _resource_fork(blocks: list[bytes]) -> bytes:
    """A classic resource fork: a 16-byte header (data offset, map offset, data length, map length),
    the resource data at offset 256 as (length, bytes) pairs, then an empty map."""
    data = b"".join(struct.pack(">I", len(block)) + block for block in blocks)
    header = struct.pack(">IIII", 256, 256 + len(data), len(data), 0)
    return header.ljust(256, b"\0") + data


def _koly(data_fork_length: int, rsrc: tuple[int, int], xml: tuple[int, int], sectors: int) -> bytes:
    trailer = bytearray(512)
    struct.pack_into(">4sIII", trailer, 0, b"koly", 4, 512, 1)
    struct.pack_into(">QQQQQ", trailer, 16, 0, 0, data_fork_length, rsrc[0], rsrc[1])
    struct.pack_into(">II", trailer, 56, 1, 1)
    struct.pack_into(">QQ", trailer, 0xD8, xml[0], xml[1])
    struct.pack_into(">I", trailer, 0x1E8, 1)
    struct.pack_into(">Q", trailer, 0x1EC, sectors)
    return bytes(trailer)


def build_dmg(data: bytes, layout: list[tuple[str, int]], container: str = "plist", partitions: int = 2) -> bytes:
    """A dmg image of `data` (a multiple of 512 bytes): `layout` lists (kind, sectors) runs that
    cover it in order; zero and ignore runs must be zeroes in `data`. The chunks are split over
    `partitions` blkx entries; the table goes in a `plist` or a resource fork (`rsrc`)."""
    assert len(data) % SECTOR == 0 and sum(n for _, n in layout) * SECTOR == len(data)
    fork = bytearray()
    chunks = []  # (type, sector, count, offset, length)
    sector = 0
    for kind, count in layout:
        piece = data[sector * SECTOR:(sector + count) * SECTOR]
        if kind in ("zero", "ignore"):
            assert piece == bytes(len(piece)), f"a {kind} run must be zeroes in the data"
            stored = b""
        elif kind == "raw":
            stored = piece
        elif kind == "zlib":
            stored = zlib.compress(piece)
        elif kind == "bzip2":
            stored = bz2.compress(piece)
        else:  # lzfse / adc: stored bytes blockd cannot decode; the type is what matters
            stored = b"\x62\x76\x78\x32" + piece[:64]
        chunks.append((TYPES[kind], sector, count, len(fork), len(stored)))
        fork += stored
        sector += count
    total = sector
    # Split the chunk list into partitions, each with its own first sector (chunk sectors relative).
    per = max(1, -(-len(chunks) // partitions))
    blocks = []
    for start in range(0, len(chunks), per):
        group = chunks[start:start + per]
        first = group[0][1]
        count = sum(c[2] for c in group)
        entries = [(t, 0, s - first, n, off, ln) for t, s, n, off, ln in group]
        entries.insert(0, (COMMENT, 0, 0, 0, 0, 0))
        entries.append((LAST, 0, count, 0, 0, 0))
        blocks.append(_mish(first, count, entries))
    image = bytearray(fork)
    if container == "plist":
        xml = _plist(blocks)
        offset = len(image)
        image += xml
        image += _koly(len(fork), (0, 0), (offset, len(xml)), total)
    else:
        rsrc = _resource_fork(blocks)
        offset = len(image)
        image += rsrc
        image += _koly(len(fork), (offset, len(rsrc)), (0, 0), total)
    return bytes(image)


def sample_data(sectors: int, zero_runs: list[tuple[int, int]], seed: int = 1) -> bytes:
    """Compressible but not trivial data of `sectors` sectors, with zeroes in the given runs."""
    import random
    rng = random.Random(seed)
    out = bytearray()
    for index in range(sectors):
        word = rng.randbytes(16)
        out += (word * (SECTOR // 16))[:SECTOR - 8] + struct.pack("<Q", index)
    for start, count in zero_runs:
        out[start * SECTOR:(start + count) * SECTOR] = bytes(count * SECTOR)
    return bytes(out)
