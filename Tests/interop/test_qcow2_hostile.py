"""Regression tests for qcow2 images and requests that once crashed, hung or served wrong data
(issue #10): a huge NBD_CMD_RESIZE or block_resize, an image that is its own backing file, header
fields near 2^64, L1/L2 entries with reserved bits or unaligned offsets, a refcount table entry past
the end of the file; and images with persistent bitmaps, which must stay intact (issue #12).

Every case ends with the daemon alive and serving another export, and with qemu-img's view of the
image no worse than before."""
import json
import subprocess
import threading
import time
from pathlib import Path

import nbd
import pytest

from client_helpers import run
from conftest import blockd_binary, require
from qmp_client import QMP

MiB = 1 << 20


def qemu_img(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run(["qemu-img", *args], ok=ok, timeout=60)


def qemu_io(image: Path, *commands: str) -> None:
    cmd = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [str(image)], timeout=60)


def u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 8], "big")


def poke(image: Path, at: int, value: int, width: int = 8) -> None:
    with open(image, "r+b") as f:
        f.seek(at)
        f.write(value.to_bytes(width, "big"))


def layout(image: Path) -> dict:
    data = image.read_bytes()
    l1 = u64(data, 40)
    reftable = u64(data, 48)
    return {"l1": l1, "l1_entry0": u64(data, l1), "reftable": reftable, "reftable_entry0": u64(data, reftable),
            "cluster": 1 << int.from_bytes(data[20:24], "big")}


def with_monitor(tmp_path: Path, image: Path, writable: bool = True, resize: bool = False) -> list[str]:
    """An export of `image` as disk0, a null export `bystander` that must stay served, and a monitor."""
    ro = "" if writable else ",read-only=on"
    return [
        "--blockdev", f"driver=file,node-name=f0,filename={image}{ro}",
        "--blockdev", f"driver=qcow2,node-name=disk0,file=f0{ro}",
        "--export", f"type=nbd,id=e0,node-name=disk0,name=disk0,writable={'on' if writable else 'off'}"
                    + (",x-resize=on" if resize else ""),
        "--blockdev", "driver=null-co,node-name=n0,size=1M,read-zeroes=on",
        "--export", "type=nbd,id=e1,node-name=n0,name=bystander",
        "--chardev", f"socket,id=m0,path={tmp_path}/qmp.sock,server=on,wait=off", "--monitor", "chardev=m0",
    ]


def assert_bystander_served(daemon) -> None:
    h = nbd.NBD()
    h.connect_uri(daemon.uri("bystander"))
    assert h.pread(4096, 0) == b"\0" * 4096
    h.shutdown()


def within(seconds: float, action):
    """Runs `action` on a thread; its result, or the exception it raised. Fails when it takes longer
    (a hang in the daemon must fail the test, not stall it: the daemon is stopped at teardown)."""
    outcome = {}

    def run_it():
        try:
            outcome["value"] = action()
        except Exception as error:  # noqa: BLE001 - handed to the caller to check
            outcome["value"] = error
    thread = threading.Thread(target=run_it, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer within {seconds} s"
    return outcome["value"]


def assert_clean(image: Path) -> dict:
    proc = qemu_img("check", "--output=json", str(image), ok=False)
    assert proc.returncode == 0, f"qemu-img check: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def image(tmp_path) -> Path:
    require("qemu-img", "qemu-io")
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "16M")
    qemu_io(path, "write -P 0x5a 0 64k", "write -P 0x6b 1M 64k")
    return path


# --- 1. resize limits --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0xfffffffffffffe00, 1 << 63, 1 << 53])
def test_nbd_resize_beyond_the_format_limits_is_refused(start_blockd, tmp_path, image, size):
    """A huge NBD_CMD_RESIZE once trapped in the L1 arithmetic (2^64-512), grew the file to 2 TiB and
    never answered (2^63), or wrote an L1 table qemu-img refuses (2^53). Now: EINVAL, nothing changed."""
    from nbdwire import CMD_RESIZE, NBD_EINVAL, connect_go
    before = image.stat().st_size
    daemon = start_blockd(args=with_monitor(tmp_path, image, resize=True))
    c = connect_go(daemon.sock, "disk0", style="structured")
    started = time.monotonic()
    assert c.request(CMD_RESIZE, size, 0).error == NBD_EINVAL
    assert time.monotonic() - started < 10
    assert c.read(0, 4096).data == b"\x5a" * 4096, "the connection goes on"
    c.disconnect()
    assert_bystander_served(daemon)
    assert image.stat().st_size <= max(before, 1 * MiB)
    assert daemon.stop() == 0
    assert_clean(image)
    assert json.loads(qemu_img("info", "--output=json", str(image)).stdout)["virtual-size"] == 16 * MiB


