"""The corrupt-image catalogue: deterministic damage to the pristine images of qcow2_bases.py.

Each Case names one base image and a function that damages a copy of it: a targeted value in one
place (every header field, L1 and L2 entries of each kind, refcount table and block entries,
snapshot table fields and the snapshot's L1, backing file name, length and offset, header
extension types, lengths and payloads), or random bit flips in one metadata area."""
import random
from dataclasses import dataclass
from typing import Callable

from qcow2_bases import Base
from qcow2_layout import OFFSET_MASK, Field, Layout, l2_kind, patch

Mutator = Callable[[bytes, str], bytes]  # (pristine bytes, the damaged copy's file name) -> damaged bytes


@dataclass
class Case:
    """One damaged image: `id` says what was done, e.g. "v3-64k/header.size=2^64-1"."""
    id: str
    base: str
    mutate: Mutator
    writable: bool = False     # also opened writable, written and flushed, then checked
    must_refuse: bool = False  # the qcow2 spec says an implementation must refuse to open it
    qemu_loops: bool = False   # a backing chain through itself: QEMU 7.2 recurses without end on it
    group: str = ""


def _name(value: int) -> str:
    for bits in (31, 32, 53, 55, 56, 62, 63, 64):
        for delta, suffix in ((0, ""), (-1, "-1"), (-512, "-512"), (1, "+1")):
            if value == (1 << bits) + delta and bits > 16:
                return f"2^{bits}{suffix}"
    return hex(value) if value > 4096 else str(value)


def _set(place: Field, value: int) -> Mutator:
    return lambda data, _own: patch(data, place, value)


def _values(place: Field, layout: Layout) -> list[int]:
    """The targeted values for one field, truncated to its width and without repeats."""
    cs, fsize = layout.cluster_size, len(layout.data)
    v = place.value
    if place.width == 1:
        raw = [0, 1, 2, 0x7F, 0xFF]
    elif place.width == 2:
        raw = [0, 1, 0x7FFF, 0x8000, 0xFFFF, v + 1, v - 1]
    else:
        raw = [0, 1, 0x1FF, 0x200, cs - 1, cs, cs + 1, fsize, fsize + cs, 1 << 31, (1 << 31) - 1, 1 << 32,
               (1 << 32) - 1, 1 << 53, 1 << 56, 1 << 63, (1 << 64) - 1, (1 << 64) - 512, v + 1, v - 1, v + cs]
    limit = 1 << (8 * place.width)
    out: list[int] = []
    for value in raw:
        value %= limit
        if value != v and value not in out:
            out.append(value)
    return out


SPECIAL = {  # header fields with values of their own meaning, tried on top of the common ones
    "version": [2, 3, 4],
    "cluster_bits": [8, 9, 12, 16, 21, 22, 30, 31, 32, 63, 64],
    "crypt_method": [1, 2, 3],
    "refcount_order": [0, 3, 4, 5, 6, 7, 31],
    "header_length": [72, 96, 103, 104, 105, 112, 120],
    "compression_type": [1, 2],
    "incompatible_features": [1 << b for b in range(6)] + [1 << 63],
    "compatible_features": [1, 2, 1 << 63],
    "autoclear_features": [1, 2, 1 << 63],
    "nb_snapshots": [2, 100],
}
KNOWN_INCOMPATIBLE = 0x1F


def _must_refuse(name: str, value: int) -> bool:
    """Header values the qcow2 spec forbids a reader to accept: another magic or version, an
    unknown incompatible feature, clusters under 512 bytes, refcounts over 64 bits; and
    encryption, which blockd does not implement (serving ciphertext as data would be wrong)."""
    return (name in ("magic", "crypt_method") or (name == "version" and value not in (2, 3))
            or (name == "incompatible_features" and bool(value & ~KNOWN_INCOMPATIBLE))
            or (name == "cluster_bits" and value < 9) or (name == "refcount_order" and value > 6))


def header_cases(base: Base) -> list[Case]:
    layout = base.layout
    cases = []
    for name, place in layout.header.items():
        values = _values(place, layout) + [v for v in SPECIAL.get(name, []) if v != place.value]
        for value in dict.fromkeys(values):
            cases.append(Case(f"{base.name}/header.{name}={_name(value)}", base.name, _set(place, value),
                              writable=name.startswith(("refcount", "l1", "incompatible", "autoclear", "size")),
                              must_refuse=_must_refuse(name, value), group="header"))
    return cases


