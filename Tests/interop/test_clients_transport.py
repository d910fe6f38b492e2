"""blockd over TCP (127.0.0.1 and ::1), several exports at once, null-co, raw windows and read-only
exports, driven by the real clients (qemu-io, qemu-img, nbdinfo, nbdcopy) and libnbd."""
import hashlib
import socket
import subprocess
import time

import pytest

from conftest import make_image, require, import_or_skip, skip_or_fail
from client_helpers import (KiB, MiB, file_extents, free_port6, ipv6_loopback_available, merge_map,
                            nbdinfo_json, nbdinfo_map, output, pattern_image, qemu_img_info, qemu_io,
                            read_file, run, wait_connectable)


def libnbd_handle(uri: str, strict: bool = True):
    """A connected libnbd handle; with strict=False libnbd sends what its client-side checks would refuse."""
    nbd = import_or_skip("nbd")
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def nbd_errno(call) -> str:
    """Runs a libnbd call that must fail; returns the name of the errno the server replied with."""
    import nbd
    with pytest.raises(nbd.Error) as info:
        call()
    return info.value.errno


def sha(path) -> str:
    return hashlib.sha256(read_file(path)).hexdigest()


# ---------------------------------------------------------------------------------------------------
# TCP


def test_tcp_ipv4(start_blockd, tmp_path):
    require("qemu-io", "qemu-img", "nbdinfo")
    image = make_image(tmp_path / "disk.img", 8 * MiB)
    d = start_blockd(image=image, tcp=True)
    tcp = d.tcp_uri()
    assert tcp.startswith("nbd://127.0.0.1:")
    assert qemu_img_info(tcp)["virtual-size"] == 8 * MiB
    assert nbdinfo_json(tcp)["exports"][0]["export-size"] == 8 * MiB
    # Written over TCP, read over the unix socket, and the other way round.
    qemu_io(tcp, "write -P 0x61 1M 1M", "write -P 0x62 4095 2")
    qemu_io(d.uri(), "read -P 0x61 1M 1M", "read -P 0x62 4095 2", "write -P 0x63 5M 64k")
    qemu_io(tcp, "read -P 0x63 5M 64k", "read -P 0 0 4095")
    data = read_file(image)
    assert data[MiB:2 * MiB] == b"\x61" * MiB and data[4095:4097] == b"\x62\x62"
    assert data[5 * MiB:5 * MiB + 64 * KiB] == b"\x63" * (64 * KiB)
    # nbdcopy with several connections over TCP.
    require("nbdcopy")
    run(["nbdcopy", "--connections=4", tcp, tmp_path / "out.img"])
    assert read_file(tmp_path / "out.img") == data


def test_tcp_ipv6(start_blockd, tmp_path):
    require("qemu-io", "nbdinfo")
    reason = ipv6_loopback_available()
    if reason:
        skip_or_fail(f"IPv6 loopback unavailable ({reason}); the ::1 listener is NOT tested")
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    port = free_port6()
    d = start_blockd(image=image, extra=["--nbd-server", f"addr.type=inet,addr.host=::1,addr.port={port}"])
    wait_connectable(socket.AF_INET6, ("::1", port))
    uri = f"nbd://[::1]:{port}/disk0"
    assert nbdinfo_json(uri)["exports"][0]["export-size"] == 4 * MiB
    qemu_io(uri, "write -P 0x66 1000 70000", "read -P 0x66 1000 70000", "read -P 0 0 1000")
    assert read_file(image, 1000, 70000) == b"\x66" * 70000
    qemu_io(d.uri(), "read -P 0x66 1000 70000")


# ---------------------------------------------------------------------------------------------------
# Several exports at once


