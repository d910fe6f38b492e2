"""blockd driven by the real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy and fio.

Every test checks the bytes (in the backing file, read with Python, or read back through the export),
not only the clients' exit codes.  Transports, special nodes and read-only exports are in
test_clients_transport.py; the command line is in test_clients_cli.py."""
import json

import pytest

from conftest import make_image, require
from client_helpers import (KiB, MiB, file_extents, is_hole, merge_map, nbdinfo_json, nbdinfo_map,
                            output, pattern_image, qemu_img_info, qemu_io, read_file, run)


# ---------------------------------------------------------------------------------------------------
# qemu-img


def test_qemu_img_info_reports_virtual_size(start_blockd, tmp_path):
    require("qemu-img")
    size = 12 * MiB + 3 * 4096 + 512  # deliberately not a power of two
    image = make_image(tmp_path / "disk.img", size, b"random")
    d = start_blockd(image=image)
    info = qemu_img_info(d.uri())
    assert info["virtual-size"] == size
    assert info["format"] == "raw"
    null = start_blockd(image=None, null_size="1G", export="zero")
    assert qemu_img_info(null.uri())["virtual-size"] == 1 << 30


def test_qemu_img_compare_image_and_export(start_blockd, tmp_path):
    require("qemu-img")
    image = make_image(tmp_path / "disk.img", 8 * MiB, b"random")
    d = start_blockd(image=image, writable=False)
    proc = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", image, d.uri()])
    assert "identical" in proc.stdout
    # A copy that differs in one byte must be reported as different, at (or just before) that byte.
    copy = tmp_path / "copy.img"
    data = bytearray(read_file(image))
    where = 5 * MiB + 12345
    data[where] ^= 0xFF
    copy.write_bytes(bytes(data))
    proc = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", copy, d.uri()], ok=False)
    assert proc.returncode == 1, output(proc)
    assert "mismatch" in output(proc).lower()
    offset = int(output(proc).split("offset")[1].split("!")[0].strip())
    assert where - 512 < offset <= where


def test_qemu_img_convert_roundtrip_through_qcow2(start_blockd, tmp_path):
    require("qemu-img")
    size = 16 * MiB
    chunks = [(0, 64 * KiB), (1 * MiB + 4096, 300 * KiB), (7 * MiB - 512, 1 * MiB + 1024), (size - 4096, 4096)]
    original = pattern_image(tmp_path / "disk.img", size, chunks)
    d = start_blockd(image=tmp_path / "disk.img")

    # export -> qcow2 -> raw: the same bytes.
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", d.uri(), tmp_path / "out.qcow2"])
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", tmp_path / "out.qcow2", d.uri()])
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", tmp_path / "out.qcow2", tmp_path / "back.raw"])
    assert read_file(tmp_path / "back.raw") == original

    # A different (sparse) image, converted into the export with -n: every byte must be replaced,
    # including the ranges that are zero in the source but hold data in the export.
    new_chunks = [(512 * KiB, 128 * KiB), (3 * MiB + 17, 5000), (12 * MiB, 2 * MiB)]
    new = pattern_image(tmp_path / "new.raw", size, new_chunks)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", tmp_path / "new.raw", tmp_path / "new.qcow2"])
    run(["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", tmp_path / "new.qcow2", d.uri()])
    assert read_file(tmp_path / "disk.img") == new
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", tmp_path / "new.qcow2", d.uri()])

    # And back again from a raw source.
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", tmp_path / "back.raw", d.uri()])
    assert read_file(tmp_path / "disk.img") == original


# ---------------------------------------------------------------------------------------------------
# qemu-io


