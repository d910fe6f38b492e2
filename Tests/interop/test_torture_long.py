"""Long crash torture (only with --long): hundreds of SIGKILL cycles of blockd under a random mix
of writes, FUA writes, write-zeroes and flushes, over a qcow2 overlay on a qcow2 image on a raw
file, and over a raw file.

The model is kept per 512-byte sector: the content known to be durable, plus every version
written since (any of which a kill may leave, even part of a request: a sector at a time). A write
is durable once its FUA reply came, or once a flush sent after its reply was answered. Only one
request per block is in flight, so a sector's versions come in order. After each kill the whole
disk is read back by QEMU (qemu-img convert through the backing chain): every sector must hold
its durable content or a version written after it, and `qemu-img check` must find no corruption
(leaked clusters are allowed after a kill). The lower layers of the chain must stay untouched."""
import hashlib
import json
import random
import signal
import time
from pathlib import Path

import nbd
import pytest

from client_helpers import run
from conftest import require, require_long

SIZE = 4 << 20
BLOCK = 6144  # straddles the overlay's 4 KiB clusters: partial copy-on-write from the backing file
SECTOR = 512
CYCLES = 300


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chain(tmp_path: Path, rng: random.Random) -> tuple[list[str], Path, list[Path]]:
    """overlay.qcow2 -> mid.qcow2 -> base.raw, with data in every layer; returns the blockd node
    options, the overlay and the lower layers."""
    base = tmp_path / "base.raw"
    base.write_bytes(rng.randbytes(SIZE))
    mid = tmp_path / "mid.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", base.name, "-F", "raw", mid])
    noise = tmp_path / "noise.bin"
    noise.write_bytes(rng.randbytes(1 << 20))
    run(["qemu-io", "-f", "qcow2", "-c", f"write -s {noise} 1M 1M", "-c", "write -z 3M 256k", mid])
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", mid.name, "-F", "qcow2",
         overlay])
    args = ["--blockdev", f"driver=file,node-name=f0,filename={overlay}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=f0,discard=unmap"]
    return args, overlay, [mid, base]


def _raw(tmp_path: Path, rng: random.Random) -> tuple[list[str], Path, list[Path]]:
    image = tmp_path / "disk.raw"
    image.write_bytes(rng.randbytes(SIZE))
    args = ["--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk0,file=f0"]
    return args, image, []


class Model:
    """What each sector may hold after a kill: its durable content, or a version written since."""

    def __init__(self, content: bytes):
        self.durable = [content[i:i + SECTOR] for i in range(0, len(content), SECTOR)]
        self.since: list[list[bytes]] = [[] for _ in self.durable]

    def issued(self, offset: int, payload: bytes) -> None:
        for i in range(len(payload) // SECTOR):
            self.since[offset // SECTOR + i].append(payload[i * SECTOR:(i + 1) * SECTOR])

    def made_durable(self, offset: int, payload: bytes) -> None:
        for i in range(len(payload) // SECTOR):
            s = offset // SECTOR + i
            self.durable[s] = payload[i * SECTOR:(i + 1) * SECTOR]
            self.since[s].clear()

    def check(self, content: bytes, cycle: int) -> None:
        """Every sector is one of its allowed versions; afterwards what was read is durable."""
        bad = []
        for s, durable in enumerate(self.durable):
            got = content[s * SECTOR:(s + 1) * SECTOR]
            if got != durable and got not in self.since[s]:
                bad.append(s)
            self.durable[s] = got
            self.since[s].clear()
        assert not bad, (f"cycle {cycle}: {len(bad)} sector(s) hold neither their durable content nor a later "
                         f"write, first at byte offsets {[s * SECTOR for s in bad[:8]]}")


def _run_cycle(uri: str, model: Model, rng: random.Random, seconds: float) -> None:
    """Random requests until `seconds` passed; returns with requests still in flight (for the kill)."""
    h = nbd.NBD()
    h.connect_uri(uri)
    in_flight: dict[int, tuple[int, int, bytes, bool]] = {}  # cookie -> (block, offset, payload, fua)
    busy: set[int] = set()
    written: dict[int, bytes] = {}  # block -> payload of its last completed non-FUA write

    def reap() -> None:
        for cookie in list(in_flight):
            block, offset, payload, fua = in_flight[cookie]
            if h.aio_command_completed(cookie):  # raises on an error reply: the test fails
                del in_flight[cookie]
                busy.discard(block)
                if fua:
                    model.made_durable(offset, payload)
                    written.pop(block, None)
                else:
                    written[block] = payload

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        op = rng.random()
        if op < 0.08:  # drain, then flush: everything answered before it becomes durable
            while in_flight:
                h.poll(-1)
                reap()
            h.flush()
            for block, payload in written.items():
                model.made_durable(block * BLOCK, payload)
            written.clear()
            continue
        block = rng.randrange(0, SIZE // BLOCK)
        if block in busy:
            continue
        offset = block * BLOCK
        fua = rng.random() < 0.15
        flags = nbd.CMD_FLAG_FUA if fua else 0
        if op < 0.85:
            payload = rng.randbytes(BLOCK)
            cookie = h.aio_pwrite(payload, offset, flags=flags)
        else:
            payload = bytes(BLOCK)
            cookie = h.aio_zero(BLOCK, offset, flags=flags)
        model.issued(offset, payload)
        in_flight[cookie] = (block, offset, payload, fua)
        busy.add(block)
        written.pop(block, None)
        while len(in_flight) >= 16:
            h.poll(-1)
            reap()
        reap()


def _read_back(image: Path, fmt: str, tmp_path: Path) -> bytes:
    if fmt == "raw":
        return image.read_bytes()[:SIZE]
    out = tmp_path / "readback.raw"
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image, out])
    return out.read_bytes()


def _check(image: Path, cycle: int) -> None:
    proc = run(["qemu-img", "check", "--output=json", image], ok=False)
    assert proc.returncode in (0, 3), f"cycle {cycle}: qemu-img check failed ({proc.returncode}):\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0, f"cycle {cycle}: {report}"


@pytest.mark.parametrize("layout", ["qcow2-chain", "raw"])
def test_sigkill_torture_loses_nothing_durable(request, start_blockd, tmp_path, layout):
    require_long(request)
    require("qemu-img", "qemu-io")
    rng = random.Random(1234)
    args, image, lower = (_chain if layout == "qcow2-chain" else _raw)(tmp_path, rng)
    fmt = "qcow2" if layout == "qcow2-chain" else "raw"
    lower_digests = {p: _digest(p) for p in lower}
    model = Model(_read_back(image, fmt, tmp_path))
    export = ["--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
    for cycle in range(CYCLES):
        daemon = start_blockd(args=args + export, check_exit=False)
        try:
            _run_cycle(daemon.uri(), model, rng, rng.uniform(0.03, 0.3))
        finally:
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.stop()
        assert daemon.proc.returncode == -signal.SIGKILL, (
            f"cycle {cycle}: blockd ended by itself ({daemon.proc.returncode}) before the kill:\n{daemon.log_text()}")
        if fmt == "qcow2":
            _check(image, cycle)
        model.check(_read_back(image, fmt, tmp_path), cycle)
    for path, digest in lower_digests.items():
        assert _digest(path) == digest, f"{path.name}, a read-only backing layer, was changed"
