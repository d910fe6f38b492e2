"""Where everything lies in a qcow2 file: header fields, header extensions, backing file name, L1 and
L2 tables, refcount table and blocks, snapshot table and snapshot L1 tables, as file offsets and
widths, so that tests can damage one field at a time. Facts from QEMU's docs/interop/qcow2.txt."""
from dataclasses import dataclass, field

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of L1, L2 and refcount table entries
EXTENSION_NAMES = {0: "end", 0xE2792ACA: "backing-format", 0x6803F857: "feature-table",
                   0x23852875: "bitmaps", 0x0537BE77: "encryption", 0x44415441: "data-file"}

# (name, offset, width in bytes); version 2 headers end at 72, version 3 ones at header_length.
HEADER_V2 = [("magic", 0, 4), ("version", 4, 4), ("backing_file_offset", 8, 8), ("backing_file_size", 16, 4),
             ("cluster_bits", 20, 4), ("size", 24, 8), ("crypt_method", 32, 4), ("l1_size", 36, 4),
             ("l1_table_offset", 40, 8), ("refcount_table_offset", 48, 8), ("refcount_table_clusters", 56, 4),
             ("nb_snapshots", 60, 4), ("snapshots_offset", 64, 8)]
HEADER_V3 = HEADER_V2 + [("incompatible_features", 72, 8), ("compatible_features", 80, 8),
                         ("autoclear_features", 88, 8), ("refcount_order", 96, 4), ("header_length", 100, 4),
                         ("compression_type", 104, 1)]


@dataclass(frozen=True)
class Field:
    """One damageable place: `width` bytes at file offset `offset`, holding `value` (big endian)."""
    name: str
    offset: int
    width: int
    value: int


@dataclass
class Layout:
    """The parsed metadata of one pristine qcow2 image."""
    data: bytes
    header: dict[str, Field] = field(default_factory=dict)
    cluster_size: int = 0
    extensions: list[tuple[str, Field, Field]] = field(default_factory=list)  # (kind, type field, length field)
    extension_payloads: dict[str, Field] = field(default_factory=dict)
    backing_name: str = ""
    l1: list[Field] = field(default_factory=list)
    l2: list[Field] = field(default_factory=list)  # entries of every active L2 table
    refcount_table: list[Field] = field(default_factory=list)
    refcount_blocks: list[int] = field(default_factory=list)  # file offsets
    refcount_bits: int = 16
    snapshots: list[dict[str, Field]] = field(default_factory=list)
    snapshot_l1: list[Field] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.header["version"].value

    def metadata_regions(self) -> list[tuple[str, int, int]]:
        """(name, offset, length) of every metadata area, for random bit flips."""
        cs = self.cluster_size
        h = self.header
        end = max(f.offset + f.width for f in h.values())
        regions = [("header", 0, end)]
        if self.extensions:
            first = self.extensions[0][1].offset
            regions.append(("extensions", first, min(cs, len(self.data)) - first))
        l1 = h["l1_table_offset"].value
        regions.append(("l1", l1, max(8, h["l1_size"].value * 8)))
        for table in sorted({e.offset - e.offset % cs for e in self.l2}):
            regions.append(("l2", table, cs))
        regions.append(("refcount-table", h["refcount_table_offset"].value, h["refcount_table_clusters"].value * cs))
        regions += [("refcount-block", block, cs) for block in self.refcount_blocks]
        if self.snapshots:
            first = self.snapshots[0]["l1_table_offset"].offset
            last = self.snapshots[-1]
            regions.append(("snapshot-table", first, last["_end"].offset - first))
        if self.snapshot_l1:
            regions.append(("snapshot-l1", self.snapshot_l1[0].offset, len(self.snapshot_l1) * 8))
        return regions


def _int(data: bytes, offset: int, width: int) -> int:
    return int.from_bytes(data[offset:offset + width], "big")


def _field(data: bytes, name: str, offset: int, width: int) -> Field:
    return Field(name, offset, width, _int(data, offset, width))


def _table(data: bytes, name: str, offset: int, count: int) -> list[Field]:
    return [_field(data, f"{name}[{i}]", offset + 8 * i, 8) for i in range(count)]


