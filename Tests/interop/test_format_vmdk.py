"""The vmdk driver against qemu-img and qemu-io: every subformat QEMU creates (monolithicSparse with
and without zeroed grains, monolithicFlat, twoGbMaxExtentSparse/-Flat, streamOptimized) and
hand-written multi-extent descriptors read identically through a blockd export with the same
allocation map; images blockd writes compare equal and pass `qemu-img check`; `blockimg create`,
`info`, `check` and `convert` answer as qemu-img does; corrupt images are refused or fail with EIO
while another export keeps serving."""
import json
import os
import random
import re
import subprocess
from pathlib import Path

import nbd
import pytest

from client_helpers import run
from conftest import require
from test_blockimg import blockimg

MiB = 1 << 20


def qemu_img(*args, ok: bool = True, cwd=None):
    return run(["qemu-img", *[str(a) for a in args]], ok=ok, timeout=120, cwd=cwd)


def qemu_io(image: Path, *commands: str, fmt: str = "vmdk") -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    proc = run(cmd + [str(image)], timeout=120)
    assert "failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def export_args(image: Path, writable: bool, name: str = "disk0", node: str = "d0") -> list[str]:
    ro = "" if writable else ",read-only=on"
    return ["--blockdev", f"driver=file,node-name={node}f,filename={image}{ro}",
            "--blockdev", f"driver=vmdk,node-name={node},file={node}f{ro}",
            "--export", f"type=nbd,id={name},node-name={node},name={name},writable={'on' if writable else 'off'}"]


def uri_of(daemon, name: str) -> str:
    return daemon.uri(name)


def qemu_map(image: Path, fmt: str = "vmdk") -> list[tuple[int, int, bool, bool]]:
    """(start, length, zero, data) runs of `qemu-img map`, merged."""
    entries = json.loads(qemu_img("map", "--output=json", "-f", fmt, image).stdout)
    return merge([(e["start"], e["length"], e["zero"], e["data"]) for e in entries])


def nbd_map(uri: str) -> list[tuple[int, int, bool, bool]]:
    """(start, length, zero, data) runs of the export's base:allocation, merged."""
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    size = h.get_size()
    runs = []
    offset = 0
    while offset < size:
        seen = []
        h.block_status(min(size - offset, 1 << 30), offset, lambda ctx, off, entries, err: seen.extend(entries))
        for length, flags in zip(seen[0::2], seen[1::2]):
            length = min(length, size - offset)
            runs.append((offset, length, bool(flags & nbd.STATE_ZERO), not flags & nbd.STATE_HOLE))
            offset += length
    h.shutdown()
    return merge(runs)


def merge(runs):
    out = []
    for start, length, zero, data in runs:
        if out and out[-1][2] == zero and out[-1][3] == data and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, zero, data)
        else:
            out.append((start, length, zero, data))
    return out


def fill(image: Path, size: int, seed: int, zero_writes: bool = True) -> None:
    rng = random.Random(seed)
    commands = []
    for _ in range(16):
        length = rng.choice([512, 4096, 65536, 70000, 300000])
        offset = rng.randrange(0, size - length) // 512 * 512
        commands.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
    if zero_writes:
        commands.append(f"write -z {size // 2 // 65536 * 65536} 196608")
    qemu_io(image, *commands)