def test_several_exports_at_once(start_blockd, tmp_path):
    require("qemu-io", "nbdinfo")
    a = make_image(tmp_path / "a.img", 4 * MiB)
    b = make_image(tmp_path / "b.img", 4 * MiB, b"random")
    b_before = read_file(b)
    d = start_blockd(export="a", tcp=True, args=[
        "--blockdev", f"driver=file,node-name=fa,filename={a}",
        "--blockdev", "driver=raw,node-name=ra,file=fa",
        "--blockdev", f"driver=file,node-name=fb,filename={b}",
        "--blockdev", "driver=raw,node-name=rb,file=fb",
        "--blockdev", "driver=null-co,node-name=nz,size=256M,read-zeroes=on",
        "--export", "type=nbd,id=ea,node-name=ra,name=a,writable=on",
        "--export", "type=nbd,id=eb,node-name=rb,name=b,writable=on",
        "--export", "type=nbd,id=ez,node-name=nz,name=z,writable=on",
    ])
    sizes = {e["export-name"]: e["export-size"] for e in nbdinfo_json("--list", d.tcp_uri(""))["exports"]}
    assert sizes == {"a": 4 * MiB, "b": 4 * MiB, "z": 256 * MiB}
    # Three clients at once, each on its own export.
    cmds = {
        "a": ["write -P 0xaa 0 2M", "read -P 0xaa 0 2M"],
        "b": ["write -P 0xbb 1M 1M", "read -P 0xbb 1M 1M"],
        "z": ["write -P 0xcc 0 1M", "read -P 0 0 1M", "read -P 0 255M 1M"],
    }
    procs = {}
    for name, commands in cmds.items():
        args = ["qemu-io", "-f", "raw", d.uri(name) if name != "b" else d.tcp_uri(name)]
        for c in commands:
            args += ["-c", c]
        procs[name] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "failed" not in out, (name, out)
    assert read_file(a) == b"\xaa" * (2 * MiB) + bytes(2 * MiB)
    assert read_file(b) == b_before[:MiB] + b"\xbb" * MiB + b_before[2 * MiB:]
    # An export name that does not exist is refused.
    proc = qemu_io(d.uri("nope"), "read 0 512", ok=False)
    assert proc.returncode != 0


# ---------------------------------------------------------------------------------------------------
# null-co


def test_null_co_reads_zeroes(start_blockd, tmp_path):
    require("qemu-io", "qemu-img", "nbdcopy")
    d = start_blockd(image=None, null_size="1G", export="null")
    assert qemu_img_info(d.uri())["virtual-size"] == 1 << 30
    # Writes are accepted and dropped: everything still reads as zeroes.
    qemu_io(d.uri(), "write -P 0x55 0 64k", "write -P 0x55 1023M 1M", "write -z 5M 1M", "discard 6M 1M",
            "read -P 0 0 64k", "read -P 0 4095 8194", "read -P 0 1023M 1M", "read -P 0 512M 4M")
    # nbdcopy a whole (smaller) null export into a file: all zeroes.
    d64 = start_blockd(image=None, null_size="64M", export="n64")
    out = tmp_path / "out.img"
    run(["nbdcopy", d64.uri(), out])
    assert read_file(out) == bytes(64 * MiB)


def test_null_co_json_and_read_zeroes_off(start_blockd, tmp_path):
    require("qemu-io", "nbdinfo")
    d = start_blockd(export="n", args=[
        "--blockdev", '{"driver": "null-co", "node-name": "n0", "size": 1048576, "read-zeroes": true}',
        "--blockdev", "driver=null-aio,node-name=n1,size=2M",
        "--export", '{"type": "nbd", "id": "e0", "node-name": "n0", "name": "n", "writable": true}',
        "--export", "type=nbd,id=e1,node-name=n1,name=m",
    ])
    assert nbdinfo_json(d.uri("n"))["exports"][0]["export-size"] == MiB
    assert nbdinfo_json(d.uri("m"))["exports"][0]["export-size"] == 2 * MiB
    qemu_io(d.uri("n"), "write -P 1 0 4k", "read -P 0 0 1M")
    # read-zeroes=off: contents are unspecified, but reads succeed.
    qemu_io(d.uri("m"), "read 0 2M", "read 4095 2", read_only=True)


# ---------------------------------------------------------------------------------------------------
# raw offset/size window


def test_raw_window_lands_at_file_offset(start_blockd, tmp_path):
    require("qemu-io", "qemu-img", "nbdcopy", "nbdinfo")
    image = make_image(tmp_path / "disk.img", 8 * MiB, b"random")
    before = read_file(image)
    start, size = 1 * MiB, 2 * MiB
    d = start_blockd(args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=f0,offset=1M,size=2M",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on",
    ])
    assert qemu_img_info(d.uri())["virtual-size"] == size
    run(["nbdcopy", d.uri(), tmp_path / "window.img"])
    assert read_file(tmp_path / "window.img") == before[start:start + size]
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", tmp_path / "window.img", d.uri()])

    writes = [(0x71, 0, 4096), (0x72, size - 4096, 4096), (0x73, 4095, 2), (0x74, size - 1, 1)]
    qemu_io(d.uri(), *[f"write -P {p:#x} {o} {n}" for p, o, n in writes], "write -z 512k 64k")
    expected = bytearray(before)
    for p, o, n in writes:
        expected[start + o:start + o + n] = bytes([p]) * n
    expected[start + 512 * KiB:start + 576 * KiB] = bytes(64 * KiB)
    assert read_file(image) == bytes(expected)

    # The client refuses to go past the end; libnbd without its own checks asks the server, which must
    # refuse too (ENOSPC for writes, EINVAL otherwise) and leave the bytes after the window alone.
    h = libnbd_handle(d.uri(), strict=False)
    try:
        assert h.get_size() == size
        assert nbd_errno(lambda: h.pwrite(b"\xee" * 1024, size - 512)) in ("ENOSPC", "EINVAL")
        assert nbd_errno(lambda: h.pwrite(b"\xee" * 512, size)) in ("ENOSPC", "EINVAL")
        assert nbd_errno(lambda: h.zero(4096, size)) in ("ENOSPC", "EINVAL")
        assert nbd_errno(lambda: h.trim(4096, size)) in ("ENOSPC", "EINVAL")
        assert nbd_errno(lambda: h.pread(1024, size - 512)) == "EINVAL"
        # The connection is still usable afterwards.
        assert h.pread(1, size - 1) == b"\x74"
    finally:
        h.shutdown()
    assert read_file(image) == bytes(expected)