def parse(data: bytes) -> Layout:
    """Parses a well-formed image (one qemu-img made); raises on anything unexpected."""
    assert data[:4] == MAGIC, "not a qcow2 image"
    version = _int(data, 4, 4)
    names = HEADER_V3 if version >= 3 else HEADER_V2
    layout = Layout(data)
    layout.header = {name: _field(data, name, off, width) for name, off, width in names}
    h = layout.header
    cs = 1 << h["cluster_bits"].value
    layout.cluster_size = cs
    if version >= 3:
        layout.refcount_bits = 1 << h["refcount_order"].value
    _parse_extensions(layout, h["header_length"].value if version >= 3 else 72)
    if h["backing_file_offset"].value:
        start = h["backing_file_offset"].value
        layout.backing_name = data[start:start + h["backing_file_size"].value].decode()
    layout.l1 = _table(data, "l1", h["l1_table_offset"].value, h["l1_size"].value)
    for entry in layout.l1:
        table = entry.value & OFFSET_MASK
        if table:
            index = len(layout.l2) // (cs // 8)
            layout.l2 += _table(data, f"l2.{index}", table, cs // 8)
    layout.refcount_table = _table(data, "reftable", h["refcount_table_offset"].value,
                                   h["refcount_table_clusters"].value * cs // 8)
    layout.refcount_blocks = [e.value & ~0x1FF for e in layout.refcount_table if e.value]
    _parse_snapshots(layout)
    return layout


def _parse_extensions(layout: Layout, start: int) -> None:
    data, pos = layout.data, start
    while pos + 8 <= layout.cluster_size:
        kind = _int(data, pos, 4)
        length = _int(data, pos + 4, 4)
        name = EXTENSION_NAMES.get(kind, f"unknown-{kind:08x}")
        layout.extensions.append((name, _field(data, f"ext.{name}.type", pos, 4),
                                  _field(data, f"ext.{name}.length", pos + 4, 4)))
        if kind == 0:
            return
        layout.extension_payloads[name] = Field(f"ext.{name}.data", pos + 8, length, 0)
        pos += 8 + (length + 7) // 8 * 8


def _parse_snapshots(layout: Layout) -> None:
    data, h = layout.data, layout.header
    pos = h["snapshots_offset"].value
    for n in range(h["nb_snapshots"].value):
        entry = {name: _field(data, f"snap{n}.{name}", pos + off, width) for name, off, width in (
            ("l1_table_offset", 0, 8), ("l1_size", 8, 4), ("id_str_size", 12, 2), ("name_size", 14, 2),
            ("date_sec", 16, 4), ("date_nsec", 20, 4), ("vm_clock_nsec", 24, 8), ("vm_state_size", 32, 4),
            ("extra_data_size", 36, 4))}
        extra = entry["extra_data_size"].value
        if extra >= 16:
            entry["vm_state_size_large"] = _field(data, f"snap{n}.vm_state_size_large", pos + 40, 8)
            entry["disk_size"] = _field(data, f"snap{n}.disk_size", pos + 48, 8)
        length = 40 + extra + entry["id_str_size"].value + entry["name_size"].value
        pos += (length + 7) // 8 * 8
        entry["_end"] = Field(f"snap{n}._end", pos, 0, 0)
        layout.snapshots.append(entry)
        if n == 0:
            layout.snapshot_l1 = _table(data, "snap0.l1", entry["l1_table_offset"].value, entry["l1_size"].value)


def l2_kind(entry: int, cluster_bits: int) -> str:
    """'unallocated', 'zero', 'compressed' or 'normal' for one L2 entry (no extended L2)."""
    if entry & (1 << 62):
        return "compressed"
    if entry & 1:
        return "zero"
    return "normal" if entry & OFFSET_MASK else "unallocated"


def patch(data: bytes, place: Field, value: int) -> bytes:
    """`data` with `value` stored big endian (truncated to the field's width) at `place`."""
    width = place.width
    raw = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
    return data[:place.offset] + raw + data[place.offset + width:]