def _entry_values(place: Field, layout: Layout) -> list[tuple[str, int]]:
    """Targeted values for an L1, L2, refcount table or snapshot L1 entry (bits 9-55 an offset)."""
    cs, v = layout.cluster_size, place.value
    h = layout.header
    offset = v & OFFSET_MASK
    eof = (len(layout.data) + cs - 1) // cs * cs
    copied = v & (1 << 63)
    return [("0", 0), ("reserved-bit-0", v | 1), ("reserved-bit-8", v | 0x100), ("reserved-bit-56", v | 1 << 56),
            ("reserved-bit-61", v | 1 << 61), ("flag-62", v ^ 1 << 62), ("flag-63", v ^ 1 << 63),
            ("unaligned+512", v + 512), ("next-cluster", v + cs), ("previous-cluster", copied | max(offset - cs, 0)),
            ("header-cluster", copied), ("l1-table", copied | h["l1_table_offset"].value),
            ("refcount-table", copied | h["refcount_table_offset"].value),
            ("eof", copied | eof), ("eof+cluster", copied | (eof + cs)), ("2^55", copied | 1 << 55),
            ("2^56-cluster", copied | ((1 << 56) - cs)), ("2^64-1", (1 << 64) - 1), ("2^64-512", (1 << 64) - 512),
            ("2^63", 1 << 63), ("2^62", 1 << 62)]


def _entry_cases(base: Base, group: str, entries: list[Field], writable: bool) -> list[Case]:
    cases = []
    for place in entries:
        for label, value in _entry_values(place, base.layout):
            if value % (1 << 64) != place.value:
                cases.append(Case(f"{base.name}/{place.name}={label}", base.name, _set(place, value % (1 << 64)),
                                  writable=writable, group=group))
    return cases


def _pick_l2(layout: Layout) -> list[Field]:
    """One L2 entry of each kind (and the last allocated one of the last table)."""
    chosen: dict[str, Field] = {}
    for entry in layout.l2:
        chosen.setdefault(l2_kind(entry.value, 0), entry)
    allocated = [e for e in layout.l2 if l2_kind(e.value, 0) == "normal"]
    if allocated:
        chosen["last"] = allocated[-1]
    return list(dict.fromkeys(chosen.values()))


def _compressed_cases(base: Base) -> list[Case]:
    layout = base.layout
    bits = layout.header["cluster_bits"].value
    x = 62 - (bits - 8)
    cases = []
    for place in layout.l2:
        if l2_kind(place.value, bits) != "compressed":
            continue
        host = place.value & ((1 << x) - 1)
        sectors = (place.value >> x) & ((1 << (62 - x)) - 1)
        flags = place.value & (3 << 62)
        eof = len(layout.data)
        for label, new_host, new_sectors in [
                ("host=0", 0, sectors), ("host+1", host + 1, sectors), ("host-1", host - 1, sectors),
                ("host=eof", eof, sectors), ("host=eof-1", eof - 1, sectors), ("host=max", (1 << x) - 1, sectors),
                ("host=header", 8, sectors), ("sectors=0", host, 0), ("sectors+1", host, sectors + 1),
                ("sectors=max", host, (1 << (62 - x)) - 1), ("host=eof-100", eof - 100, 0)]:
            value = flags | (new_sectors << x) | (new_host % (1 << x))
            cases.append(Case(f"{base.name}/{place.name}.compressed.{label}", base.name, _set(place, value),
                              group="l2-compressed"))
    return cases