def test_block_resize_beyond_the_format_limits_is_a_qmp_error(start_blockd, tmp_path, image):
    daemon = start_blockd(args=with_monitor(tmp_path, image))
    with QMP(tmp_path / "qmp.sock") as q:
        for size in (1 << 53, (1 << 63) - 512):
            error = q.error("block_resize", **{"node-name": "disk0"}, size=size)
            assert error["class"] == "GenericError" and "disk0" in error["desc"], error
        q.execute("block_resize", **{"node-name": "disk0"}, size=32 * MiB)  # a sane size still works
    assert_bystander_served(daemon)
    assert daemon.stop() == 0
    assert json.loads(qemu_img("info", "--output=json", str(image)).stdout)["virtual-size"] == 32 * MiB
    assert_clean(image)


def test_shrinking_a_huge_sparse_image_is_prompt(start_blockd, tmp_path):
    """Shrinking walks the L1 table, not every guest cluster (2^40 bytes of 64 KiB clusters)."""
    require("qemu-img")
    path = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), str(1 << 40))
    daemon = start_blockd(args=with_monitor(tmp_path, path))
    started = time.monotonic()
    with QMP(tmp_path / "qmp.sock") as q:
        q.execute("block_resize", **{"node-name": "disk0"}, size=1 * MiB)
    assert time.monotonic() - started < 10
    assert daemon.stop() == 0
    assert json.loads(qemu_img("info", "--output=json", str(path)).stdout)["virtual-size"] == 1 * MiB


# --- 2. backing loops ----------------------------------------------------------------------------

def test_an_image_that_backs_itself_is_refused_at_start(tmp_path):
    require("qemu-img")
    path = tmp_path / "self.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2", str(path), "16M")
    proc = subprocess.run([blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={path}",
                           "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"],
                          capture_output=True, text=True, timeout=30)
    assert 0 < proc.returncode < 128, f"crashed: {proc.returncode}\n{proc.stderr}"
    assert "backing" in proc.stderr and "loop" in proc.stderr, proc.stderr


def test_backing_loops_over_blockdev_add_leave_the_daemon_serving(start_blockd, tmp_path, image):
    require("qemu-img")
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", str(b), "-F", "qcow2", str(a), "16M")
    qemu_img("create", "-f", "qcow2", "-u", "-b", str(a), "-F", "qcow2", str(b), "16M")
    selfish = tmp_path / "self.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2", str(selfish), "16M")
    daemon = start_blockd(args=with_monitor(tmp_path, image))
    with QMP(tmp_path / "qmp.sock") as q:
        for path in (a, selfish):
            error = q.error("blockdev-add", driver="qcow2", **{"node-name": "loop"},
                            file={"driver": "file", "filename": str(path)})
            assert error["class"] == "GenericError" and "Could not open backing file" in error["desc"], error
        assert all(n["node-name"] != "loop" for n in q.execute("query-named-block-nodes"))
        q.execute("blockdev-add", driver="qcow2", **{"node-name": "ok"},
                  file={"driver": "file", "filename": str(image)}, **{"read-only": True})
    assert_bystander_served(daemon)


