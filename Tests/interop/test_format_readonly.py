"""The read-only formats bochs, cloop and dmg against qemu-img: images made by the tools of their
world (bximage, create_compressed_fs) or, for dmg, by legacy_images.py (each first read back by
qemu-img, or by dmg2img for bzip2 chunks, which Debian's qemu-img is built without), exported by
blockd and read back byte for byte; a writable open refused as QEMU refuses it; probing as qemu-img
probes; a corrupt-image catalogue refused at open or failing with EIO while another export serves;
and archipelago refused with a message."""
import json
import os
import struct
import zlib
from pathlib import Path

import nbd
import pytest

import legacy_images
from client_helpers import run, output
from conftest import blockd_binary, require
from qmp_client import launcher  # noqa: F401 (fixture)

MiB = 1024 * 1024


def export_args(image: Path, fmt: str, read_only: bool = True) -> list[str]:
    ro = ",read-only=on" if read_only else ""
    return ["--blockdev", f"driver=file,node-name=f0,filename={image},read-only=on",
            "--blockdev", f"driver={fmt},node-name=disk0,file=f0{ro}",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0"]


def qemu_raw(image: Path, fmt: str, out: Path) -> bytes:
    run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, out], timeout=60)
    return out.read_bytes()


def export_bytes(daemon, out: Path) -> bytes:
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", daemon.uri(), out], timeout=60)
    return out.read_bytes()


def assert_same_as_qemu(start_blockd, tmp_path: Path, image: Path, fmt: str, expected: bytes | None = None) -> None:
    """qemu-img reads `expected` (when given) from the image; blockd's export reads what qemu-img reads,
    and `qemu-img compare` of the export against the image (as `fmt`) agrees."""
    reference = qemu_raw(image, fmt, tmp_path / "qemu.raw")
    if expected is not None:
        assert reference == expected, "qemu-img does not read the data the image was made from"
    daemon = start_blockd(args=export_args(image, fmt), writable=False)
    assert export_bytes(daemon, tmp_path / "blockd.raw") == reference
    run(["qemu-img", "compare", "-f", "raw", "-F", fmt, daemon.uri(), image], timeout=60)
    info = json.loads(run(["nbdinfo", "--json", daemon.uri()]).stdout)
    assert info["exports"][0]["export-size"] == len(reference)


def patterned(size: int, seed: int) -> bytes:
    """Random-looking data with zero runs, so that the tools leave holes and compress unevenly."""
    out = bytearray(os.urandom(size))
    for start in range(0, size, 7 * 65536):
        out[start:start + 65536 * 2] = bytes(min(65536 * 2, size - start))
    return bytes(out)


# ---- bochs ------------------------------------------------------------------------------------

def test_bochs_bximage_images(start_blockd, tmp_path):
    require("bximage", "qemu-img", "nbdinfo")
    empty = tmp_path / "empty.img"
    run(["bximage", "-func=create", "-hd=10M", "-imgmode=growing", "-q", empty])
    assert_same_as_qemu(start_blockd, tmp_path, empty, "bochs")
    source = tmp_path / "source.raw"
    data = patterned(6 * MiB, 1)
    source.write_bytes(data)
    grown = tmp_path / "grown.img"
    run(["bximage", "-func=convert", "-imgmode=growing", "-q", source, grown])
    assert_same_as_qemu(start_blockd, tmp_path, grown, "bochs", expected=data)


def test_bochs_version1_header(start_blockd, tmp_path):
    """A version 1 header (the disk size four bytes earlier), made from a bximage image."""
    require("bximage", "qemu-img")
    source = tmp_path / "source.raw"
    data = patterned(2 * 1024 * 1024, 6)
    source.write_bytes(data)
    image = tmp_path / "v2.img"
    run(["bximage", "-func=convert", "-imgmode=growing", "-q", source, image])
    header = bytearray(image.read_bytes())
    disk = struct.unpack_from("<Q", header, 88)[0]
    struct.pack_into("<I", header, 64, 0x10000)
    struct.pack_into("<Q", header, 84, disk)
    struct.pack_into("<I", header, 92, 0)
    v1 = tmp_path / "v1.img"
    v1.write_bytes(bytes(header))
    assert_same_as_qemu(start_blockd, tmp_path, v1, "bochs", expected=data)