def test_qemu_io_patterns_at_straddling_offsets(start_blockd, tmp_path):
    require("qemu-io")
    size = 40 * MiB
    image = make_image(tmp_path / "disk.img", size)
    d = start_blockd(image=image)
    writes = [  # (pattern, offset, length): unaligned, straddling 4 KiB and 1 MiB boundaries, first and last byte
        (0xA5, 4095, 8194),
        (0x5A, MiB - 1, 2),
        (0x11, 0, 1),
        (0x22, size - 1, 1),
        (0x33, 2 * MiB + 511, 3 * MiB + 3),
        (0x44, 6 * MiB, 33 * MiB),  # larger than the 32 MiB maximum payload: the client has to split it
    ]
    qemu_io(d.uri(), *[f"write -P {p:#x} {o} {n}" for p, o, n in writes])
    # A second connection reads every pattern back, and the untouched gaps as zeroes.
    qemu_io(d.uri(), *[f"read -P {p:#x} {o} {n}" for p, o, n in writes],
            "read -P 0 1 4094", f"read -P 0 {4095 + 8194} {MiB - 1 - 4095 - 8194}",
            f"read -P 0 {MiB + 1} {MiB + 510}", f"read -P 0 {39 * MiB} {MiB - 1}")
    expected = bytearray(size)
    for p, o, n in writes:
        expected[o:o + n] = bytes([p]) * n
    assert read_file(image) == bytes(expected)
    # A mismatching pattern is reported as such (the read check is not vacuous).
    proc = qemu_io(d.uri(), "read -P 0xa6 4095 8194", ok=False)
    assert "Pattern verification failed" in output(proc)


def test_qemu_io_fua_writes_and_flush(start_blockd, tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 8 * MiB, b"random")
    before = read_file(image)
    d = start_blockd(image=image)
    qemu_io(d.uri(),
            "aio_write -f -P 0xcd 1M 64k",
            "aio_write -P 0xce 2M 64k",
            "aio_write -f -P 0xcf 3145727 4098",
            "aio_flush",
            "write -f -P 0xd0 4M 512",
            "flush",
            "read -P 0xcd 1M 64k", "read -P 0xce 2M 64k", "read -P 0xcf 3145727 4098", "read -P 0xd0 4M 512")
    expected = bytearray(before)
    for p, o, n in [(0xCD, MiB, 64 * KiB), (0xCE, 2 * MiB, 64 * KiB), (0xCF, 3 * MiB - 1, 4098), (0xD0, 4 * MiB, 512)]:
        expected[o:o + n] = bytes([p]) * n
    assert read_file(image) == bytes(expected)


def test_qemu_io_discard_with_unmap_punches_holes(start_blockd, tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 8 * MiB, b"random")
    before = read_file(image)
    d = start_blockd(image=image, file_opts=",discard=unmap")
    qemu_io(d.uri(), "discard 1M 1M", "read -P 0 1M 1M")
    after = read_file(image)
    assert after[MiB:2 * MiB] == bytes(MiB)
    assert after[:MiB] == before[:MiB] and after[2 * MiB:] == before[2 * MiB:]
    assert is_hole(image, MiB, MiB), file_extents(image)
    # An unaligned discard may zero or keep the bytes inside its range, but never touches its neighbours.
    start, length = 3 * MiB + 100, 8 * KiB + 3
    qemu_io(d.uri(), f"discard {start} {length}")
    after = read_file(image)
    assert after[:start] == before[:MiB] + bytes(MiB) + before[2 * MiB:start]
    assert after[start + length:] == before[start + length:]
    for i in range(start, start + length):
        assert after[i] in (0, before[i]), f"discard left byte {i} as {after[i]}"


def test_qemu_io_discard_without_unmap_keeps_data(start_blockd, tmp_path):
    """discard=ignore is the default (as in qemu): a trim is accepted and changes nothing."""
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    before = read_file(image)
    d = start_blockd(image=image)
    qemu_io(d.uri(), "discard 1M 1M")
    assert read_file(image) == before


@pytest.mark.parametrize("unmap", [False, True], ids=["discard-ignore", "discard-unmap"])
def test_qemu_io_write_zeroes(start_blockd, tmp_path, unmap):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 8 * MiB, b"random")
    before = read_file(image)
    d = start_blockd(image=image, file_opts=",discard=unmap" if unmap else "")
    zeroed = [(MiB, 64 * KiB, "write -z 1M 64k"),
              (2 * MiB, MiB, "write -z -u 2M 1M"),
              (4 * MiB + 1, 4097, f"write -z {4 * MiB + 1} 4097"),
              (5 * MiB + 4095, 12290, f"write -z -u {5 * MiB + 4095} 12290"),
              (6 * MiB, 128 * KiB, "write -z -f 6M 128k")]
    qemu_io(d.uri(), *[c for _, _, c in zeroed], *[f"read -P 0 {o} {n}" for o, n, _ in zeroed],
            f"read -P 0 {4 * MiB + 1} 1")
    expected = bytearray(before)
    for o, n, _ in zeroed:
        expected[o:o + n] = bytes(n)
    assert read_file(image) == bytes(expected)
    if unmap:
        # write -z -u (NBD_CMD_WRITE_ZEROES without NO_HOLE) over discard=unmap deallocates aligned blocks.
        assert is_hole(image, 2 * MiB, MiB), file_extents(image)