def _refblock_entry(layout: Layout, cluster_index: int, value: int) -> Mutator:
    """Sets the refcount of one host cluster (refcount block 0 only), whatever refcount_bits is."""
    bits = layout.refcount_bits
    block = layout.refcount_blocks[0]

    def mutate(data: bytes, _own: str) -> bytes:
        bit = cluster_index * bits
        if bits >= 8:
            return patch(data, Field("", block + bit // 8, bits // 8, 0), value)
        pos = block + bit // 8
        shift = bit % 8  # sub-byte refcounts: bit 0 is the least significant bit of the byte
        mask = ((1 << bits) - 1) << shift
        byte = (data[pos] & ~mask) | ((value << shift) & mask)
        return data[:pos] + bytes([byte]) + data[pos + 1:]
    return mutate


def refcount_block_cases(base: Base) -> list[Case]:
    layout = base.layout
    cs = layout.cluster_size
    h = layout.header
    targets = {"header": 0, "l1": h["l1_table_offset"].value // cs,
               "reftable": h["refcount_table_offset"].value // cs, "refblock": layout.refcount_blocks[0] // cs,
               "free-past-eof": len(layout.data) // cs + 1}
    if layout.l2:
        targets["l2"] = layout.l2[0].offset // cs
    data_entries = [e for e in layout.l2 if l2_kind(e.value, 0) == "normal"]
    if data_entries:
        targets["data"] = (data_entries[0].value & OFFSET_MASK) // cs
    if layout.snapshots:
        targets["snapshot-table"] = h["snapshots_offset"].value // cs
    top = (1 << layout.refcount_bits) - 1
    cases = []
    for target, index in targets.items():
        for value in dict.fromkeys([0, 1, 2, top]):
            cases.append(Case(f"{base.name}/refblock[{target}]={_name(value)}", base.name,
                              _refblock_entry(layout, index, value), writable=True, group="refcount-block"))
    return cases


def snapshot_cases(base: Base) -> list[Case]:
    layout = base.layout
    if not layout.snapshots:
        return []
    cases = []
    for name, place in layout.snapshots[0].items():
        if name.startswith("_"):
            continue
        for value in _values(place, layout):
            cases.append(Case(f"{base.name}/{place.name}={_name(value)}", base.name, _set(place, value),
                              writable=name in ("l1_table_offset", "l1_size"), group="snapshot"))
    cases += _entry_cases(base, "snapshot-l1", layout.snapshot_l1, writable=True)
    return cases


def _set_backing(layout: Layout, name_of: Callable[[str], bytes], offset: int | None = None) -> Mutator:
    """Stores a backing file name (computed from the copy's own file name) and points the header at it."""
    h = layout.header
    at = offset if offset is not None else (h["backing_file_offset"].value or layout.cluster_size - 1024)

    def mutate(data: bytes, own: str) -> bytes:
        name = name_of(own)
        data = data[:at] + name + data[at + len(name):]
        data = patch(data, h["backing_file_offset"], at)
        return patch(data, h["backing_file_size"], len(name))
    return mutate


def backing_cases(base: Base, directory: str) -> list[Case]:
    layout = base.layout
    h = layout.header
    cs, eof = layout.cluster_size, len(layout.data)
    cases = []

    def add(label: str, mutate: Mutator, writable: bool = False) -> None:
        cases.append(Case(f"{base.name}/backing.{label}", base.name, mutate, writable=writable, group="backing",
                          qemu_loops=label.startswith("self")))

    add("self", _set_backing(layout, lambda own: own.encode()), writable=True)
    add("self-absolute", _set_backing(layout, lambda own: f"{directory}/{own}".encode()))
    add("self-dotted", _set_backing(layout, lambda own: f"./{own}".encode()))
    add("missing", _set_backing(layout, lambda own: b"no-such-file.qcow2"))
    add("directory", _set_backing(layout, lambda own: b"."))
    add("nul-byte", _set_backing(layout, lambda own: b"mid\0qcow2"))
    add("1023-bytes", _set_backing(layout, lambda own: b"x" * 1023))
    add("1024-bytes", _set_backing(layout, lambda own: b"x" * 1024))
    if layout.backing_name:
        add("raw-as-qcow2", _set_backing(layout, lambda own: b"base.raw"))
        add("json", _set_backing(layout, lambda own: b'json:{"driver":"file","filename":"base.raw"}'))
        off, size = h["backing_file_offset"], h["backing_file_size"]
        for value in _values(off, layout) + [cs - 4, eof - 4]:
            add(f"offset={_name(value)}", _set(off, value))
        for value in dict.fromkeys([0, 1, 1023, 1024, 4096, 65535, (1 << 31) - 1, (1 << 32) - 1,
                                    size.value + 1, size.value - 1]):
            add(f"size={_name(value)}", _set(size, value))
    return cases


def extension_cases(base: Base) -> list[Case]:
    layout = base.layout
    cs = layout.cluster_size
    cases = []

    def add(label: str, mutate: Mutator) -> None:
        cases.append(Case(f"{base.name}/ext.{label}", base.name, mutate, group="extension"))

    for index, (kind, type_field, length_field) in enumerate(layout.extensions):
        for value in (0, 0x12345678, 0xE2792ACA, 0x23852875, 0x44415441, 0x0537BE77):
            if value != type_field.value:
                add(f"{index}.{kind}.type={value:#x}", _set(type_field, value))
        for value in (0, 1, 7, cs - 8, cs, (1 << 31) - 1, (1 << 32) - 1, length_field.value + 8):
            if value != length_field.value:
                add(f"{index}.{kind}.length={_name(value)}", _set(length_field, value))
    payload = layout.extension_payloads.get("backing-format")
    if payload:
        for fmt in (b"raw", b"vmdk", b"qcow", b"nonsense", b"qcow2\0\0"):
            def mutate(data: bytes, _own: str, fmt=fmt, payload=payload) -> bytes:
                data = data[:payload.offset] + fmt.ljust(payload.width, b"\0")[:max(len(fmt), payload.width)] \
                    + data[payload.offset + max(len(fmt), payload.width):]
                return patch(data, Field("", payload.offset - 4, 4, 0), len(fmt))
            add(f"backing-format={fmt.decode().strip(chr(0))}", mutate)
    bitmaps = layout.extension_payloads.get("bitmaps")
    if bitmaps:
        eof = len(layout.data)
        for name, off, width, values in (
                ("nb_bitmaps", 0, 4, [0, 2, 65536, (1 << 32) - 1]), ("reserved", 4, 4, [1]),
                ("directory_size", 8, 8, [0, 1, 1 << 32, 1 << 63]),
                ("directory_offset", 16, 8, [0, 512, eof, eof + cs, 1 << 63, (1 << 64) - 512])):
            for value in values:
                add(f"bitmaps.{name}={_name(value)}", _set(Field("", bitmaps.offset + off, width, 0), value))
    return cases


def _flip(region: tuple[str, int, int], rng: random.Random, limit: int) -> tuple[str, Mutator]:
    name, start, length = region
    length = max(1, min(length, limit - start))
    bits = sorted(rng.randrange(start * 8, (start + length) * 8) for _ in range(rng.choice([1, 1, 2, 3])))

    def mutate(data: bytes, _own: str) -> bytes:
        buf = bytearray(data)
        for bit in bits:
            buf[bit // 8] ^= 0x80 >> (bit % 8)
        return bytes(buf)
    return "+".join(f"{b // 8:#x}.{b % 8}" for b in bits), mutate


def bitflip_cases(bases: dict[str, Base], count: int, seed: int) -> list[Case]:
    """`count` cases of 1-3 random bit flips in one metadata area of a random base."""
    rng = random.Random(seed)
    cases = []
    names = sorted(bases)
    for n in range(count):
        base = bases[names[n % len(names)]]
        regions = base.layout.metadata_regions()
        region = rng.choice(regions)
        label, mutate = _flip(region, rng, len(base.layout.data))
        cases.append(Case(f"{base.name}/flip{n}.{region[0]}.{label}", base.name, mutate,
                          writable=n % 3 == 0, group=f"flip-{region[0]}"))
    return cases


QUOTAS = {"header": 120, "l1": 45, "l2": 65, "l2-compressed": 20, "reftable": 55, "refcount-block": 35,
          "snapshot": 40, "snapshot-l1": 20, "backing": 100, "extension": 35}
SHORT_FLIPS = 90


def catalogue(bases: dict[str, Base], directory: str, *, long: bool, seed: int = 2024) -> list[Case]:
    """Every targeted case on every base, then random bit flips: 5,000 cases in all with `long`.
    Otherwise about 600: per group, the cases for the bugs listed in `_always` and a deterministic
    sample of the rest up to the group's quota, then 90 flips."""
    targeted: list[Case] = []
    for base in bases.values():
        layout = base.layout
        targeted += header_cases(base)
        targeted += _entry_cases(base, "l1", layout.l1, writable=True)
        targeted += _entry_cases(base, "l2", _pick_l2(layout), writable=True)
        targeted += _compressed_cases(base)
        targeted += _entry_cases(base, "reftable", [layout.refcount_table[0], layout.refcount_table[1]],
                                 writable=True)
        targeted += refcount_block_cases(base)
        targeted += snapshot_cases(base)
        targeted += backing_cases(base, directory)
        targeted += extension_cases(base)
    if long:
        return targeted + bitflip_cases(bases, max(0, 5000 - len(targeted)), seed)
    rng = random.Random(seed)
    kept: list[Case] = []
    for group, quota in QUOTAS.items():
        members = [c for c in targeted if c.group == group]
        chosen = [c for c in members if _always(c)]
        rest = [c for c in members if not _always(c)]
        sampled = rng.sample(rest, min(len(rest), max(0, quota - len(chosen))))
        for n, case in enumerate(sampled):
            case.writable = case.writable and n % 2 == 0  # the short run writes to half of them
        kept += sorted(chosen + sampled, key=members.index)
    return kept + bitflip_cases(bases, SHORT_FLIPS, seed)


OVERFLOWING = ("=2^64-1", "=2^64-512")
BAD_ENTRY = ("reserved-bit", "unaligned", "flag-62")
BAD_REFTABLE = ("=0", "=eof", "=eof+cluster", "=2^55", "=2^56-cluster", "=2^63", "=2^64-512", "=header-cluster")


def _always(case: Case) -> bool:
    """Cases the short run keeps whatever the sample: a backing file naming the image itself, 64-bit
    header fields near 2^64, L1/L2 entries with reserved bits or unaligned offsets, refcount table
    entries past the end of the file or in the header (bugs blockd had)."""
    main = case.base in ("v3-64k", "v3-4k", "rc1-4k")
    if case.group == "backing":
        return ".self" in case.id
    if case.group == "header":
        return case.id.endswith(OVERFLOWING) and any(f".{name}=" in case.id for name in (
            "size", "l1_table_offset", "refcount_table_offset", "snapshots_offset", "backing_file_offset"))
    if case.group in ("l1", "l2"):
        return main and any(word in case.id for word in BAD_ENTRY)
    if case.group == "reftable":
        return main and case.id.endswith(BAD_REFTABLE)
    return False
