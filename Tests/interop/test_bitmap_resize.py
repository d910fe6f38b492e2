"""block_resize of a node with dirty bitmaps (issue #12): the bitmaps are resized with the node, as
QEMU does (a larger end clean, writes there recorded; blockd's qcow2 does not shrink), persistent
ones stored at their new size; compared with qemu-storage-daemon 7.2 bit for bit, and in the image
that qemu-img reads afterwards. blockimg resize does the same to an image's bitmaps as qemu-img resize."""
import json
import os
import shutil
import time
from pathlib import Path

from client_helpers import run
from conftest import require
from qmp_client import QMP, launcher  # noqa: F401 (fixture)

MiB = 1 << 20


def image_bitmaps(image: Path) -> list:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(image)]).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def state(q: QMP) -> list:
    entry = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == "disk0")
    return sorted([(b["name"], b["count"], b["granularity"], b["recording"], b["persistent"],
             q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=b["name"])["sha256"])
            for b in entry.get("dirty-bitmaps", [])])


def export_and_write(q: QMP, sock: Path, *commands: str) -> None:
    q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True)
    run(["qemu-io", "-f", "raw", *[a for c in commands for a in ("-c", c)], f"nbd+unix:///disk0?socket={sock}"])
    # qemu-io has closed its connection; the server notices it asynchronously, so a safe-mode delete
    # may come while the client still counts ("still in use"): retry for a moment.
    deadline = time.monotonic() + 10
    while "error" in (reply := q.cmd("block-export-del", id="e0")):
        assert "still in use" in reply["error"]["desc"] and time.monotonic() < deadline, reply
        time.sleep(0.05)
    while q.execute("query-block-exports"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_resize_with_bitmaps_as_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon", "qemu-img", "qemu-io")
    results = {}
    for program in ("blockd", "qsd"):
        disk = tmp_path / f"{program}.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(64 * MiB)])
        run(["qemu-img", "bitmap", "--add", str(disk), "p"])
        sock = tmp_path / f"{program}.nbd"
        args = ["--blockdev", f"driver=file,node-name=f0,filename={disk}",
                "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                "--nbd-server", f"addr.type=unix,addr.path={sock}"]
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        seen = []
        with daemon.qmp() as q:
            q.execute("block-dirty-bitmap-add", node="disk0", name="t", granularity=4096)
            q.execute("block-dirty-bitmap-add", node="disk0", name="off", granularity=512, disabled=True)
            export_and_write(q, sock, "write 1M 64k", "write 40M 1M", "write 63M 1M")
            seen.append(state(q))
            for size in (80 * MiB, 96 * MiB + 512):
                reply = q.cmd("block_resize", {"node-name": "disk0", "size": size})
                seen.append(reply.get("error", {}).get("desc", "ok"))
                seen.append(state(q))
            export_and_write(q, sock, "write 90M 64k", "write 47M 2M")
            seen.append(state(q))
        daemon.stop()
        seen.append(image_bitmaps(disk))
        run(["qemu-img", "check", "-q", str(disk)])
        results[program] = seen
    for index, (ours, theirs) in enumerate(zip(results["blockd"], results["qsd"])):
        assert ours == theirs, f"step {index}: blockd {ours}, qsd {theirs}"


def test_blockimg_resize_keeps_bitmaps_as_qemu_img(tmp_path):
    """blockimg resize of an image with persistent bitmaps gives the listing and bits qemu-img
    resize gives (read back by qemu-storage-daemon's sha256)."""
    require("qemu-img", "qemu-io")
    from test_blockimg import blockimg_binary
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(64 * MiB)])
    run(["qemu-img", "bitmap", "--add", "-g", "4k", str(base), "b"])
    run(["qemu-io", "-f", "qcow2", "-c", "write 1M 64k", "-c", "write 60M 2M", str(base)])
    listings = {}
    for tool in ("qemu-img", blockimg_binary()):
        copy = tmp_path / f"{Path(tool).name}.qcow2"
        shutil.copy(base, copy)
        run([tool, "resize", str(copy), str(80 * MiB)])
        run(["qemu-img", "check", "-q", str(copy)])
        listings[tool] = (image_bitmaps(copy), json.loads(run(["qemu-img", "info", "--output=json", str(copy)]).stdout)["virtual-size"])
    assert listings["qemu-img"] == listings[blockimg_binary()]


def test_shrinking_a_raw_node_drops_the_bits_past_its_end_as_qemu_storage_daemon(launcher, tmp_path):
    """A raw node shrunk and grown again: its bitmaps lose the bits past the smaller end and come back
    clean there, bit for bit as on qemu-storage-daemon."""
    require("qemu-storage-daemon", "qemu-io")
    results = {}
    for program in ("blockd", "qsd"):
        image = tmp_path / f"{program}.raw"
        image.write_bytes(b"")
        os.truncate(image, 64 * MiB)
        sock = tmp_path / f"{program}.nbd"
        args = ["--blockdev", f"driver=file,node-name=f0,filename={image}",
                "--blockdev", "driver=raw,node-name=disk0,file=f0",
                "--nbd-server", f"addr.type=unix,addr.path={sock}"]
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        seen = []
        with daemon.qmp() as q:
            q.execute("block-dirty-bitmap-add", node="disk0", name="t", granularity=4096)
            q.execute("block-dirty-bitmap-add", node="disk0", name="u")
            export_and_write(q, sock, "write 1M 64k", "write 20M 3M", "write 63M 1M")
            seen.append(state(q))
            for size in (21 * MiB + 4096, 64 * MiB):
                reply = q.cmd("block_resize", {"node-name": "disk0", "size": size})
                seen.append(reply.get("error", {}).get("desc", "ok"))
                seen.append(state(q))
        results[program] = seen
    for index, (ours, theirs) in enumerate(zip(results["blockd"], results["qsd"])):
        assert ours == theirs, f"step {index}: blockd {ours}, qsd {theirs}"