def check_clean(image: Path) -> None:
    proc = qemu_img("check", "--output=json", image, ok=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0, report


SUBFORMATS = [
    ("monolithicSparse", ""),
    ("monolithicSparse", ",zeroed_grain=on"),
    ("monolithicFlat", ""),
    ("twoGbMaxExtentSparse", ""),
    ("twoGbMaxExtentFlat", ""),
]


@pytest.mark.parametrize("subformat,extra", SUBFORMATS)
def test_images_qemu_writes_read_identically(start_blockd, tmp_path, subformat, extra):
    require("qemu-img", "qemu-io")
    # The split subformats get several 2 GiB extents (sparse files, a few KiB on disk).
    size = (4 << 30) + 5 * MiB if subformat.startswith("twoGb") else 6 * MiB
    image = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}{extra}", image, size)
    fill(image, 6 * MiB, seed=len(subformat) + len(extra), zero_writes=bool(extra) or "Flat" in subformat)
    if size > 6 * MiB:
        qemu_io(image, f"write -P 0x5a {(2 << 30) - 4096} 8192", f"write -P 0x6b {(4 << 30) + 4096} 4096")
    daemon = start_blockd(args=export_args(image, writable=False))
    if size > 6 * MiB:
        # 4 GiB is too much to compare whole: the written regions and the extent boundaries.
        same_regions(image, daemon.uri(), [(0, 6), (2047, 2), (4095, 2), (4096, 5)])
    else:
        assert qemu_img("compare", "-f", "vmdk", "-F", "raw", image, daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image)


def same_regions(image: Path, uri: str, regions_mib: list[tuple[int, int]]) -> None:
    """The export's bytes equal what qemu-img reads from the image, in each (start, length) MiB region."""
    h = nbd.NBD()
    h.connect_uri(uri)
    for start, count in regions_mib:
        out = image.with_suffix(".region")
        qemu_img("dd", "-f", "vmdk", "-O", "raw", "bs=1M", f"skip={start}", f"count={start + count}", f"if={image}", f"of={out}")
        assert h.pread(count * MiB, start * MiB) == out.read_bytes(), (start, count)
    h.shutdown()


def test_stream_optimized_reads_identically(start_blockd, tmp_path):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    data = bytearray(os.urandom(MiB)) + b"\0" * MiB + (b"blockd streams " * 80000)[: 2 * MiB] + b"\0" * 1000
    raw.write_bytes(bytes(data))
    image = tmp_path / "s.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, image)
    daemon = start_blockd(args=export_args(image, writable=False))
    assert qemu_img("compare", "-f", "raw", "-F", "raw", raw, daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image)


def write_descriptor(path: Path, create_type: str, lines: list[str], parent: str | None = None) -> None:
    text = f"# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n"
    if parent:
        text += f"parentFileNameHint=\"{parent}\"\n"
    text += "\n# Extent description\n" + "\n".join(lines) + "\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n"
    path.write_text(text)