def test_raw_window_map_and_offset_only(start_blockd, tmp_path):
    require("nbdinfo", "qemu-img")
    image = tmp_path / "disk.img"
    pattern_image(image, 8 * MiB, [(2 * MiB, 64 * KiB), (5 * MiB, 4096)])
    d = start_blockd(export="w", args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", f"driver=raw,node-name=w,file=f0,offset={MiB},size={4 * MiB}",
        "--blockdev", "driver=raw,node-name=tail,file=f0,offset=6M",
        "--export", "type=nbd,id=e0,node-name=w,name=w",
        "--export", "type=nbd,id=e1,node-name=tail,name=tail",
    ])
    assert qemu_img_info(d.uri("tail"))["virtual-size"] == 2 * MiB
    # The window's map is the file's map shifted by the offset and cut at the window's end.
    truth = []
    for o, n, data in file_extents(image):
        lo, hi = max(o, MiB), min(o + n, 5 * MiB)
        if lo < hi:
            truth.append((lo - MiB, hi - lo, data))
    seen = merge_map([(e["offset"], e["length"], not (e["type"] & 1)) for e in nbdinfo_map(d.uri("w"))])
    assert seen == merge_map(truth)
    assert any(data for _, _, data in seen)


# ---------------------------------------------------------------------------------------------------
# Read-only exports


def test_read_only_export_refuses_writes(start_blockd, tmp_path):
    require("qemu-io", "qemu-img", "nbdcopy")
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    digest = sha(image)
    d = start_blockd(image=image, writable=False)
    # qemu-io cannot write (it refuses to open read-write, or the write fails).
    proc = qemu_io(d.uri(), "write -P 0x99 0 4k", ok=False)
    assert proc.returncode != 0, output(proc)
    proc = qemu_io(d.uri(), "write -z 0 4k", "discard 0 1M", ok=False)
    assert proc.returncode != 0, output(proc)
    # Reads work, and the data is the file's.
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", image, d.uri()])
    # nbdcopy into it fails.
    src = make_image(tmp_path / "src.img", 4 * MiB, b"random")
    proc = run(["nbdcopy", src, d.uri()], ok=False)
    assert proc.returncode != 0
    # libnbd without client-side checks: the server itself refuses with EPERM.
    h = libnbd_handle(d.uri(), strict=False)
    try:
        assert h.is_read_only()
        assert nbd_errno(lambda: h.pwrite(b"\x99" * 4096, 0)) == "EPERM"
        assert nbd_errno(lambda: h.zero(4096, 8192)) == "EPERM"
        assert nbd_errno(lambda: h.trim(MiB, 0)) == "EPERM"
        h.flush()  # flush is allowed (and harmless) on a read-only export
        assert h.pread(4096, 0) == read_file(image, 0, 4096)
    finally:
        h.shutdown()
    assert sha(image) == digest


def test_read_only_node_and_export(start_blockd, tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 2 * MiB, b"random")
    image.chmod(0o444)
    digest = sha(image)
    d = start_blockd(args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image},read-only=on",
        "--blockdev", "driver=raw,node-name=disk0,file=f0,read-only=on",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=off",
    ])
    proc = qemu_io(d.uri(), "write -P 1 0 512", ok=False)
    assert proc.returncode != 0
    data = read_file(image)
    proc = qemu_io(d.uri(), f"read -P {data[MiB]} {MiB} 1", read_only=True)
    assert sha(image) == digest


# ---------------------------------------------------------------------------------------------------
# --nbd-server limits