def test_writable_open_refused(tmp_path):
    """bochs, cloop and dmg nodes opened writable are refused with QEMU's message."""
    require("bximage", "create_compressed_fs")
    bochs = tmp_path / "g.img"
    run(["bximage", "-func=create", "-hd=10M", "-imgmode=growing", "-q", bochs])
    source = tmp_path / "s.raw"
    source.write_bytes(bytes(65536))
    cloop = tmp_path / "c.cloop"
    run(["create_compressed_fs", "-q", "-B", "65536", source, cloop])
    dmg = tmp_path / "d.dmg"
    dmg.write_bytes(legacy_images.build_dmg(bytes(512 * 8), [("zero", 8)]))
    for image, fmt in ((bochs, "bochs"), (cloop, "cloop"), (dmg, "dmg")):
        proc = run([blockd_binary(), *export_args(image, fmt, read_only=False),
                    "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/x.sock"], ok=False, timeout=30)
        assert proc.returncode == 1 and "Image is read-only" in output(proc), (fmt, output(proc))


# ---- cloop ------------------------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [16384, 65536])
def test_cloop_create_compressed_fs_images(start_blockd, tmp_path, block_size):
    require("create_compressed_fs", "qemu-img", "nbdinfo")
    source = tmp_path / "source.raw"
    data = patterned(3 * MiB + 4096, 2)
    source.write_bytes(data)
    image = tmp_path / "image.cloop"
    run(["create_compressed_fs", "-q", "-B", str(block_size), source, image], timeout=60)
    padded = data + bytes(-len(data) % block_size)
    assert_same_as_qemu(start_blockd, tmp_path, image, "cloop", expected=padded)


# ---- dmg --------------------------------------------------------------------------------------

DMG_LAYOUTS = {
    "zlib-raw-zero": ([("raw", 64), ("zero", 32), ("zlib", 256), ("ignore", 16), ("zlib", 128), ("raw", 40)],
                      [(64, 32), (352, 16)]),
    "zlib-only": ([("zlib", 2048), ("zlib", 1), ("zlib", 200)], []),
    "raw-only": ([("raw", 1000)], []),
}


@pytest.mark.parametrize("container", ["plist", "rsrc"])
@pytest.mark.parametrize("name", sorted(DMG_LAYOUTS))
def test_dmg_generated_images(start_blockd, tmp_path, container, name):
    require("qemu-img", "nbdinfo")
    layout, zeroes = DMG_LAYOUTS[name]
    data = legacy_images.sample_data(sum(n for _, n in layout), zeroes)
    image = tmp_path / "image.dmg"
    image.write_bytes(legacy_images.build_dmg(data, layout, container, partitions=3))
    assert_same_as_qemu(start_blockd, tmp_path, image, "dmg", expected=data)


def test_dmg_bzip2_chunks(start_blockd, tmp_path):
    """Debian's qemu-img has no dmg-bzip2 module, so dmg2img is the first reader of the image."""
    require("dmg2img", "qemu-img")
    layout = [("bzip2", 300), ("raw", 8), ("bzip2", 64), ("zero", 8), ("zlib", 40)]
    data = legacy_images.sample_data(sum(n for _, n in layout), [(372, 8)])
    image = tmp_path / "bz.dmg"
    image.write_bytes(legacy_images.build_dmg(data, layout, "plist", partitions=1))
    run(["dmg2img", "-s", "-i", image, "-o", tmp_path / "dmg2img.raw"], timeout=60)
    assert (tmp_path / "dmg2img.raw").read_bytes() == data, "dmg2img does not read the generated image"
    daemon = start_blockd(args=export_args(image, "dmg"), writable=False)
    assert export_bytes(daemon, tmp_path / "blockd.raw") == data


def test_dmg_lzfse_chunk_fails_with_eio(start_blockd, tmp_path):
    layout = [("raw", 16), ("lzfse", 16), ("zlib", 16)]
    data = legacy_images.sample_data(48, [])
    image = tmp_path / "lz.dmg"
    image.write_bytes(legacy_images.build_dmg(data, layout, "plist", partitions=1))
    daemon = start_blockd(args=export_args(image, "dmg"), writable=False)
    assert "lzfse" in daemon.log_text()
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(16 * 512, 0) == data[:16 * 512]
    assert h.pread(16 * 512, 32 * 512) == data[32 * 512:]
    with pytest.raises(nbd.Error) as failure:
        h.pread(512, 16 * 512)
    assert failure.value.errno == "EIO" or "Input/output" in str(failure.value)
    h.shutdown()
    assert "lzfse" in daemon.log_text()


# ---- probing ----------------------------------------------------------------------------------

