"""Reads of a file whose pages are not cached (issue #20): a cold 4 KiB read through blockd brings
about what it serves into the page cache, not the device's read-ahead around it; a sequential stream
still reads ahead; data is unchanged. Needs a disk-backed directory (/var/tmp by default, or
$BLOCKD_DISK_DIR): on tmpfs there is nothing to read from a device."""
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import nbd
import pytest

from conftest import require, skip_or_fail

PAGE = 4096


def disk_dir() -> Path:
    path = Path(os.environ.get("BLOCKD_DISK_DIR", "/var/tmp"))
    path.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        skip_or_fail(f"{path} is on {fs}: set BLOCKD_DISK_DIR to a disk-backed directory")
    return path


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return int(out)


@pytest.fixture
def cold_image():
    require("fincore")
    directory = tempfile.mkdtemp(prefix="blockd-cold.", dir=disk_dir())
    path = Path(directory) / "cold.raw"
    data = random.Random(7).randbytes(64 << 20)
    path.write_bytes(data)
    evict(path)
    if resident_bytes(path) > 64 * PAGE:
        skip_or_fail("the page cache of this file system cannot be dropped per file (fadvise DONTNEED)")
    yield path, data
    path.unlink()
    os.rmdir(directory)


@pytest.mark.parametrize("fmt", ["raw", "file"])
def test_a_cold_4k_read_caches_about_what_it_serves(start_blockd, cold_image, fmt):
    path, data = cold_image
    args = ["--blockdev", f"driver=file,node-name=f0,filename={path}"]
    if fmt == "raw":
        args += ["--blockdev", "driver=raw,node-name=disk0,file=f0"]
    args += ["--export", f"type=nbd,id=e0,node-name={'disk0' if fmt == 'raw' else 'f0'},name=disk0"]
    daemon = start_blockd(args=args)
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    offsets = [random.Random(3).randrange(0, (64 << 20) // PAGE) * PAGE for _ in range(8)]
    evict(path)
    before = resident_bytes(path)
    for offset in offsets:
        assert h.pread(PAGE, offset) == data[offset:offset + PAGE]
    brought = resident_bytes(path) - before
    # Eight reads of one page each; the kernel's read-around would bring 128 KiB to 8 MiB per read.
    assert brought <= 8 * 4 * PAGE, f"{brought} bytes brought into the page cache for {8 * PAGE} served"
    h.shutdown()


def test_a_cold_sequential_stream_reads_ahead_and_serves_the_right_bytes(start_blockd, cold_image):
    """1 MiB reads one after another: every byte right, and the stream's window ahead is cached
    (more than was served, less than the whole file)."""
    path, data = cold_image
    daemon = start_blockd(image=path)
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    evict(path)
    served = 8 << 20
    for offset in range(0, served, 1 << 20):
        assert h.pread(1 << 20, offset) == data[offset:offset + (1 << 20)]
    # The window ahead is asked for asynchronously: give a loaded machine a moment to start reading it.
    deadline = time.monotonic() + 3
    resident = resident_bytes(path)
    while resident <= served and time.monotonic() < deadline:
        time.sleep(0.1)
        resident = resident_bytes(path)
    assert served < resident < len(data), f"{resident} bytes cached after {served} served sequentially"
    h.shutdown()


def test_random_4k_reads_of_a_cold_file_match(start_blockd, cold_image):
    """Many random reads of sizes around page boundaries, cold: every byte right."""
    path, data = cold_image
    daemon = start_blockd(image=path, writable=False)
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    evict(path)
    rng = random.Random(11)
    for _ in range(200):
        length = rng.choice([512, 4096, 8192, 20000, 65536, 300000])
        offset = rng.randrange(0, len(data) - length)
        assert h.pread(length, offset) == data[offset:offset + length]
    h.shutdown()