def test_max_connections(start_blockd, tmp_path):
    nbd = import_or_skip("nbd")
    require("nbdinfo")
    sock = tmp_path / "limited.sock"
    d = start_blockd(image=None, args=[
        "--blockdev", "driver=null-co,node-name=disk0,size=1M",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0",
        "--nbd-server", f"addr.type=unix,addr.path={sock},max-connections=2",
    ])
    uri = f"nbd+unix:///disk0?socket={sock}"
    held = []
    for _ in range(2):
        # The limit is the server's: start_blockd's readiness probe of its own socket may hold a
        # slot for a moment after it closed.
        deadline = time.monotonic() + 5
        while True:
            h = nbd.NBD()
            try:
                h.connect_uri(uri)
                break
            except nbd.Error:
                assert time.monotonic() < deadline, "a slot never became free"
                time.sleep(0.05)
        held.append(h)
    # A third client is not served while two are connected, nor refused: it waits, as with QSD (whose
    # full server stops accepting), and gets in once a slot frees (the kernel's nbd-client reconnect
    # relies on it).
    third = subprocess.Popen(["nbdinfo", "--size", uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = third.communicate(timeout=1.5)
        pytest.fail(f"third connection over max-connections=2 ended instead of waiting (rc {third.returncode}): {out}")
    except subprocess.TimeoutExpired:
        pass
    held.pop().shutdown()
    out, _ = third.communicate(timeout=10)
    assert third.returncode == 0 and out.strip() == str(MiB), out
    # With one slot free again (once the server has seen the disconnect), a new client is served.
    deadline = time.monotonic() + 5
    while (answer := run(["nbdinfo", "--size", uri], ok=False)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.stdout.strip() == str(MiB), output(answer)
    held.pop().shutdown()


def test_handshake_max_seconds(start_blockd, tmp_path):
    sock = tmp_path / "hs.sock"
    d = start_blockd(image=None, args=[
        "--blockdev", "driver=null-co,node-name=disk0,size=1M",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0",
        "--nbd-server", f"addr.type=unix,addr.path={sock},handshake-max-seconds=1",
    ])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.settimeout(6)
        greeting = s.recv(18)
        assert greeting[:16] == b"NBDMAGICIHAVEOPT"
        start = time.monotonic()
        rest = s.recv(100)  # we never answer: the server must hang up after about a second
        elapsed = time.monotonic() - start
    assert rest == b"" and 0.5 < elapsed < 5, (rest, elapsed)
    # A client that completes its handshake in time is served, and not cut off after the deadline.
    h = libnbd_handle(f"nbd+unix:///disk0?socket={sock}")
    time.sleep(1.5)
    assert h.pread(512, 0) == bytes(512)
    h.shutdown()


# ---------------------------------------------------------------------------------------------------
# Offsets past 4 GiB and requests larger than the payload limit


def test_large_offsets_and_long_zero_requests(start_blockd, tmp_path):
    require("qemu-io", "nbdinfo")
    GiB = 1024 * MiB
    size = 5 * GiB
    image = tmp_path / "big.img"
    marks = {GiB // 2: b"first", 3 * GiB - 7: b"across-3G", 4 * GiB + 123: b"past-4G", size - 5: b"tail!"}
    with open(image, "wb") as f:
        f.truncate(size)
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    d = start_blockd(image=image, file_opts=",discard=unmap")
    assert qemu_img_info(d.uri())["virtual-size"] == size
    qemu_io(d.uri(), *[f"read -P {data[0]} {off} 1" for off, data in marks.items()],
            f"write -P 0x4b {4 * GiB - 2048} 4096", f"write -P 0x4c {4 * GiB + MiB} 64k")
    assert read_file(image, 4 * GiB - 2048, 4096) == b"\x4b" * 4096
    assert read_file(image, 4 * GiB + MiB, 65536) == b"\x4c" * 65536
    # The map past 4 GiB matches the file's.
    seen = merge_map([(e["offset"], e["length"], not (e["type"] & 1)) for e in nbdinfo_map(d.uri())])
    assert seen == merge_map(file_extents(image))
    # Zero requests far longer than the 32 MiB payload limit, one of them crossing 4 GiB.
    qemu_io(d.uri(), f"write -z {GiB // 4} {GiB}", f"write -z -u {3 * GiB} 2047M")
    assert read_file(image, GiB // 2, 5) == bytes(5)
    assert read_file(image, 4 * GiB - 2048, 4096) == bytes(4096)
    assert read_file(image, 4 * GiB + 123, 7) == bytes(7)
    assert read_file(image, 4 * GiB + MiB, 65536) == bytes(65536)
    assert read_file(image, 3 * GiB - 7, 9) == b"across-3G"[:7] + bytes(2)  # the part before 3 GiB is kept
    assert read_file(image, size - 5, 5) == b"tail!"
    qemu_io(d.uri(), f"read -P 0 {4 * GiB - 4096} 8192", f"read -P 0x74 {size - 5} 1")