# ---------------------------------------------------------------------------------------------------
# nbdinfo


def test_nbdinfo_list_two_exports_with_descriptions(start_blockd, tmp_path):
    require("nbdinfo")
    make_image(tmp_path / "a.img", 4 * MiB)
    make_image(tmp_path / "b.img", 6 * MiB)
    d = start_blockd(export="alpha", args=[
        "--blockdev", f"driver=file,node-name=fa,filename={tmp_path / 'a.img'}",
        "--blockdev", "driver=raw,node-name=ra,file=fa",
        "--blockdev", f"driver=file,node-name=fb,filename={tmp_path / 'b.img'}",
        "--blockdev", "driver=raw,node-name=rb,file=fb",
        "--export", "type=nbd,id=ea,node-name=ra,name=alpha,writable=on,description=First disk",
        "--export", "type=nbd,id=eb,node-name=rb,name=beta,description=Second,, with a comma",
    ])
    listing = nbdinfo_json("--list", f"nbd+unix:///?socket={d.sock}")
    exports = {e["export-name"]: e for e in listing["exports"]}
    assert set(exports) == {"alpha", "beta"}
    assert exports["alpha"]["description"] == "First disk"
    assert exports["beta"]["description"] == "Second, with a comma"
    assert exports["alpha"]["export-size"] == 4 * MiB
    assert exports["beta"]["export-size"] == 6 * MiB
    assert exports["alpha"]["is_read_only"] is False
    assert exports["beta"]["is_read_only"] is True
    text = run(["nbdinfo", "--list", f"nbd+unix:///?socket={d.sock}"]).stdout
    assert 'export="alpha"' in text and 'export="beta"' in text
    assert "First disk" in text and "Second, with a comma" in text
    # Each export also answers on its own, with its description.
    assert nbdinfo_json(d.uri("beta"))["exports"][0]["description"] == "Second, with a comma"


def test_nbdinfo_map_of_sparse_image(start_blockd, tmp_path):
    require("nbdinfo")
    size = 16 * MiB
    image = tmp_path / "disk.img"
    pattern_image(image, size, [(MiB, 64 * KiB), (9 * MiB + 4096, 4096), (size - 4096, 4096)])
    d = start_blockd(image=image, writable=False)
    truth = merge_map([(o, n, data) for o, n, data in file_extents(image)])
    assert any(data for _, _, data in truth) and any(not data for _, _, data in truth)  # the fs keeps it sparse
    entries = nbdinfo_map(d.uri())
    # The map covers the export exactly, in order.
    pos = 0
    for e in entries:
        assert e["offset"] == pos
        pos += e["length"]
    assert pos == size
    # Holes read as zeroes; data is never reported as a hole.
    for e in entries:
        if e["type"] & 1:
            assert e["type"] & 2, f"hole not marked zero: {e}"
    seen = merge_map([(e["offset"], e["length"], not (e["type"] & 1)) for e in entries])
    assert seen == truth
    # The written ranges themselves are data.
    for off, length in [(MiB, 64 * KiB), (9 * MiB + 4096, 4096), (size - 4096, 4096)]:
        covering = [e for e in entries if e["offset"] <= off < e["offset"] + e["length"]]
        assert covering and not covering[0]["type"] & 1, (off, covering)
    text = run(["nbdinfo", "--map", d.uri()]).stdout
    assert "hole" in text and "data" in text


