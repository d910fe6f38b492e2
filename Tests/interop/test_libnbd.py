"""blockd through libnbd (the reference NBD client library): negotiation in opt mode, every command,
structured reads with holes, block status, error numbers and multi-connection consistency.

Every byte read is checked against the image file itself, and every extent against the file's own
SEEK_DATA/SEEK_HOLE map."""
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import import_or_skip, skip_or_fail

nbd = import_or_skip("nbd")

KiB = 1 << 10
MiB = 1 << 20
SIZE = 8 * MiB
# Data extents written into an otherwise sparse image (everything else is a hole).
DATA = [(0, 64 * KiB), (1 * MiB, 128 * KiB), (3 * MiB - 4 * KiB, 8 * KiB), (6 * MiB, 1 * MiB)]
# A fragmented stretch: 4 KiB of data every 8 KiB for 1 MiB (256 alternating extents).
FRAGMENTED = (4 * MiB, 1 * MiB)
DESCRIPTION = "interop test disk"


def file_map(path: Path, start: int = 0, end: int | None = None) -> list[tuple[int, int, bool]]:
    """The file's own allocation map as [(offset, length, is_data)], from SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size if end is None else end
        out = []
        pos = start
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                data = end
            if data > pos:
                out.append((pos, min(data, end) - pos, False))
                pos = min(data, end)
                continue
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
            out.append((pos, hole - pos, True))
            pos = hole
        return out
    finally:
        os.close(fd)


def file_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def expected_flags(is_data: bool) -> int:
    return 0 if is_data else nbd.STATE_HOLE | nbd.STATE_ZERO


@dataclass
class Disk:
    image: Path
    blockd: object

    def connect(self, export: str = "disk0", structured: bool = True, meta: bool = True, strict: bool = True):
        h = nbd.NBD()
        h.set_request_structured_replies(structured)
        if meta:
            h.add_meta_context("base:allocation")
        h.connect_uri(self.blockd.uri(export))
        if not strict:
            h.set_strict_mode(0)  # send the request as is: the error must come from the server
        return h


@pytest.fixture
def disk(tmp_path, start_blockd) -> Disk:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(SIZE)
        for offset, length in DATA:
            f.seek(offset)
            f.write(os.urandom(length))
        base, length = FRAGMENTED
        for at in range(base, base + length, 8 * KiB):
            f.seek(at)
            f.write(os.urandom(4 * KiB))
    layout = [(o, n) for o, n, d in file_map(image) if d]
    if not any(not d for _, _, d in file_map(image)):
        skip_or_fail("the file system under tmp_path does not report holes")
    assert layout[:2] == DATA[:2], f"file system allocation granularity too coarse for this test: {layout[:4]}"
    blockd = start_blockd(args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=f0",
        "--export", f"type=nbd,id=e0,node-name=disk0,name=disk0,writable=on,description={DESCRIPTION}",
        "--export", "type=nbd,id=e1,node-name=disk0,name=ro0,writable=off",
    ])
    return Disk(image, blockd)


def expect_error(name: str, call, *args, **kwargs):
    """Runs a libnbd call that must fail with errno `name` (e.g. 'EINVAL')."""
    with pytest.raises(nbd.Error) as info:
        call(*args, **kwargs)
    assert info.value.errno == name, f"expected {name}, got {info.value!r}"


# --- Negotiation ---------------------------------------------------------------------------------

def test_opt_mode_list_info_meta_context_go(disk):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(disk.blockd.uri())
    assert h.aio_is_negotiating()
    assert h.get_protocol() == "newstyle-fixed"
    assert h.get_structured_replies_negotiated()

    listed = []
    assert h.opt_list(lambda name, description: listed.append((name, description)) or 0) == 2
    assert listed == [("disk0", DESCRIPTION), ("ro0", "")]

    contexts = []
    # No query: everything the export offers (qemu:allocation-depth only with allocation-depth=on).
    assert h.opt_list_meta_context(lambda name: contexts.append(name) or 0) == 1
    assert contexts == ["base:allocation"]
    for query, found in (("base:", ["base:allocation"]), ("base:allocation", ["base:allocation"]),
                         ("qemu:", []),
                         ("x-nosuch:thing", []), ("base:nosuch", [])):
        h.clear_meta_contexts()
        h.add_meta_context(query)
        contexts = []
        assert h.opt_list_meta_context(lambda name: contexts.append(name) or 0) == len(found), query
        assert contexts == found, query
    h.clear_meta_contexts()

    h.set_export_name("nosuch")
    expect_error("ENOENT", h.opt_info)  # NBD_REP_ERR_UNKNOWN
    assert h.aio_is_negotiating(), "a failed NBD_OPT_INFO must leave the session in negotiation"

    h.set_export_name("disk0")
    h.set_full_info(True)
    h.opt_info()
    assert h.get_size() == SIZE
    assert h.get_canonical_export_name() == "disk0"
    assert h.get_export_description() == DESCRIPTION
    assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
    assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB
    assert not h.is_read_only()

    h.set_export_name("ro0")
    h.opt_info()
    assert h.is_read_only()
    assert h.get_size() == SIZE

    h.set_export_name("disk0")
    h.add_meta_context("base:allocation")
    h.opt_go()
    assert h.aio_is_ready()
    assert h.get_size() == SIZE
    assert h.can_meta_context("base:allocation")
    assert h.pread(64 * KiB, 0) == file_bytes(disk.image, 0, 64 * KiB)
    h.shutdown()


def test_opt_go_unknown_export_then_valid(disk):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(disk.blockd.uri())
    h.set_export_name("nosuch")
    expect_error("ENOENT", h.opt_go)
    h.set_export_name("ro0")
    h.opt_go()
    assert h.is_read_only() and h.get_size() == SIZE
    h.shutdown()


def test_opt_abort(disk):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(disk.blockd.uri())
    h.opt_abort()
    assert h.aio_is_closed()


@pytest.mark.parametrize("export,structured", [("disk0", True), ("ro0", True), ("disk0", False)])
def test_transmission_flags(disk, export, structured):
    h = disk.connect(export, structured=structured, meta=structured)
    writable = export == "disk0"
    assert h.get_size() == SIZE
    assert h.get_structured_replies_negotiated() == structured
    assert h.is_read_only() == (not writable)
    assert h.can_flush() and h.can_fua() and h.can_cache() and h.can_multi_conn()
    assert h.can_trim() == writable
    assert h.can_zero() == writable
    assert h.can_fast_zero() == writable  # FAST_ZERO MUST be clear when WRITE_ZEROES is
    assert h.can_df() == structured       # DF MUST be clear without structured replies
    assert h.can_meta_context("base:allocation") == structured
    assert not h.is_rotational()
    h.shutdown()


@pytest.mark.parametrize("rotational", [True, False], ids=["rotational", "non-rotational"])
def test_rotational_comes_from_the_device_queue(start_blockd, tmp_path, rotational):
    """NBD_FLAG_ROTATIONAL of a host_device export says what the device's queue/rotational says: a
    loop device set to 1, then to 0 (root only; a regular file is never rotational, see above)."""
    import subprocess
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(8 << 20)
    attach = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if attach.returncode != 0:
        skip_or_fail(f"cannot attach a loop device (needs root and /dev/loop*): {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        Path(f"/sys/block/{Path(device).name}/queue/rotational").write_text("1" if rotational else "0")
        daemon = start_blockd(args=[
            "--blockdev", f"driver=host_device,node-name=dev0,filename={device}",
            "--blockdev", "driver=raw,node-name=disk0,file=dev0",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"])
        h = nbd.NBD()
        h.connect_uri(daemon.uri())
        assert h.is_rotational() == rotational
        h.shutdown()
        assert daemon.stop() == 0
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


# --- Reads and writes ----------------------------------------------------------------------------

@pytest.mark.parametrize("structured", [True, False])
def test_pwrite_pread_with_and_without_fua(disk, structured):
    h = disk.connect(structured=structured)
    cases = [(0, 4096), (12345, 3), (1, 1), (SIZE - 7, 7), (2 * MiB + 511, 70000), (5 * MiB, 1 * MiB)]
    for i, (offset, length) in enumerate(cases):
        data = os.urandom(length)
        h.pwrite(data, offset, nbd.CMD_FLAG_FUA if i % 2 else 0)
        assert file_bytes(disk.image, offset, length) == data, f"file differs after write at {offset}"
        assert h.pread(length, offset) == data
    # A read with FUA set must be accepted (FUA is valid on every command once SEND_FUA is advertised).
    h.set_strict_mode(0)
    assert h.pread(4096, 0, nbd.CMD_FLAG_FUA) == file_bytes(disk.image, 0, 4096)
    assert h.pread(4 * MiB, 0) == file_bytes(disk.image, 0, 4 * MiB)
    h.shutdown()


def structured_chunks(h, count, offset, flags=0):
    chunks = []

    def chunk(buf, at, status, error):
        chunks.append((status, at, bytes(buf)))
        return 0

    buf = h.pread_structured(count, offset, chunk, flags)
    return bytes(buf), chunks


def check_coverage(chunks, offset, count):
    """Content chunks lie inside the request, do not overlap, and cover it."""
    spans = sorted((at, at + len(data)) for _, at, data in chunks)
    assert spans, "no chunks"
    assert spans[0][0] == offset and spans[-1][1] == offset + count, spans[:3]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start, f"gap or overlap at {end}..{start}"


def test_pread_structured_data_region(disk):
    h = disk.connect()
    buf, chunks = structured_chunks(h, 64 * KiB, 0)
    assert [c[0] for c in chunks] == [nbd.READ_DATA]
    check_coverage(chunks, 0, 64 * KiB)
    assert buf == chunks[0][2] == file_bytes(disk.image, 0, 64 * KiB)
    h.shutdown()


def test_pread_structured_sparse_sends_holes(disk):
    h = disk.connect()
    count = 3 * MiB  # >= 256 KiB, over data and holes
    buf, chunks = structured_chunks(h, count, 0)
    check_coverage(chunks, 0, count)
    assert buf == file_bytes(disk.image, 0, count)
    holes = [(at, len(data)) for status, at, data in chunks if status == nbd.READ_HOLE]
    assert holes, f"no OFFSET_HOLE chunk for a {count}-byte read over holes: {[(s, a, len(d)) for s, a, d in chunks]}"
    fmap = file_map(disk.image, 0, count)
    for at, length in holes:
        assert any(not d and o <= at and at + length <= o + n for o, n, d in fmap), f"hole chunk {at}+{length} over data"
    for status, at, data in chunks:
        assert status in (nbd.READ_DATA, nbd.READ_HOLE)
        assert data == file_bytes(disk.image, at, len(data))
    h.shutdown()


def test_pread_structured_df_gives_one_chunk(disk):
    h = disk.connect()
    count = 3 * MiB
    buf, chunks = structured_chunks(h, count, 0, nbd.CMD_FLAG_DF)
    assert [(c[0], c[1], len(c[2])) for c in chunks] == [(nbd.READ_DATA, 0, count)]
    assert buf == file_bytes(disk.image, 0, count)
    h.shutdown()


@pytest.mark.parametrize("count", [512 * KiB, 1 * MiB])
def test_pread_fragmented_sparse_region(disk, count):
    """A large read over many small data/hole extents must still return every byte (the spec: the
    chunks MUST cover the whole request)."""
    h = disk.connect()
    offset = FRAGMENTED[0]
    assert len(file_map(disk.image, offset, offset + count)) == count // (4 * KiB)
    buf, chunks = structured_chunks(h, count, offset)
    check_coverage(chunks, offset, count)
    assert buf == file_bytes(disk.image, offset, count)
    assert h.pread(count, offset) == file_bytes(disk.image, offset, count)
    h.shutdown()


# --- Block status --------------------------------------------------------------------------------

def block_status(h, count, offset, flags=0):
    got = {}

    def extent(context, at, entries, error):
        got[context] = list(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(count, offset, extent, flags)
    assert list(got) == ["base:allocation"]
    return got["base:allocation"]


def merged(extents):
    out = []
    for length, flags in extents:
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out


def test_block_status_matches_file(disk):
    h = disk.connect()
    seen = []
    offset = 0
    while offset < SIZE:
        count = SIZE - offset
        extents = block_status(h, count, offset)
        assert extents and all(length > 0 for length, _ in extents)
        assert sum(length for length, _ in extents[:-1]) < count, "extents beyond the final one exceed the request"
        # Clip a final extent that runs past the request (allowed) before comparing.
        for length, flags in extents:
            length = min(length, SIZE - offset)
            seen.append((length, flags))
            offset += length
            if offset >= SIZE:
                break
    expected = merged([(n, expected_flags(d)) for _, n, d in file_map(disk.image)])
    assert merged(seen) == expected
    h.shutdown()


@pytest.mark.parametrize("offset,count", [(0, SIZE), (64 * KiB, 2 * MiB), (1 * MiB + 5, 4 * KiB), (6 * MiB, 512 * KiB),
                                          (SIZE - 4096, 4096)])
def test_block_status_req_one(disk, offset, count):
    h = disk.connect()
    extents = block_status(h, count, offset, nbd.CMD_FLAG_REQ_ONE)
    assert len(extents) == 1, f"REQ_ONE answered with {len(extents)} extents"
    length, flags = extents[0]
    assert 0 < length <= count
    first = file_map(disk.image, offset, offset + count)[0]
    assert flags == expected_flags(first[2])
    assert length <= first[1], f"extent {length} crosses the file's boundary at {offset + first[1]}"
    h.shutdown()


def test_block_status_tracks_writes_and_zeroes(disk):
    h = disk.connect()
    h.pwrite(os.urandom(64 * KiB), 2 * MiB)
    assert block_status(h, 64 * KiB, 2 * MiB, nbd.CMD_FLAG_REQ_ONE) == [(64 * KiB, 0)]
    h.zero(64 * KiB, 2 * MiB)  # may punch the hole again; either way it must read as zeroes
    assert h.pread(64 * KiB, 2 * MiB) == bytes(64 * KiB)
    for length, flags in block_status(h, 64 * KiB, 2 * MiB):
        assert flags in (0, nbd.STATE_ZERO, nbd.STATE_HOLE | nbd.STATE_ZERO)
    h.shutdown()


# --- Trim, zero, cache, flush --------------------------------------------------------------------

@pytest.mark.parametrize("flags", [0, nbd.CMD_FLAG_FUA])
def test_trim(disk, flags):
    h = disk.connect()
    offset, length = 1 * MiB, 128 * KiB
    h.trim(length, offset, flags)
    # After a trim the contents are unspecified, but what is read must be what the image holds.
    assert h.pread(length, offset) == file_bytes(disk.image, offset, length)
    h.pwrite(b"\xaa" * 4096, offset)
    assert h.pread(4096, offset) == b"\xaa" * 4096 == file_bytes(disk.image, offset, 4096)
    h.shutdown()


@pytest.mark.parametrize("flags", ["NONE", "NO_HOLE", "FUA", "FAST_ZERO", "NO_HOLE|FAST_ZERO"])
def test_zero(disk, flags):
    bits = 0
    for name in flags.split("|"):
        bits |= 0 if name == "NONE" else getattr(nbd, "CMD_FLAG_" + name)
    h = disk.connect()
    offset, length = 6 * MiB + 4096, 256 * KiB   # inside a data extent
    try:
        h.zero(length, offset, bits)
    except nbd.Error as error:
        # Only a fast-zero request may fail, with ENOTSUP, and then the contents must be unchanged.
        assert bits & nbd.CMD_FLAG_FAST_ZERO and error.errno == "ENOTSUP", repr(error)
        assert h.pread(length, offset) == file_bytes(disk.image, offset, length) != bytes(length)
    else:
        assert h.pread(length, offset) == bytes(length)
        assert file_bytes(disk.image, offset, length) == bytes(length)
    # Neighbours untouched.
    assert h.pread(4096, offset - 4096) == file_bytes(disk.image, offset - 4096, 4096) != bytes(4096)
    assert h.pread(4096, offset + length) == file_bytes(disk.image, offset + length, 4096) != bytes(4096)
    h.shutdown()


def test_zero_no_hole_provisions_the_range(disk):
    """NBD_CMD_FLAG_NO_HOLE: the area MUST be fully provisioned afterwards."""
    h = disk.connect()
    offset, length = 7 * MiB, 1 * MiB   # a hole in the image
    before = os.stat(disk.image).st_blocks
    h.zero(length, offset, nbd.CMD_FLAG_NO_HOLE)
    after = os.stat(disk.image).st_blocks
    assert (after - before) * 512 >= length, f"only {(after - before) * 512} bytes provisioned"
    assert h.pread(length, offset) == bytes(length)
    h.shutdown()


def test_cache_and_flush(disk):
    h = disk.connect()
    h.cache(1 * MiB, 0)
    h.cache(SIZE, 0)
    assert h.pread(64 * KiB, 0) == file_bytes(disk.image, 0, 64 * KiB)
    data = os.urandom(8192)
    h.pwrite(data, 3 * MiB)
    h.flush()
    assert file_bytes(disk.image, 3 * MiB, 8192) == data
    h.shutdown()


def test_read_only_export_reads_and_caches(disk):
    h = disk.connect("ro0")
    assert h.pread(128 * KiB, 1 * MiB) == file_bytes(disk.image, 1 * MiB, 128 * KiB)
    h.cache(64 * KiB, 0)
    h.flush()
    assert block_status(h, SIZE, 0)[0] == (64 * KiB, 0)
    h.shutdown()


# --- Errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("structured", [True, False])
def test_error_numbers_from_server(disk, structured):
    h = disk.connect(structured=structured, strict=False)
    expect_error("EINVAL", h.pread, 4096, SIZE - 1024)      # read past the end
    expect_error("EINVAL", h.pread, 1, SIZE)                # read starting at the end
    expect_error("EINVAL", h.pread, 512, 1 << 62)           # far beyond
    expect_error("ENOSPC", h.pwrite, b"x" * 4096, SIZE - 1024)  # write past the end
    expect_error("ENOSPC", h.zero, 4096, SIZE - 1024)       # write zeroes past the end
    expect_error("EINVAL", h.trim, 4096, SIZE - 1024)       # trim past the end
    expect_error("EINVAL", h.cache, 4096, SIZE - 1024)
    # The connection is still fine and nothing was written past the end or at its edge.
    assert os.stat(disk.image).st_size == SIZE
    assert h.pread(1024, SIZE - 1024) == file_bytes(disk.image, SIZE - 1024, 1024)
    h.shutdown()


@pytest.mark.parametrize("structured", [True, False])
def test_writes_on_read_only_export_fail_with_eperm(disk, structured):
    before = file_bytes(disk.image, 0, 64 * KiB)
    h = disk.connect("ro0", structured=structured, meta=structured, strict=False)
    expect_error("EPERM", h.pwrite, b"x" * 4096, 0)
    expect_error("EPERM", h.pwrite, b"x" * 4096, 0, nbd.CMD_FLAG_FUA)
    expect_error("EPERM", h.zero, 4096, 0)
    expect_error("EPERM", h.trim, 4096, 0)
    assert file_bytes(disk.image, 0, 64 * KiB) == before
    assert h.pread(64 * KiB, 0) == before
    h.shutdown()


def test_block_status_without_context_is_einval(disk):
    h = disk.connect(meta=False, strict=False)
    expect_error("EINVAL", h.block_status, 4096, 0, lambda *a: 0)
    assert h.pread(4096, 0) == file_bytes(disk.image, 0, 4096)
    h.shutdown()


# --- Several connections -------------------------------------------------------------------------

def test_multi_conn_consistency(disk):
    a = disk.connect()
    b = disk.connect()
    c = disk.connect("ro0")
    assert a.can_multi_conn() and b.can_multi_conn()
    for i in range(8):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        offset = 2 * MiB + i * 12345
        data = os.urandom(8192 + i)
        if i % 4 < 2:
            writer.pwrite(data, offset)
            writer.flush()
        else:
            writer.pwrite(data, offset, nbd.CMD_FLAG_FUA)
        assert reader.pread(len(data), offset) == data
        assert c.pread(len(data), offset) == data
        assert file_bytes(disk.image, offset, len(data)) == data
    # A zero on one connection is seen by the others.
    a.zero(64 * KiB, 0, nbd.CMD_FLAG_FUA)
    assert b.pread(64 * KiB, 0) == bytes(64 * KiB) == c.pread(64 * KiB, 0)
    for h in (a, b, c):
        h.shutdown()