def test_probing_as_qemu_img(tmp_path):
    """`blockimg info` without -f names the format qemu-img names: bochs and cloop by their headers,
    dmg by its file name suffix (a dmg under another name is raw to both)."""
    require("bximage", "create_compressed_fs", "qemu-img")
    blockimg = os.environ.get("BLOCKIMG")
    if not blockimg:
        pytest.fail("BLOCKIMG is not set")
    bochs = tmp_path / "b.img"
    run(["bximage", "-func=create", "-hd=10M", "-imgmode=growing", "-q", bochs])
    raw = tmp_path / "r.raw"
    raw.write_bytes(patterned(MiB, 3))
    cloop = tmp_path / "c.img"
    run(["create_compressed_fs", "-q", "-B", "65536", raw, cloop])
    data = legacy_images.sample_data(64, [])
    dmg = tmp_path / "d.dmg"
    dmg.write_bytes(legacy_images.build_dmg(data, [("zlib", 64)]))
    undotted = tmp_path / "d.img"
    undotted.write_bytes(dmg.read_bytes())
    for image in (bochs, cloop, dmg, undotted):
        theirs = json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)
        ours = json.loads(run([blockimg, "info", "--output=json", image]).stdout)
        assert ours["format"] == theirs["format"], (image, ours, theirs)
        if theirs["format"] != "raw":  # qemu-img rounds a raw file's size up to a sector
            assert ours["virtual-size"] == theirs["virtual-size"], (image, ours, theirs)


# ---- corrupt images ---------------------------------------------------------------------------

def _bochs_image(tmp_path: Path) -> bytes:
    image = tmp_path / "good-bochs.img"
    source = tmp_path / "good-bochs.raw"
    source.write_bytes(patterned(2 * MiB, 4))
    run(["bximage", "-func=convert", "-imgmode=growing", "-q", source, image])
    return image.read_bytes()