def test_nbdinfo_json_flags(start_blockd, tmp_path):
    require("nbdinfo")
    make_image(tmp_path / "rw.img", 4 * MiB)
    make_image(tmp_path / "ro.img", 2 * MiB)
    make_image(tmp_path / "rw-off.img", 1 * MiB)
    d = start_blockd(export="rw", args=[
        "--blockdev", f"driver=file,node-name=f1,filename={tmp_path / 'rw.img'}",
        "--blockdev", "driver=raw,node-name=rw,file=f1",
        "--blockdev", f"driver=file,node-name=f2,filename={tmp_path / 'ro.img'},read-only=on",
        "--blockdev", "driver=raw,node-name=ro,file=f2,read-only=on",
        "--blockdev", f"driver=file,node-name=f3,filename={tmp_path / 'rw-off.img'}",
        "--blockdev", "driver=raw,node-name=rw2,file=f3",
        "--export", "type=nbd,id=e1,node-name=rw,name=rw,writable=on",
        "--export", "type=nbd,id=e2,node-name=ro,name=ro",
        "--export", "type=nbd,id=e3,node-name=rw2,name=rw-off,writable=off",
    ])
    rw = nbdinfo_json(d.uri("rw"))
    assert rw["protocol"] == "newstyle-fixed" and rw["structured"] is True
    e = rw["exports"][0]
    assert e["export-size"] == 4 * MiB
    assert e["is_read_only"] is False
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_df",
                 "can_cache"):
        assert e[flag] is True, (flag, e)
    assert "base:allocation" in e["contexts"]
    lo, pref, hi = e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]
    for v in (lo, pref):
        assert v & (v - 1) == 0, e  # powers of two
    assert 1 <= lo <= 64 * KiB and lo <= pref <= hi and hi >= 32 * MiB and 512 <= pref <= 32 * MiB, e

    for name in ("ro", "rw-off"):
        e = nbdinfo_json(d.uri(name))["exports"][0]
        assert e["is_read_only"] is True, (name, e)
        # Nothing that writes is advertised on a read-only export (as qemu-storage-daemon does).
        assert e["can_trim"] is False and e["can_zero"] is False and e["can_fast_zero"] is False, (name, e)
        assert e["can_multi_conn"] is True, (name, e)
        assert e["can_df"] is True, (name, e)
    assert nbdinfo_json(d.uri("ro"))["exports"][0]["export-size"] == 2 * MiB


# ---------------------------------------------------------------------------------------------------
# nbdcopy


@pytest.mark.parametrize("connections", [None, 4], ids=["default", "connections4"])
def test_nbdcopy_file_to_export_and_back(start_blockd, tmp_path, connections):
    require("nbdcopy")
    size = 24 * MiB
    source = pattern_image(tmp_path / "src.img", size,
                           [(0, 1 * MiB), (3 * MiB + 7, 2 * MiB), (10 * MiB, 4096), (size - 5 * MiB, 5 * MiB)])
    # The export starts out full of other data, so the zero ranges of the source must really be written.
    target = make_image(tmp_path / "disk.img", size, b"random")
    d = start_blockd(image=target)
    opts = [f"--connections={connections}"] if connections else []
    if connections:
        opts += ["--requests=16"]
    run(["nbdcopy", *opts, "--flush", tmp_path / "src.img", d.uri()])
    assert read_file(target) == source

    out = tmp_path / "out.img"
    run(["nbdcopy", *opts, d.uri(), out])
    assert read_file(out) == source

    # Export to export (a second daemon serving another file).
    make_image(tmp_path / "other.img", size, b"random")
    d2 = start_blockd(image=tmp_path / "other.img", export="other")
    run(["nbdcopy", *opts, d.uri(), d2.uri()])
    assert read_file(tmp_path / "other.img") == source


# ---------------------------------------------------------------------------------------------------
# fio


def fio(tmp_path, *args: str, timeout: float = 60) -> list[dict]:
    """Runs fio; it must exit 0; returns its per-job JSON results after checking none of them failed."""
    require("fio")
    result = tmp_path / f"fio-{len(list(tmp_path.glob('fio-*.json')))}.json"
    # In tmp_path, without a verify state file: fio must leave nothing in the source tree.
    proc = run(["fio", "--output-format=json", f"--output={result}", "--verify_state_save=0", *args],
               ok=False, timeout=timeout, cwd=tmp_path)
    text = output(proc) + (result.read_text() if result.exists() else "")
    assert proc.returncode == 0, f"fio exited {proc.returncode}\n{text}"
    assert "verify:" not in output(proc) and "bad magic" not in text and "crc32c" not in output(proc).lower(), text
    report = result.read_text()
    jobs = json.loads(report[report.index("{"):])["jobs"]  # fio may print notes before the JSON
    for job in jobs:
        assert job["error"] == 0, job
    return jobs