def test_multi_extent_descriptor_mixes_flat_and_sparse(start_blockd, tmp_path):
    """A hand-written descriptor: a flat extent at an offset in its file, sparse extents, paths
    relative to the descriptor's directory, comment and non-RW lines left out as QEMU leaves them."""
    require("qemu-img", "qemu-io")
    sub = tmp_path / "parts"
    sub.mkdir()
    flat = sub / "flat.bin"
    flat.write_bytes(os.urandom(3 * MiB))
    for name in ("s1.vmdk", "s2.vmdk"):
        qemu_img("create", "-f", "vmdk", sub / name, "2M")
        qemu_io(sub / name, "write -P 0x71 4096 70000", "write -P 0x72 1M 64k")
    image = sub / "multi.vmdk"
    write_descriptor(image, "twoGbMaxExtentSparse", [
        'RW 4096 SPARSE "s1.vmdk"',
        'RDONLY 2048 FLAT "flat.bin" 0',
        'RW 2048 FLAT "flat.bin" 1024',
        '# a comment',
        'RW 4096 SPARSE "s2.vmdk"',
    ])
    daemon = start_blockd(args=export_args(image, writable=True))
    assert qemu_img("compare", "-f", "vmdk", "-F", "raw", image, daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(image)
    # Writes across the extent boundaries land where qemu-io reads them.
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x99" * 200000, 2 * MiB - 100000)
    h.pwrite(b"\x98" * 200000, 3 * MiB - 100000)
    h.flush()
    h.shutdown()
    assert daemon.stop() == 0
    qemu_io(image, f"read -P 0x99 {2 * MiB - 100000} 200000", f"read -P 0x98 {3 * MiB - 100000} 200000")
    # The flat extent starts 1024 sectors into its file.
    flat_bytes = flat.read_bytes()
    assert flat_bytes[512 * 1024:512 * 1024 + 100000] == b"\x99" * 100000
    assert flat_bytes[512 * 1024 + MiB - 100000:512 * 1024 + MiB] == b"\x98" * 100000


def test_flat_extent_file_shorter_than_its_extent(start_blockd, tmp_path):
    """Past the end of a flat extent's file the disk reads zeroes (as QEMU reads it); a write there grows the file."""
    require("qemu-img", "qemu-io")
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x5e" * 100000)
    image = tmp_path / "short.vmdk"
    write_descriptor(image, "monolithicFlat", ['RW 2048 FLAT "short.bin" 0'])
    daemon = start_blockd(args=export_args(image, writable=True))
    assert qemu_img("compare", "-f", "vmdk", "-F", "raw", image, daemon.uri()).returncode == 0
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x6f" * 4096, 900 * 1024)
    h.zero(4096, 950 * 1024)
    h.flush()
    h.shutdown()
    assert daemon.stop() == 0
    assert short.stat().st_size == 950 * 1024 + 4096
    qemu_io(image, "read -P 0x5e 0 100000", f"read -P 0 100000 {900 * 1024 - 100000}", f"read -P 0x6f {900 * 1024} 4096",
            f"read -P 0 {904 * 1024} {120 * 1024}")


def test_zero_extent_reads_as_zeroes(start_blockd, tmp_path):
    """ZERO extents (VMware's format; QEMU leaves the line out) read as zeroes and refuse writes."""
    require("qemu-io")
    flat = tmp_path / "f.bin"
    flat.write_bytes(b"\x11" * MiB)
    image = tmp_path / "z.vmdk"
    write_descriptor(image, "monolithicFlat", ['RW 2048 FLAT "f.bin" 0', "RW 2048 ZERO", 'RW 2048 FLAT "f.bin" 0'])
    daemon = start_blockd(args=export_args(image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.get_size() == 3 * MiB
    assert h.pread(MiB, 0) == b"\x11" * MiB
    assert h.pread(MiB, MiB) == b"\0" * MiB
    assert h.pread(MiB, 2 * MiB) == b"\x11" * MiB
    with pytest.raises(nbd.Error):
        h.pwrite(b"x" * 512, MiB)
    h.pwrite(b"\x22" * 512, 2 * MiB)
    assert h.pread(512, 0) == b"\x22" * 512, "both flat extents are the same file"
    h.shutdown()


@pytest.mark.parametrize("subformat,extra", SUBFORMATS[:3])
def test_writes_through_blockd_compare_and_check(start_blockd, tmp_path, subformat, extra):
    require("qemu-img")
    size = 4 * MiB
    image = tmp_path / "w.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat}{extra}", image, size)
    daemon = start_blockd(args=export_args(image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    reference = bytearray(size)
    rng = random.Random(len(subformat + extra))
    for _ in range(150):
        op = rng.choice(["write", "write", "zero", "read", "flush"])
        length = rng.choice([1, 512, 4096, 65535, 65536, 65537, 200000])
        offset = rng.randrange(0, size - length)
        if op == "write":
            payload = os.urandom(length)
            h.pwrite(payload, offset)
            reference[offset:offset + length] = payload
        elif op == "zero":
            h.zero(length, offset)
            reference[offset:offset + length] = bytes(length)
        elif op == "flush":
            h.flush()
        else:
            assert h.pread(length, offset) == bytes(reference[offset:offset + length])
    h.zero(3 * 65536, 65536)  # whole grains: zeroed-grain entries where the image has them
    reference[65536:4 * 65536] = bytes(3 * 65536)
    h.flush()
    assert h.pread(size, 0) == bytes(reference)
    h.shutdown()
    assert daemon.stop() == 0
    expected = tmp_path / "expected.raw"
    expected.write_bytes(bytes(reference))
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", expected, image).returncode == 0
    check_clean(image)
    if extra:
        runs = json.loads(qemu_img("map", "--output=json", image).stdout)
        assert any(e["zero"] and e["present"] and not e["data"] for e in runs), "zeroed grains written"


def test_backing_chain_reads_and_copies_on_write(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.vmdk"
    qemu_img("create", "-f", "vmdk", base, "4M")
    qemu_io(base, "write -P 0x31 0 4M")
    top = tmp_path / "top.vmdk"
    qemu_img("create", "-f", "vmdk", "-b", base.name, "-F", "vmdk", top)
    qemu_io(top, "write -P 0x32 1M 100k")
    daemon = start_blockd(args=export_args(top, writable=True))
    assert qemu_img("compare", "-f", "vmdk", "-F", "raw", top, daemon.uri()).returncode == 0
    assert nbd_map(daemon.uri()) == qemu_map(top)
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x33" * 1000, 3 * MiB + 5000)  # copy-on-write of the rest of the grain from the base
    h.flush()
    h.shutdown()
    assert daemon.stop() == 0
    qemu_io(top, f"read -P 0x31 {3 * MiB} 5000", f"read -P 0x33 {3 * MiB + 5000} 1000",
            f"read -P 0x31 {3 * MiB + 6000} {65536 - 6000}", "read -P 0x32 1M 100k")
    check_clean(top)
    info = json.loads(qemu_img("info", "--output=json", top).stdout)
    mine = json.loads(blockimg("info", "--output=json", top).stdout)
    assert mine["backing-filename"] == info["backing-filename"]
    assert mine["format-specific"]["data"]["parent-cid"] == info["format-specific"]["data"]["parent-cid"]


def normalised_info(info: dict) -> dict:
    info = dict(info)
    info.pop("actual-size", None)
    return info


@pytest.mark.parametrize("options", [
    "", "subformat=monolithicFlat", "subformat=twoGbMaxExtentSparse", "subformat=twoGbMaxExtentFlat",
    "subformat=streamOptimized", "zeroed_grain=on,adapter_type=lsilogic", "compat6=on,toolsversion=7",
    "hwversion=10,adapter_type=buslogic",
])
def test_blockimg_create_matches_qemu_img(tmp_path, options):
    require("qemu-img")
    size = str((2 << 30) + MiB) if "twoGb" in options else "5M"
    (tmp_path / "q").mkdir()
    (tmp_path / "b").mkdir()
    args = (["-o", options] if options else [])
    theirs = qemu_img("create", "-f", "vmdk", *args, "d.vmdk", size, cwd=tmp_path / "q").stdout.strip()
    ours = blockimg("create", "-f", "vmdk", *args, "d.vmdk", size, cwd=tmp_path / "b").stdout.strip()
    assert ours == theirs
    assert sorted(os.listdir(tmp_path / "q")) == sorted(os.listdir(tmp_path / "b"))
    cid = re.compile(rb"\nCID=[0-9a-f]+\n")
    for name in os.listdir(tmp_path / "q"):
        if re.search(r"-(flat|f\d{3})\.vmdk$", name):
            # Flat extents: empty files of the extent's size (not read: up to 2 GiB each).
            assert (tmp_path / "q" / name).stat().st_size == (tmp_path / "b" / name).stat().st_size, name
            continue
        a = (tmp_path / "q" / name).read_bytes()
        b = (tmp_path / "b" / name).read_bytes()
        # Equal byte for byte but for the random CID (in the 20 descriptor sectors of a sparse file).
        text = slice(512, 512 + 20 * 512) if a[:4] == b"KDMV" else slice(0, None)
        assert cid.sub(b"\n", a[text]).rstrip(b"\0") == cid.sub(b"\n", b[text]).rstrip(b"\0"), name
        if a[:4] == b"KDMV":
            assert a[:512] == b[:512] and a[512 + 20 * 512:] == b[512 + 20 * 512:], name
    image = tmp_path / "b" / "d.vmdk"
    check_clean(image)
    theirs_info = normalised_info(json.loads(qemu_img("info", "--output=json", image).stdout))
    ours_info = normalised_info(json.loads(blockimg("info", "--output=json", image).stdout))
    assert ours_info == theirs_info


def test_blockimg_create_with_backing_and_refusals(tmp_path):
    require("qemu-img")
    qemu_img("create", "-f", "vmdk", tmp_path / "base.vmdk", "3M")
    line = blockimg("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "top.vmdk", cwd=tmp_path).stdout.strip()
    assert line == ("Formatting 'top.vmdk', fmt=vmdk size=3145728 backing_file=base.vmdk backing_fmt=vmdk "
                    "compat6=off hwversion=undefined")
    base_cid = json.loads(qemu_img("info", "--output=json", tmp_path / "base.vmdk").stdout)["format-specific"]["data"]["cid"]
    top = json.loads(qemu_img("info", "--output=json", tmp_path / "top.vmdk").stdout)
    assert top["format-specific"]["data"]["parent-cid"] == base_cid
    assert top["backing-filename"] == "base.vmdk"
    for options, message in [
        ("subformat=foo", "invalid parameter value: foo"),
        ("adapter_type=scsi", "invalid parameter value: scsi"),
        ("compat6=on,hwversion=7", "compat6 cannot be enabled with hwversion set"),
        ("subformat=monolithicFlat,zeroed_grain=on", "Flat image can't enable zeroed grain"),
    ]:
        proc = blockimg("create", "-f", "vmdk", "-o", options, "bad.vmdk", "1M", ok=False, cwd=tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        qproc = qemu_img("create", "-f", "vmdk", "-o", options, "bad.vmdk", "1M", ok=False, cwd=tmp_path)
        assert message in qproc.stderr
        os.remove(tmp_path / "bad.vmdk") if (tmp_path / "bad.vmdk").exists() else None


def test_info_and_check_match_qemu_img(tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "i.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, str((2 << 30) + 3 * MiB))
    qemu_io(image, "write -P 7 0 128k")
    theirs = normalised_info(json.loads(qemu_img("info", "--output=json", image).stdout))
    ours = normalised_info(json.loads(blockimg("info", "--output=json", image).stdout))
    assert ours == theirs
    # An extent file of a split image has no descriptor of its own: neither opens it alone.
    assert qemu_img("info", tmp_path / "i-s001.vmdk", ok=False).returncode != 0
    assert blockimg("info", tmp_path / "i-s001.vmdk", ok=False).returncode != 0
    assert blockimg("info", image).stdout.split("\n")[4:] == qemu_img("info", image).stdout.split("\n")[4:]
    theirs = qemu_img("check", "--output=json", image)
    ours = blockimg("check", "--output=json", image)
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)
    assert blockimg("check", image).stdout == qemu_img("check", image).stdout


@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat", "streamOptimized"])
def test_convert_round_trips(tmp_path, subformat):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    data = bytearray(os.urandom(3 * MiB)) + bytes(2 * MiB) + b"tail" * 25000
    raw.write_bytes(bytes(data))
    image = tmp_path / "c.vmdk"
    blockimg("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", raw, image)
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, image).returncode == 0
    check_clean(image)
    info = json.loads(qemu_img("info", "--output=json", image).stdout)
    assert info["format-specific"]["data"]["create-type"] == subformat
    back = tmp_path / "back.raw"
    blockimg("convert", "-f", "vmdk", "-O", "raw", image, back)
    assert back.read_bytes()[:len(data)] == bytes(data)
    assert blockimg("compare", "-f", "raw", "-F", "vmdk", raw, image).returncode == 0


def corrupt(tmp_path: Path, name: str) -> Path:
    """A corrupt image of the catalogue (each one built from a good qemu-img image)."""
    image = tmp_path / f"{name}.vmdk"
    qemu_img("create", "-f", "vmdk", image, "4M")
    qemu_io(image, "write -P 0x44 0 128k")
    data = bytearray(image.read_bytes())
    header = {k: int.from_bytes(data[o:o + n], "little") for k, o, n in
              [("capacity", 12, 8), ("gtes", 44, 4), ("rgd", 48, 8), ("gd", 56, 8)]}
    gt0 = int.from_bytes(data[header["gd"] * 512:header["gd"] * 512 + 4], "little")
    if name == "truncated":
        data = data[:3000]
    elif name == "capacity":
        data[12:20] = (1 << 62).to_bytes(8, "little")
    elif name == "gtes":
        data[44:48] = (4096).to_bytes(4, "little")
    elif name == "granularity":
        data[20:28] = (1 << 40).to_bytes(8, "little")
    elif name == "gd-past-end":
        data[56:64] = (1 << 30).to_bytes(8, "little")
    elif name == "gt-past-end":
        data[header["gd"] * 512:header["gd"] * 512 + 4] = (1 << 28).to_bytes(4, "little")
    elif name == "grain-past-end":
        data[gt0 * 512:gt0 * 512 + 4] = (1 << 27).to_bytes(4, "little")
    elif name == "descriptor":
        data[512:1024] = b"# Disk DescriptorFile\nversion=1\nRW 8192 SPARSE \"x\n".ljust(512, b"\0")
    elif name == "version":
        data[4:8] = (7).to_bytes(4, "little")
    return image.write_bytes(bytes(data)) and image


REFUSED = ["truncated", "capacity", "gtes", "granularity", "gd-past-end", "descriptor", "version"]
FAILING_READS = ["gt-past-end", "grain-past-end"]


def test_corrupt_images_are_refused_or_fail_with_eio(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    for name in REFUSED:
        image = corrupt(tmp_path, name)
        proc = blockimg("info", "-f", "vmdk", image, ok=False)
        assert proc.returncode != 0 and "Could not open" in proc.stderr and proc.stderr.count("\n") >= 1, (name, proc.stderr)
    good = tmp_path / "good.vmdk"
    qemu_img("create", "-f", "vmdk", good, "4M")
    qemu_io(good, "write -P 0x55 0 4M")
    args = export_args(good, writable=False, name="good", node="g")
    for index, name in enumerate(FAILING_READS):
        args += export_args(corrupt(tmp_path, name), writable=False, name=name, node=f"c{index}")
    daemon = start_blockd(args=args)
    for name in FAILING_READS:
        h = nbd.NBD()
        h.connect_uri(daemon.uri(name))
        with pytest.raises(nbd.Error) as failure:
            h.pread(65536, 0)
        assert failure.value.errno in (5, None) or "Input/output" in str(failure.value), (name, failure.value)
        h.shutdown()
        proc = blockimg("check", tmp_path / f"{name}.vmdk", ok=False)
        assert proc.returncode == 1 and ("could not get cluster_offset" in proc.stderr or "points after EOF" in proc.stderr), proc.stderr
    # qemu-img's own words for a grain past the end of the file (a grain table past the end reads as
    # zeroes in QEMU, so its check passes there; blockimg reports it).
    proc = blockimg("check", tmp_path / "grain-past-end.vmdk", ok=False)
    qproc = qemu_img("check", tmp_path / "grain-past-end.vmdk", ok=False)
    assert (proc.returncode, proc.stdout) == (qproc.returncode, qproc.stdout)
    assert proc.stderr.replace("blockimg", "qemu-img") == qproc.stderr
    h = nbd.NBD()
    h.connect_uri(daemon.uri("good"))
    assert h.pread(4 * MiB, 0) == b"\x55" * (4 * MiB)
    h.shutdown()
    # A backing file that names the image itself is a loop, refused at open.
    loop = tmp_path / "loop.vmdk"
    write_descriptor(loop, "monolithicFlat", ['RW 2048 FLAT "good.vmdk" 0'], parent="loop.vmdk")
    proc = blockimg("info", "-f", "vmdk", loop, ok=False)
    assert proc.returncode == 1 and "backing chain loop" in proc.stderr, proc.stderr