def _put(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def bochs_cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    catalog = struct.unpack_from("<I", good, 72)[0]
    first = next(i for i in range(catalog) if struct.unpack_from("<I", good, 512 + 4 * i)[0] != 0xFFFFFFFF)
    return {
        "bad-magic": (b"Bochs Virtual HD Imagf" + good[22:], "open"),
        "bad-version": (_put(good, 64, "<I", 0x30000), "open"),
        "catalog-too-large": (_put(good, 72, "<I", 0x800000), "open"),
        "catalog-too-small": (_put(good, 72, "<I", 1), "open"),
        "extent-too-small": (_put(good, 80, "<I", 16), "open"),
        "extent-too-large": (_put(good, 80, "<I", 0x1000000), "open"),
        "truncated-catalog": (good[:600], "open"),
        "entry-past-end": (_put(good, 512 + 4 * first, "<I", 0x7FFFFFF0), "eio"),
        "truncated-data": (good[:len(good) - 100000], "eio"),
    }


def cloop_cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    count = struct.unpack_from(">I", good, 132)[0]
    offsets = [struct.unpack_from(">Q", good, 136 + 8 * i)[0] for i in range(count + 1)]
    largest = max(range(count), key=lambda i: offsets[i + 1] - offsets[i])
    middle = (offsets[largest] + offsets[largest + 1]) // 2
    return {
        "block-size-odd": (_put(good, 128, ">I", 1000), "open"),
        "block-size-zero": (_put(good, 128, ">I", 0), "open"),
        "block-size-huge": (_put(good, 128, ">I", 128 * MiB), "open"),
        "too-many-blocks": (_put(good, 132, ">I", 0x1FFFFFFF), "open"),
        "table-past-end": (_put(good, 132, ">I", 10_000_000), "open"),
        "not-monotonic": (_put(good, 136 + 8, ">Q", 0), "open"),
        "block-huge": (_put(good, 136 + 8 * count, ">Q", 1 << 40), "open"),
        "offset-past-end": (_put(_put(good, 136 + 8 * count, ">Q", len(good) + 4 * MiB), 136 + 8 * (count - 1), ">Q", len(good) + MiB), "eio"),
        "bad-zlib": (good[:middle] + bytes(64) + good[middle + 64:], "eio"),
        "truncated": (good[:len(good) // 2], "eio"),
    }


def only_table(entry: tuple) -> bytes:
    """A dmg of nothing but a property list with one chunk entry and the trailer."""
    xml = legacy_images._plist([legacy_images._mish(0, 16, [entry])])
    return xml + legacy_images._koly(0, (0, 0), (0, len(xml)), 16)


def dmg_cases() -> dict[str, tuple[bytes, str]]:
    layout = [("raw", 16), ("zlib", 64), ("zero", 16)]
    data = legacy_images.sample_data(96, [(80, 16)])
    good = legacy_images.build_dmg(data, layout, "plist", partitions=1)
    good_rsrc = legacy_images.build_dmg(data, layout, "rsrc", partitions=1)
    koly = len(good) - 512
    koly_rsrc = len(good_rsrc) - 512
    xml_start = struct.unpack_from(">Q", good, koly + 0xD8)[0]
    zlib_at = good.index(zlib.compress(data[16 * 512:80 * 512])[:8])
    block = legacy_images._mish(0, 96, [(0x80000005, 0, 0, 96, 0, 128 * MiB)])
    huge_length = legacy_images._plist([block])
    huge_image = good[:xml_start] + huge_length + good[koly:]
    huge_image = _put(huge_image, len(huge_image) - 512 + 0xE0, ">Q", len(huge_length))
    return {
        "too-short": (good[-300:], "open"),
        "no-trailer": (good[:koly] + b"kola" + good[koly + 4:], "open"),
        "data-fork-past-trailer": (_put(good, koly + 0x18, ">Q", koly + 1), "open"),
        "rsrc-past-trailer": (_put(good_rsrc, koly_rsrc + 0x30, ">Q", 1 << 40), "open"),
        "xml-past-trailer": (_put(good, koly + 0xE0, ">Q", 1 << 40), "open"),
        "no-table": (_put(good, koly + 0xE0, ">Q", 0), "open"),
        "unclosed-data": (good[:koly].replace(b"</data>", b"</date>") + good[koly:], "open"),
        "chunk-length-huge": (huge_image, "open"),
        "resource-length-zero": (_put(good_rsrc, struct.unpack_from(">Q", good_rsrc, koly_rsrc + 0x28)[0] + 256, ">I", 0), "open"),
        "bad-zlib": (good[:zlib_at] + bytes(16) + good[zlib_at + 16:], "eio"),
        "sectors-beyond-chunks": (_put(good, koly + 0x1EC, ">Q", 200), "eio"),
        "raw-chunk-past-end": (only_table((1, 0, 0, 16, 1 << 40, 8192)), "eio"),
        "zlib-chunk-past-end": (only_table((0x80000005, 0, 0, 16, 0, 100000)), "eio"),
        "adc-chunk": (only_table((0x80000004, 0, 0, 16, 0, 10)), "eio"),
    }


def test_corrupt_catalogue(launcher, tmp_path):  # noqa: F811
    """Each corrupt image is refused at blockdev-add with a message, or opens and fails reads with
    EIO; meanwhile the daemon keeps serving another export."""
    require("bximage", "create_compressed_fs")
    source = tmp_path / "c.raw"
    source.write_bytes(patterned(MiB, 5))
    cloop_good = tmp_path / "good.cloop"
    run(["create_compressed_fs", "-q", "-B", "16384", source, cloop_good])
    cases = []
    for name, (data, expect) in bochs_cases(_bochs_image(tmp_path)).items():
        cases.append(("bochs", name, data, expect))
    for name, (data, expect) in cloop_cases(cloop_good.read_bytes()).items():
        cases.append(("cloop", name, data, expect))
    for name, (data, expect) in dmg_cases().items():
        cases.append(("dmg", name, data, expect))
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd("--blockdev", "driver=null-co,node-name=good,size=1M,read-zeroes=on",
                             "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=good,node-name=good,name=good")
    q = daemon.qmp()
    good = nbd.NBD()
    good.connect_uri(f"nbd+unix:///good?socket={sock}")
    for index, (fmt, name, data, expect) in enumerate(cases):
        image = tmp_path / f"case{index}-{name}.{fmt}"
        image.write_bytes(data)
        node = f"c{index}"
        reply = q.cmd("blockdev-add", {"driver": fmt, "node-name": node, "read-only": True,
                                       "file": {"driver": "file", "filename": str(image), "read-only": True}})
        if expect == "open":
            assert "error" in reply, f"{fmt} {name}: opened: {reply}"
            assert reply["error"]["desc"], (fmt, name, reply)
        else:
            assert "error" not in reply, f"{fmt} {name}: refused: {reply}"
            q.execute("block-export-add", {"type": "nbd", "id": f"e{index}", "node-name": node, "name": node})
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///{node}?socket={sock}")
            size = h.get_size()
            failed = False
            for offset in range(0, size, 256 * 1024):
                try:
                    h.pread(min(256 * 1024, size - offset), offset)
                except nbd.Error:
                    failed = True
            assert failed, f"{fmt} {name}: every read succeeded"
            h.shutdown()
            q.execute("block-export-del", {"id": f"e{index}"})
            q.execute("blockdev-del", {"node-name": node})
        assert good.pread(4096, 0) == bytes(4096), f"the other export broke after {fmt} {name}"
    good.shutdown()
    q.close()
    assert daemon.proc.poll() is None


def test_archipelago_refused(launcher):  # noqa: F811
    daemon = launcher.blockd()
    q = daemon.qmp()
    error = q.error("blockdev-add", {"driver": "archipelago", "node-name": "a", "volume": "v"})
    assert "archipelago" in error["desc"] and "3.0" in error["desc"], error
    q.close()
