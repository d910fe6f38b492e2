"""Block status over a 1 TiB sparse dirty bitmap (issue #12): a 1 TiB null-co export with a 64 KiB
bitmap (16 Mi chunks) and three dirty chunks; libnbd scans the whole qemu:dirty-bitmap context in
requests of the largest size a 32-bit request takes, as backup tools do, and gets exactly the dirty
chunks, fast (the measured time is in docs/benchmarks-bitmaps.md; the bound here is generous for
debug builds on a loaded machine)."""
import socket
import struct
import time

from conftest import import_or_skip
from qmp_client import QMP

nbd = import_or_skip("nbd")

TiB = 1 << 40
DIRTY = [(0, 4096), (500 << 30, 4096), (TiB - 512, 512)]


def test_dirty_map_of_a_1tib_sparse_bitmap(start_blockd, tmp_path):
    sock = tmp_path / "q.sock"
    daemon = start_blockd(args=["--blockdev", f"driver=null-co,node-name=disk0,size={TiB}",
                                "--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0"],
                          export="disk0")
    with QMP(sock) as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="b", granularity=65536)
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["b"])
    h = nbd.NBD()
    h.add_meta_context("qemu:dirty-bitmap:b")
    h.connect_uri(daemon.uri())
    for offset, length in DIRTY:
        h.pwrite(b"\x01" * length, offset)
    dirty = []

    def record(metacontext, offset, entries, err):
        position = offset
        for index in range(0, len(entries), 2):
            if entries[index + 1] & 1:
                dirty.append((position, entries[index]))
            position += entries[index]
        return 0
    step = (4 << 30) - 65536
    start = time.monotonic()
    offset = 0
    while offset < TiB:
        h.block_status(min(step, TiB - offset), offset, record)
        offset += min(step, TiB - offset)
    elapsed = time.monotonic() - start
    h.shutdown()
    merged = []
    for position, length in dirty:
        if merged and merged[-1][0] + merged[-1][1] == position:
            merged[-1] = (merged[-1][0], merged[-1][1] + length)
        else:
            merged.append((position, length))
    assert merged == [(0, 65536), (500 << 30, 65536), (TiB - 65536, 65536)]
    print(f"1 TiB dirty map in {TiB // step + 1} requests: {elapsed * 1000:.1f} ms")
    assert elapsed < 5, elapsed


# --- one request over the whole TiB: extended headers (64-bit lengths), spoken directly -------------
# libnbd 1.14 (Debian 12) cannot ask for extended headers; the few messages needed are written here
# from doc/proto.md of NetworkBlockDevice/nbd.

def _recv(sock, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def _option(sock, option: int, data: bytes) -> list[tuple[int, bytes]]:
    """Sends an option; returns its replies up to the final ACK (or error)."""
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, option, len(data)) + data)
    replies = []
    while True:
        magic, _, kind, length = struct.unpack(">QIII", _recv(sock, 20))
        assert magic == 0x3E889045565A9
        replies.append((kind, _recv(sock, length)))
        if kind == 1 or kind & 0x80000000:
            return replies


def extended_dirty_map(path: str, export: str, context: str, length: int) -> tuple[list[tuple[int, int, int]], int, float]:
    """Block status of `context` over [0, length) with extended headers: (extents, requests, seconds)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    try:
        assert _recv(sock, 16) == b"NBDMAGICIHAVEOPT"
        _recv(sock, 2)
        sock.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        assert _option(sock, 11, b"")[-1][0] == 1, "extended headers refused"
        name = export.encode()
        query = context.encode()
        replies = _option(sock, 10, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(query)) + query)
        ids = [struct.unpack(">I", data[:4])[0] for kind, data in replies if kind == 4]
        assert len(ids) == 1, replies
        assert _option(sock, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))[-1][0] == 1
        extents = []
        requests = 0
        position = 0
        start = time.monotonic()
        while position < length:
            requests += 1
            sock.sendall(struct.pack(">IHHQQQ", 0x21E41C71, 0, 7, requests, position, length - position))
            while True:
                magic, flags, kind, cookie, _, size = struct.unpack(">IHHQQQ", _recv(sock, 32))
                assert magic == 0x6E8A278C and cookie == requests
                payload = _recv(sock, size)
                assert not kind & 0x8000, payload
                if kind == 6:
                    context_id, count = struct.unpack(">II", payload[:8])
                    assert context_id == ids[0]
                    for index in range(count):
                        extent, status = struct.unpack(">QQ", payload[8 + 16 * index:24 + 16 * index])
                        extents.append((position, extent, status))
                        position += extent
                if flags & 1:
                    break
        elapsed = time.monotonic() - start
        sock.sendall(struct.pack(">IHHQQQ", 0x21E41C71, 0, 2, 0, 0, 0))
        return extents, requests, elapsed
    finally:
        sock.close()


def test_one_block_status_request_over_1tib_with_extended_headers(start_blockd, tmp_path):
    """One NBD_CMD_BLOCK_STATUS of 1 TiB (extended headers) on the bitmap context answers every
    extent of the sparse bitmap in one reply, in well under 10 ms in a release build."""
    sock = tmp_path / "q.sock"
    daemon = start_blockd(args=["--blockdev", f"driver=null-co,node-name=disk0,size={TiB}",
                                "--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0"],
                          export="disk0")
    with QMP(sock) as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="b", granularity=65536)
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["b"])
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    for offset, length in DIRTY:
        h.pwrite(b"\x01" * length, offset)
    h.shutdown()
    path = daemon.uri().split("socket=")[1]
    best = None
    for _ in range(3):
        extents, requests, elapsed = extended_dirty_map(path, "disk0", "qemu:dirty-bitmap:b", TiB)
        best = elapsed if best is None else min(best, elapsed)
    assert [(o, n) for o, n, s in extents if s & 1] == [(0, 65536), (500 << 30, 65536), (TiB - 65536, 65536)]
    assert sum(n for _, n, _ in extents) == TiB
    assert requests == 1, requests
    print(f"1 TiB dirty map in one extended request: {best * 1000:.2f} ms")
    assert best < 1.0, best
