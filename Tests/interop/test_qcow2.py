"""The qcow2 driver against qemu-img and qemu-io: images QEMU writes read identically through a
blockd export, images blockd writes pass `qemu-img check`, random operation sequences match a raw
reference, and a SIGKILL at any moment loses nothing that a flush acknowledged."""
import json
import os
import random
import signal
import subprocess
import time
import zlib
from pathlib import Path

import nbd
import pytest

from client_helpers import run
from conftest import require


def qemu_img(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run(["qemu-img", *args], ok=ok, timeout=120)


def qemu_io_file(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [str(image)], timeout=120)


def _check(image: Path, leaks_allowed: bool) -> dict:
    proc = qemu_img("check", "--output=json", str(image), ok=False)
    allowed = (0, 3) if leaks_allowed else (0,)
    assert proc.returncode in allowed, f"qemu-img check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report.get("corruptions", 0) == 0, report
    assert report.get("check-errors", 0) == 0, report
    if not leaks_allowed:
        assert report.get("leaks", 0) == 0, report
    return report


def check_clean(image: Path) -> dict:
    """`qemu-img check` of an image blockd closed cleanly: no corruption and no leaked cluster."""
    return _check(image, leaks_allowed=False)


def check_after_kill(image: Path) -> dict:
    """`qemu-img check` after a SIGKILL: no corruption; leaked clusters are the documented worst case."""
    return _check(image, leaks_allowed=True)


def export_args(image: Path, writable: bool, extra: str = "", export_extra: str = "") -> list[str]:
    ro = "" if writable else ",read-only=on"
    return ["--blockdev", f"driver=file,node-name=f0,filename={image}{ro}",
            "--blockdev", f"driver=qcow2,node-name=disk0,file=f0{ro}{extra}",
            "--export", f"type=nbd,id=e0,node-name=disk0,name=disk0,writable={'on' if writable else 'off'}{export_extra}"]


def fill_with_qemu_io(image: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    commands = []
    for _ in range(24):
        length = rng.choice([512, 4096, 65536, 70000, 300000])
        offset = rng.randrange(0, size - length)
        commands.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
    commands.append(f"write -z {size // 3} 200000")
    qemu_io_file(image, *commands)


CREATE_OPTIONS = [
    "compat=0.10,cluster_size=65536",
    "compat=1.1,cluster_size=512",
    "compat=1.1,cluster_size=4096,refcount_bits=1",
    "compat=1.1,cluster_size=65536,refcount_bits=8,lazy_refcounts=on",
    "compat=1.1,cluster_size=2097152,refcount_bits=64",
    "compat=1.1,cluster_size=16384,preallocation=metadata",
    "compat=1.1,cluster_size=65536,preallocation=full",
]


@pytest.mark.parametrize("options", CREATE_OPTIONS)
def test_images_qemu_writes_read_identically(start_blockd, tmp_path, options):
    require("qemu-img", "qemu-io")
    image = tmp_path / "disk.qcow2"
    size = 8 << 20
    qemu_img("create", "-f", "qcow2", "-o", options, str(image), str(size))
    fill_with_qemu_io(image, size, seed=zlib.crc32(options.encode()))
    daemon = start_blockd(args=export_args(image, writable=False))
    assert qemu_img("compare", "-f", "qcow2", str(image), daemon.uri()).returncode == 0
    info = json.loads(subprocess.check_output(["nbdinfo", "--json", daemon.uri()]))
    assert info["exports"][0]["export-size"] == size


def test_compressed_images_read_identically(start_blockd, tmp_path):
    require("qemu-img")
    raw = tmp_path / "src.raw"
    data = bytearray(os.urandom(1 << 20)) + b"\0" * (1 << 20) + (b"blockd compresses " * 60000)[: 2 << 20]
    raw.write_bytes(bytes(data))
    image = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", str(raw), str(image))
    m = json.loads(qemu_img("map", "--output=json", str(image)).stdout)
    assert any(e["data"] and "offset" not in e for e in m), "qemu-img wrote compressed clusters"
    daemon = start_blockd(args=export_args(image, writable=False))
    assert qemu_img("compare", "-f", "raw", str(raw), daemon.uri()).returncode == 0


def test_backing_chain_reads_through_layers(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(4 << 20))
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", str(mid), "6M")
    qemu_io_file(mid, "write -P 0x11 1M 100k", "write -z 2M 64k")
    qemu_img("create", "-f", "qcow2", "-b", mid.name, "-F", "qcow2", str(top))
    qemu_io_file(top, "write -P 0x22 1050k 10k", "write -P 0x33 5M 4k")
    daemon = start_blockd(args=export_args(top, writable=False))
    assert qemu_img("compare", "-f", "qcow2", str(top), daemon.uri()).returncode == 0
    # Block status reports allocation: data of the top layer, and zeroes past the base's end.
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(daemon.uri())
    flags_at = {}
    offset = 0
    while offset < 6 << 20:
        seen = []
        h.block_status((6 << 20) - offset, offset, lambda ctx, off, entries, err: seen.extend(entries))
        for length, flags in zip(seen[0::2], seen[1::2]):
            flags_at[offset] = (length, flags)
            offset += length
    h.shutdown()

    def flags(at):
        return next(f for start, (length, f) in flags_at.items() if start <= at < start + length)
    assert flags(0) == 0, "base data is data"
    assert flags((4 << 20) + 100) == nbd.STATE_HOLE | nbd.STATE_ZERO, "past the base: unallocated zeroes"
    assert flags(5 << 20) == 0, "data written in the top layer"
    assert flags((2 << 20) + 10) & nbd.STATE_ZERO, "zero cluster of the middle layer"


def test_writes_through_blockd_pass_qemu_img_check(start_blockd, tmp_path):
    require("qemu-img")
    image = tmp_path / "w.qcow2"
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(2 << 20))
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", base.name, "-F", "raw", str(image), "4M")
    daemon = start_blockd(args=export_args(image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\xaa" * 1000, 4000)          # straddles two clusters: copy-on-write of both from the base
    h.pwrite(b"\xbb" * 70000, 3 << 20)     # past the base: the rest reads as zeroes
    h.zero(8192, 1 << 20)
    h.flush()
    expected = bytearray(base.read_bytes() + b"\0" * (2 << 20))
    expected[4000:5000] = b"\xaa" * 1000
    expected[3 << 20:(3 << 20) + 70000] = b"\xbb" * 70000
    expected[1 << 20:(1 << 20) + 8192] = b"\0" * 8192
    assert h.pread(4 << 20, 0) == bytes(expected)
    h.shutdown()
    assert daemon.stop() == 0
    check_clean(image)
    reference = tmp_path / "expected.raw"
    reference.write_bytes(bytes(expected))
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(reference), str(image)).returncode == 0


@pytest.mark.parametrize("cluster_size,refcount_bits,compat", [
    (512, 16, "1.1"), (4096, 1, "1.1"), (65536, 16, "1.1"), (2097152, 64, "1.1"), (4096, 16, "0.10")])
def test_random_operations_match_a_raw_reference(start_blockd, tmp_path, cluster_size, refcount_bits, compat):
    require("qemu-img")
    size = max(3 << 20, 4 * cluster_size)
    image = tmp_path / "r.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster_size},refcount_bits={refcount_bits},compat={compat}",
             str(image), str(size))
    daemon = start_blockd(args=export_args(image, writable=True, extra=",discard=unmap"))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    reference = bytearray(size)
    rng = random.Random(cluster_size * 7 + refcount_bits)
    for step in range(400):
        op = rng.choice(["write", "write", "write", "zero", "trim", "flush", "read"])
        length = rng.choice([1, 511, 512, 4096, cluster_size - 1, cluster_size + 1, 3 * cluster_size, 100000])
        offset = rng.randrange(0, size - length)
        if op == "write":
            payload = os.urandom(length)
            h.pwrite(payload, offset)
            reference[offset:offset + length] = payload
        elif op == "zero":
            h.zero(length, offset, nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
            reference[offset:offset + length] = b"\0" * length
        elif op == "trim":
            h.trim(length, offset)
            # Whole clusters are dropped and read as zeroes (no backing); partial ones keep their data.
            first = -(-offset // cluster_size) * cluster_size
            last = (offset + length) // cluster_size * cluster_size
            if last > first:
                reference[first:last] = b"\0" * (last - first)
        elif op == "flush":
            h.flush()
        got = h.pread(length, offset)
        assert got == bytes(reference[offset:offset + length]), f"step {step}: {op} {offset}+{length}"
    assert h.pread(size, 0) == bytes(reference)
    h.flush()
    h.shutdown()
    assert daemon.stop() == 0
    check_clean(image)
    ref = tmp_path / "ref.raw"
    ref.write_bytes(bytes(reference))
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(ref), str(image)).returncode == 0


def test_sigkill_loses_nothing_flushed(start_blockd, tmp_path):
    """Many cycles of: a random mix of allocating, partial, zero and trim requests with up to 16 in
    flight and occasional flushes, then SIGKILL at a random moment. After each: no corruption, and
    every block last written before the last completed flush reads back."""
    require("qemu-img")
    size = 4 << 20
    block = 6144  # straddles the 4 KiB clusters: partial copy-on-write on both ends
    image = tmp_path / "k.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", str(image), str(size))
    rng = random.Random(99)
    durable: dict[int, bytes] = {}
    for cycle in range(20):
        daemon = start_blockd(args=export_args(image, writable=True, extra=",discard=unmap"), check_exit=False)
        h = nbd.NBD()
        h.connect_uri(daemon.uri())
        unflushed: dict[int, bytes] = {}
        touched_since_flush: set[int] = set()
        deadline = time.monotonic() + rng.uniform(0.05, 0.5)
        try:
            while time.monotonic() < deadline:
                index = rng.randrange(0, size // block)
                op = rng.random()
                if op < 0.8:
                    payload = os.urandom(block)
                    h.aio_pwrite(payload, index * block)
                elif op < 0.9:
                    payload = b"\0" * block
                    h.aio_zero(block, index * block)
                else:
                    h.flush()  # waits for the requests in flight before it
                    while h.aio_in_flight() > 0:
                        h.poll(-1)
                    durable.update(unflushed)
                    unflushed.clear()
                    touched_since_flush.clear()
                    continue
                unflushed[index] = payload
                touched_since_flush.add(index)
                while h.aio_in_flight() >= 16:
                    h.poll(-1)
        finally:
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait()
        check_after_kill(image)
        # Blocks changed after the last flush may hold either version; the rest must be exact.
        for i in touched_since_flush:
            durable.pop(i, None)
        verify = start_blockd(args=export_args(image, writable=False))
        r = nbd.NBD()
        r.connect_uri(verify.uri())
        for i, payload in durable.items():
            assert r.pread(block, i * block) == payload, f"cycle {cycle}: flushed block {i} lost"
        r.shutdown()
        verify.stop()


def test_resize_grows_the_image(start_blockd, tmp_path):
    require("qemu-img")
    image = tmp_path / "g.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", str(image), "1M")
    qmp = tmp_path / "qmp.sock"
    daemon = start_blockd(args=export_args(image, writable=True) + [
        "--chardev", f"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0"])
    from test_resize import ctl, size_of
    deadline = time.monotonic() + 5
    while not qmp.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ctl(qmp, "block_resize", "node-name=disk0", f"size={64 << 20}").returncode == 0
    assert size_of(daemon.uri()) == 64 << 20
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x5a" * 4096, (64 << 20) - 4096)
    h.flush()
    h.shutdown()
    assert daemon.stop() == 0
    check_clean(image)
    info = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    assert info["virtual-size"] == 64 << 20
    assert subprocess.check_output(["qemu-io", "-f", "qcow2", "-c", f"read -P 0x5a {(64 << 20) - 4096} 4096", str(image)])


CORRUPTIONS = {
    "bad-magic": (0, b"XXXX"),
    "version-9": (4, (9).to_bytes(4, "big")),
    "cluster-bits-30": (20, (30).to_bytes(4, "big")),
    "l1-past-eof": (40, (1 << 40).to_bytes(8, "big")),
    "refcount-table-unaligned": (48, (65536 + 7).to_bytes(8, "big")),
    "l1-size-huge": (36, (0xffffffff).to_bytes(4, "big")),
    "unknown-incompatible-feature": (72, (1 << 40).to_bytes(8, "big")),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_headers_are_refused_clearly(tmp_path, name):
    require("qemu-img")
    from conftest import blockd_binary
    image = tmp_path / "bad.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1M")
    offset, payload = CORRUPTIONS[name]
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(payload)
    proc = subprocess.run([blockd_binary(), *export_args(image, writable=False),
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0 and proc.returncode < 128, f"crashed or hung: {proc.returncode}"
    assert "qcow2" in proc.stderr or "bad.qcow2" in proc.stderr, proc.stderr


def test_bad_l2_offset_fails_reads_cleanly(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "l2.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1M")
    qemu_io_file(image, "write -P 1 0 4k")
    header = image.read_bytes()[:72]
    l1_offset = int.from_bytes(header[40:48], "big")
    with open(image, "r+b") as f:
        f.seek(l1_offset)
        f.write(((1 << 63) | (1 << 45)).to_bytes(8, "big"))  # L2 table far past the end of the file
    daemon = start_blockd(args=export_args(image, writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    with pytest.raises(nbd.Error):
        h.pread(4096, 0)
    assert h.get_size() == 1 << 20, "the connection survives the failed read"
    h.shutdown()


def _depth_map(uri: str) -> list[tuple[int, int, int]]:
    out = subprocess.check_output(["nbdinfo", "--map=qemu:allocation-depth", "--json", uri], text=True, timeout=30)
    merged: list[tuple[int, int, int]] = []
    for e in json.loads(out):
        if merged and merged[-1][2] == e["type"] and merged[-1][0] + merged[-1][1] == e["offset"]:
            merged[-1] = (merged[-1][0], merged[-1][1] + e["length"], e["type"])
        else:
            merged.append((e["offset"], e["length"], e["type"]))
    return merged


def test_allocation_depth_matches_qemu_nbd(start_blockd, tmp_path):
    require("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "4M")
    qemu_io_file(base, "write -P 1 0 1M", "write -z 3M 64k")
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(top))
    qemu_io_file(top, "write -P 2 512k 128k", "write -P 3 2M 64k")
    daemon = start_blockd(args=export_args(top, writable=False, export_extra=",allocation-depth=on"))
    ours = _depth_map(daemon.uri())
    sock = tmp_path / "qemu-nbd.sock"
    reference = subprocess.Popen(["qemu-nbd", "-r", "-A", "-f", "qcow2", "-k", str(sock), "-x", "disk0", str(top)])
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        theirs = _depth_map(f"nbd+unix:///disk0?socket={sock}")
    finally:
        reference.terminate()
        reference.wait()
    assert ours == theirs
    assert {t for _, _, t in ours} == {0, 1, 2}


def _contexts(uri: str) -> list[str]:
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    found: list[str] = []
    h.opt_list_meta_context(lambda name: found.append(name) or 0)
    h.opt_abort()
    return found


def test_allocation_depth_is_offered_only_when_asked(start_blockd, tmp_path):
    """As with qemu-storage-daemon: `--export ...,allocation-depth=on` (or block-export-add's
    "allocation-depth": true) offers qemu:allocation-depth; an export without it offers base:allocation only."""
    from qmp_client import QMP
    image = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1M")
    qmp = tmp_path / "qmp.sock"
    daemon = start_blockd(args=[*export_args(image, writable=False, export_extra=",allocation-depth=on"),
                                "--export", "type=nbd,id=e1,node-name=disk0,name=plain",
                                "--chardev", f"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0"])
    assert _contexts(daemon.uri()) == ["base:allocation", "qemu:allocation-depth"]
    assert _contexts(daemon.uri("plain")) == ["base:allocation"]
    with QMP(qmp) as q:
        q.execute("block-export-add", type="nbd", id="e2", **{"node-name": "disk0"}, name="deep",
                  **{"allocation-depth": True})
        q.execute("block-export-add", type="nbd", id="e3", **{"node-name": "disk0"}, name="flat",
                  **{"allocation-depth": False})
    assert _contexts(daemon.uri("deep")) == ["base:allocation", "qemu:allocation-depth"]
    assert _contexts(daemon.uri("flat")) == ["base:allocation"]
    proc = subprocess.run(["nbdinfo", "--map=qemu:allocation-depth", daemon.uri("plain")], capture_output=True, text=True)
    assert proc.returncode != 0, "a context the export does not offer cannot be selected"


def test_writes_to_a_snapshotted_image_copy_on_write(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "snap.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", str(image), "2M")
    qemu_io_file(image, "write -P 0x41 0 1M")
    qemu_img("snapshot", "-c", "s1", str(image))
    daemon = start_blockd(args=export_args(image, writable=True, extra=",discard=unmap"))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x42" * 6000, 1000)        # partial shared clusters: copied, then overwritten
    h.zero(65536, 65536)
    h.trim(65536, 131072)
    h.flush()
    expected = bytearray(b"\x41" * (1 << 20) + b"\0" * (1 << 20))
    expected[1000:7000] = b"\x42" * 6000
    expected[65536:131072] = b"\0" * 65536
    expected[131072:196608] = b"\0" * 65536
    assert h.pread(2 << 20, 0) == bytes(expected)
    h.shutdown()
    assert daemon.stop() == 0
    check_clean(image)
    saved = tmp_path / "s1.raw"
    qemu_img("convert", "-l", "snapshot.name=s1", "-O", "raw", str(image), str(saved))
    assert saved.read_bytes()[: 1 << 20] == b"\x41" * (1 << 20), "the snapshot keeps its contents"


def test_truncated_image_fails_reads_not_the_daemon(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "t.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", str(image), "1M")
    qemu_io_file(image, "write -P 7 0 512k")
    full = image.stat().st_size
    os.truncate(image, full - 128 * 1024)
    daemon = start_blockd(args=export_args(image, writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(4096, 0) == b"\x07" * 4096
    with pytest.raises(nbd.Error):
        h.pread(4096, (512 << 10) - 4096)  # its cluster lay in the cut-off tail
    assert h.pread(4096, 4096) == b"\x07" * 4096, "the connection and the daemon go on"
    h.shutdown()


def test_allocation_over_metadata_marks_the_image_corrupt(start_blockd, tmp_path):
    require("qemu-img", "qemu-io")
    image = tmp_path / "o.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", str(image), "1M")
    qemu_io_file(image, "write -P 7 0 4k")
    header = image.read_bytes()[:72]
    l1_offset = int.from_bytes(header[40:48], "big")
    reftable = int.from_bytes(header[48:56], "big")
    data = image.read_bytes()
    l2_offset = int.from_bytes(data[l1_offset:l1_offset + 8], "big") & 0x00fffffffffffe00
    block = int.from_bytes(data[reftable:reftable + 8], "big")
    with open(image, "r+b") as f:  # claim the L2 table's cluster is free
        f.seek(block + (l2_offset // 4096) * 2)
        f.write(b"\0\0")
    daemon = start_blockd(args=export_args(image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    with pytest.raises(nbd.Error):
        h.pwrite(b"\x09" * 4096, 65536)
    with pytest.raises(nbd.Error):
        h.pwrite(b"\x09" * 4096, 0)  # nothing more is written once the image is corrupt
    assert h.pread(4096, 0) == b"\x07" * 4096, "the metadata was not overwritten"
    h.shutdown()
    daemon.stop()
    info = json.loads(qemu_img("info", "--output=json", "-U", str(image)).stdout)
    assert info["format-specific"]["data"]["corrupt"] is True
    from conftest import blockd_binary
    proc = subprocess.run([blockd_binary(), *export_args(image, writable=True),
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s2.sock"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0 and "corrupt" in proc.stderr


def test_req_one_block_status_is_one_extent_over_scattered_clusters(start_blockd, tmp_path):
    """Guest-contiguous data whose clusters lie apart in the file is one extent on the wire:
    with REQ_ONE exactly one comes back (qemu's client refuses more)."""
    require("qemu-img", "qemu-io")
    image = tmp_path / "scattered.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", str(image), "1M")
    qemu_io_file(image, *[f"write -P {n + 1} {n * 512} 512" for n in reversed(range(64))])  # last cluster first
    daemon = start_blockd(args=export_args(image, writable=False))
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(daemon.uri())
    for offset in (0, 512, 4096):
        seen = []
        h.block_status((1 << 20) - offset, offset, lambda ctx, off, entries, err: seen.extend(entries), nbd.CMD_FLAG_REQ_ONE)
        assert seen == [64 * 512 - offset, 0], (offset, seen)
    h.shutdown()
    assert qemu_img("compare", "-f", "qcow2", str(image), daemon.uri()).returncode == 0


def test_a_flush_on_one_connection_covers_the_writes_of_another(start_blockd, tmp_path):
    """CAN_MULTI_CONN: a write answered on connection A, never flushed there, survives a SIGKILL once a
    FLUSH on connection B has been answered. blockd keeps qcow2's L2 tables in memory until a flush,
    so this needs B's flush to write back what A's write changed (without it, the write is lost)."""
    require("qemu-img", "qemu-io")
    image = tmp_path / "mc.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=65536", str(image), "16M")
    daemon = start_blockd(args=export_args(image, writable=True), check_exit=False)
    a, b, c = nbd.NBD(), nbd.NBD(), nbd.NBD()
    for h in (a, b, c):
        h.connect_uri(daemon.uri())
        assert h.can_multi_conn()
    a.pwrite(b"\x4d" * (1 << 20), 4 << 20)   # allocates 16 clusters and an L2 table entry each
    b.flush()
    assert c.pread(1 << 20, 4 << 20) == b"\x4d" * (1 << 20), "a third connection does not see A's write"
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    check_after_kill(image)
    qemu_io_file(image, f"read -P 0x4d {4 << 20} 1M")


def test_a_dirty_image_is_repaired_when_opened_read_write(start_blockd, tmp_path):
    """An image left dirty by QEMU with lazy refcounts (qemu-io killed after a write: the refcounts
    were never written) is recounted when blockd opens it read-write: after a clean stop qemu-img
    finds it clean, not dirty, with the data in place."""
    require("qemu-img", "qemu-io")
    image = tmp_path / "dirty.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", str(image), "4M")
    killed = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", "-c", "sigraise 9", str(image)],
                            capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed
    assert json.loads(qemu_img("info", "--output=json", str(image)).stdout)["dirty-flag"] is True
    before = qemu_img("check", "--output=json", str(image), ok=False)
    assert before.returncode == 2 and json.loads(before.stdout)["corruptions"] > 0, "the image needs no repair"
    daemon = start_blockd(args=export_args(image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(1 << 20, 0) == b"\x33" * (1 << 20)
    h.shutdown()
    assert daemon.stop() == 0
    check_clean(image)
    assert json.loads(qemu_img("info", "--output=json", str(image)).stdout)["dirty-flag"] is False
    qemu_io_file(image, "read -P 0x33 0 1M")