def test_deep_chains_open_and_too_deep_chains_are_refused(start_blockd, tmp_path):
    """A 40-image chain opens (over QMP, on a monitor thread); one deeper than 64 is refused cleanly."""
    require("qemu-img")
    previous = None
    for index in range(70):
        path = tmp_path / f"c{index}.qcow2"
        if previous is None:
            qemu_img("create", "-f", "qcow2", str(path), "1M")
        else:
            qemu_img("create", "-f", "qcow2", "-u", "-b", previous.name, "-F", "qcow2", str(path), "1M")
        previous = path
    qemu_io(tmp_path / "c0.qcow2", "write -P 0x11 0 4k")
    daemon = start_blockd(args=with_monitor(tmp_path, tmp_path / "c39.qcow2", writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert h.pread(4096, 0) == b"\x11" * 4096
    h.shutdown()
    with QMP(tmp_path / "qmp.sock") as q:
        error = q.error("blockdev-add", driver="qcow2", **{"node-name": "deep"}, **{"read-only": True},
                        file={"driver": "file", "filename": str(tmp_path / "c69.qcow2")})
        assert "deeper than 64" in error["desc"], error
    assert_bystander_served(daemon)


# --- 3. header fields near 2^64 ------------------------------------------------------------------

@pytest.mark.parametrize("field,offset,width", [
    ("size", 24, 8), ("backing-offset", 8, 8), ("l1-offset", 40, 8), ("refcount-table-offset", 48, 8),
    ("snapshots-offset", 64, 8), ("l1-size", 36, 4), ("refcount-table-clusters", 56, 4),
    ("backing-size", 16, 4), ("snapshot-count", 60, 4),
])
@pytest.mark.parametrize("value", [0xffffffffffffffff, 0xfffffffffffffe00, 1 << 63])
def test_header_fields_near_the_top_are_refused(tmp_path, field, offset, width, value):
    """The image is refused with a message naming it, or (where the field is unused, such as a backing
    name length without a backing name) served as it is; never a trap in the header arithmetic."""
    require("qemu-img")
    path = tmp_path / "h.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "16M")
    poke(path, offset, value & ((1 << (8 * width)) - 1), width)
    sock = tmp_path / "s.sock"
    log = tmp_path / "blockd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={path},read-only=on",
                                 "--blockdev", "driver=qcow2,node-name=disk0,file=f0,read-only=on",
                                 "--export", "type=nbd,id=e0,node-name=disk0,name=disk0",
                                 "--nbd-server", f"addr.type=unix,addr.path={sock}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            assert 0 < proc.returncode < 128, f"crashed: {proc.returncode}\n{log.read_text()}"
            assert "h.qcow2" in log.read_text(), log.read_text()
            return
        assert sock.exists(), "neither refused nor serving"
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///disk0?socket={sock}")
        assert h.pread(65536, 0) == b"\0" * 65536
        h.shutdown()
    finally:
        if proc.poll() is None:
            proc.terminate()
            assert proc.wait(15) == 0


# --- 4. invalid L1/L2 entries fail with EIO and mark the image corrupt ---------------------------

def l2_of(image: Path) -> int:
    return layout(image)["l1_entry0"] & 0x00fffffffffffe00


@pytest.mark.parametrize("case", ["l1-0x200", "l1-0xffff", "l1-l2+0x1000", "l2-reserved-0xffff",
                                  "l2-unaligned-data", "l2-reserved-high"])
def test_invalid_table_entries_fail_reads_and_raise_the_event(start_blockd, tmp_path, image, case):
    info = layout(image)
    l1, l2 = info["l1"], l2_of(image)
    data_host = u64(image.read_bytes(), l2) & 0x00fffffffffffe00
    if case == "l1-0x200":
        poke(image, l1, 0x200)
    elif case == "l1-0xffff":
        poke(image, l1, 0xffff)
    elif case == "l1-l2+0x1000":
        poke(image, l1, (1 << 63) | (l2 + 0x1000))
    elif case == "l2-reserved-0xffff":
        poke(image, l2, 0xffff)
    elif case == "l2-unaligned-data":
        poke(image, l2, data_host + 0x200)  # no COPIED flag, offset inside a cluster
    elif case == "l2-reserved-high":
        poke(image, l2, (1 << 63) | (1 << 57) | data_host)
    daemon = start_blockd(args=with_monitor(tmp_path, image, writable=False))
    with QMP(tmp_path / "qmp.sock") as q:
        h = nbd.NBD()
        h.connect_uri(daemon.uri())
        with pytest.raises(nbd.Error) as failure:
            h.pread(4096, 0)
        assert failure.value.errno == "EIO", failure.value
        event = q.event("BLOCK_IMAGE_CORRUPTED", timeout=5)
        assert event["data"]["node-name"] == "disk0" and event["data"]["fatal"] is True, event
        assert h.get_size() == 16 * MiB, "the connection survives"
        h.shutdown()
    assert_bystander_served(daemon)


def test_invalid_l2_entry_refuses_writes_and_sets_the_corrupt_bit(start_blockd, tmp_path, image):
    l2 = l2_of(image)
    poke(image, l2, 0xffff)
    daemon = start_blockd(args=with_monitor(tmp_path, image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    with pytest.raises(nbd.Error):
        h.pread(4096, 0)
    with pytest.raises(nbd.Error):
        h.pwrite(b"\x01" * 4096, 8 * MiB)  # an untouched area: the image takes no more writes
    h.shutdown()
    assert daemon.stop() == 0
    info = json.loads(qemu_img("info", "--output=json", "-U", str(image)).stdout)
    assert info["format-specific"]["data"]["corrupt"] is True


# --- 5. table entries past the end of the file ----------------------------------------------------

@pytest.mark.parametrize("entry", [0x100000000000000, 0x1ff, 0x10000 + 0x200, 1 << 40])
def test_refcount_entry_past_the_end_refuses_writable_opens(start_blockd, tmp_path, image, entry):
    """A refcount table entry past the end of the file (or with reserved bits, or unaligned) once made
    the first allocating write spin forever. A writable open now refuses the image, saying why; a
    read-only export serves it."""
    info = layout(image)
    poke(image, info["reftable"], entry)
    before = image.read_bytes()
    proc = subprocess.run([blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={image}",
                           "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "damaged" in proc.stderr and "refcount table entry 0" in proc.stderr, proc.stderr
    assert image.read_bytes() == before, "a refused open changes nothing"
    daemon = start_blockd(args=with_monitor(tmp_path, image, writable=False))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    assert within(10, lambda: h.pread(4096, 0)) == b"\x5a" * 4096
    h.shutdown()


def test_l2_entry_past_the_end_never_serves_later_data(start_blockd, tmp_path, image):
    """An L2 entry pointing just past the end of the file: once writes grow the file, that offset
    holds new data. The read of the damaged cluster must fail (EIO), never return that data."""
    l2 = l2_of(image)
    end = image.stat().st_size
    cluster = layout(image)["cluster"]
    poke(image, l2 + 8 * 5, (1 << 63) | (end + cluster - 1) // cluster * cluster)  # guest cluster 5
    daemon = start_blockd(args=with_monitor(tmp_path, image, writable=True))
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    for index in range(8):
        h.pwrite(bytes([0xA0 + index]) * cluster, (100 + index) * cluster)  # allocations grow the file
    h.flush()
    with pytest.raises(nbd.Error) as failure:
        h.pread(4096, 5 * cluster)
    assert failure.value.errno == "EIO"
    assert h.pread(4096, 100 * cluster) == b"\xa0" * 4096
    h.shutdown()


# --- persistent bitmaps are never destroyed -------------------------------------------------------

def bitmaps_of(image: Path) -> list:
    info = json.loads(qemu_img("info", "--output=json", "-U", str(image)).stdout)
    return info.get("format-specific", {}).get("data", {}).get("bitmaps", [])


def test_images_with_bitmaps_keep_them(start_blockd, tmp_path, image):
    """qemu-img bitmap --add; a writable export takes writes and keeps the bitmap in use on disk
    while open (so a crash would leave it inconsistent, never stale); after a clean stop the bitmap
    is listed without in-use, records the write, and qemu-img check is clean (issue #12)."""
    qemu_img("bitmap", "--add", "--enable", str(image), "cbt0")
    assert [b["name"] for b in bitmaps_of(image)] == ["cbt0"]
    daemon = start_blockd(args=with_monitor(tmp_path, image, writable=True))
    assert "in-use" in bitmaps_of(image)[0]["flags"]
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\xee" * 4096, 3 << 20)
    h.flush()
    h.shutdown()
    with QMP(tmp_path / "qmp.sock") as q:
        nodes = q.execute("query-named-block-nodes")
        listed = next(n for n in nodes if n["node-name"] == "disk0")["dirty-bitmaps"]
        assert [(b["name"], b["count"], b["persistent"], b["recording"]) for b in listed] == [("cbt0", 65536, True, True)]
    assert daemon.stop() == 0
    assert [b["name"] for b in bitmaps_of(image)] == ["cbt0"]
    assert bitmaps_of(image)[0]["flags"] == ["auto"]
    assert_clean(image)


# --- option values near 2^64 -----------------------------------------------------------------------

@pytest.mark.parametrize("offset,size", [(0, (1 << 64) - 1), (512, (1 << 64) - 512), ((1 << 63), 512)])
def test_raw_windows_past_the_end_are_refused(tmp_path, image, offset, size):
    """A raw window whose offset + size overflows once trapped the daemon at start."""
    proc = subprocess.run([blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={image}",
                           "--blockdev", f"driver=raw,node-name=w,file=f0,offset={offset},size={size}",
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"],
                          capture_output=True, text=True, timeout=30)
    assert 0 < proc.returncode < 128, f"crashed: {proc.returncode}\n{proc.stderr}"
    assert "'w'" in proc.stderr, proc.stderr


def test_check_of_an_entry_near_the_top_is_prompt(tmp_path, image):
    """Found by the qcow2-check fuzzer: one L2 entry near 2^56 made the check walk every cluster up
    to it (hours). blockimg check now reports it at once, as qemu-img does."""
    from conftest import ROOT
    import os
    blockimg = os.environ.get("BLOCKIMG") or str(ROOT / ".build" / "release" / "blockimg")
    l2 = l2_of(image)
    poke(image, l2 + 8 * 7, (1 << 63) | 0x00ff_ffff_ffff_0000)
    started = time.monotonic()
    proc = subprocess.run([blockimg, "check", str(image)], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)  # corruptions found
    assert "ERROR" in proc.stdout + proc.stderr