def test_fio_randwrite_verify(start_blockd, tmp_path):
    image = make_image(tmp_path / "disk.img", 32 * MiB)
    d = start_blockd(image=image)
    jobs = fio(tmp_path, "--name=v", "--ioengine=nbd", f"--uri={d.uri()}", "--rw=randwrite", "--bs=4k",
               "--iodepth=16", "--size=32M", "--verify=crc32c", "--do_verify=1")
    assert jobs[0]["write"]["io_bytes"] == 32 * MiB
    assert jobs[0]["read"]["io_bytes"] == 32 * MiB  # the verify pass read everything back
    # fio's verify headers (magic 0xacca) really are in the file, at the start of every 4 KiB block.
    data = read_file(image)
    blocks_with_magic = sum(1 for off in range(0, len(data), 4096) if data[off:off + 2] == b"\xca\xac")
    assert blocks_with_magic == len(data) // 4096


def test_fio_randrw_several_jobs(start_blockd, tmp_path):
    image = make_image(tmp_path / "disk.img", 32 * MiB)
    d = start_blockd(image=image, tcp=True)
    jobs = fio(tmp_path, "--name=mixed", "--ioengine=nbd", f"--uri={d.uri()}", "--rw=randrw", "--bs=4k",
               "--iodepth=32", "--numjobs=4", "--size=8M", "--offset_increment=8M",
               "--verify=crc32c", "--do_verify=1", "--group_reporting=0")
    assert len(jobs) == 4
    assert all(job["write"]["io_bytes"] > 0 for job in jobs)
    # Variable block sizes over TCP, every job writing and verifying its own quarter.
    jobs = fio(tmp_path, "--name=tcp", "--ioengine=nbd", f"--uri={d.tcp_uri()}", "--rw=randwrite",
               "--bsrange=512-64k", "--iodepth=8", "--numjobs=2", "--size=16M", "--offset_increment=16M",
               "--verify=crc32c", "--do_verify=1", "--group_reporting=0")
    assert all(job["read"]["io_bytes"] > 0 for job in jobs)


# ---------------------------------------------------------------------------------------------------
# cache.direct=on: O_DIRECT needs aligned I/O, so unaligned client requests go through read-modify-write


def test_qemu_io_unaligned_writes_on_direct_io(start_blockd, tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    before = read_file(image)
    d = start_blockd(image=image, file_opts=",cache.direct=on")
    # 32 concurrent 100-byte writes into the same two 4 KiB blocks, plus straddling ones: a lost update in
    # the read-modify-write would leave old bytes behind.
    writes = [(0x80 + i, 4096 - 1600 + i * 100, 100) for i in range(32)]
    writes += [(0x21, MiB - 1, 2), (0x22, 2 * MiB + 4095, 4098), (0x23, 3 * MiB + 1, 4094)]
    qemu_io(d.uri(), *[f"aio_write -P {p:#x} {o} {n}" for p, o, n in writes], "aio_flush",
            f"aio_write -f -P 0x24 {MiB + 7} 9", "aio_flush",
            f"write -z {MiB + 4096 + 100} 300", f"write -z -u {2 * MiB - 10} 20")
    expected = bytearray(before)
    for p, o, n in writes + [(0x24, MiB + 7, 9)]:
        expected[o:o + n] = bytes([p]) * n
    expected[MiB + 4196:MiB + 4496] = bytes(300)
    expected[2 * MiB - 10:2 * MiB + 10] = bytes(20)
    qemu_io(d.uri(), *[f"read -P {p:#x} {o} {n}" for p, o, n in writes], f"read -P 0 {MiB + 4196} 300")
    assert read_file(image) == bytes(expected)


def test_fio_unaligned_verify_on_direct_io(start_blockd, tmp_path):
    image = make_image(tmp_path / "disk.img", 8 * MiB)
    d = start_blockd(image=image, file_opts=",cache.direct=on")
    # 1536-byte blocks (at multiples of 1536): most requests share a 4 KiB block with their neighbours.
    jobs = fio(tmp_path, "--name=rmw", "--ioengine=nbd", f"--uri={d.uri()}", "--rw=randwrite", "--bs=1536",
               "--iodepth=16", "--size=6M", "--verify=crc32c", "--do_verify=1")
    assert jobs[0]["write"]["io_bytes"] == 6 * MiB // 1536 * 1536
