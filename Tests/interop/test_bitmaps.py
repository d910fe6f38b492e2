"""Dirty bitmaps (issue #12): the QMP commands against qemu-storage-daemon's answers, marking by
client writes, the qemu:dirty-bitmap:NAME meta context read by nbdinfo, qemu-img and libnbd, an
incremental backup that copies only the dirty extents, persistence in qcow2 both ways with
qemu-img and qemu-storage-daemon, and a crash that leaves bitmaps inconsistent."""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from client_helpers import run
from conftest import import_or_skip, require
from qmp_client import QMP, launcher  # noqa: F401 (fixture)

nbd = import_or_skip("nbd")

SIZE = 64 << 20


def qcow2(path: Path, size: int = SIZE) -> Path:
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)])
    return path


def node_args(image: Path, sock: Path, node: str = "disk0") -> list[str]:
    return ["--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--blockdev", f"driver=qcow2,node-name={node},file=f0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}"]


def bitmaps_of(q: QMP, node: str = "disk0") -> list[dict]:
    entry = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == node)
    return entry.get("dirty-bitmaps", [])


def listing(q: QMP, node: str = "disk0") -> list[tuple]:
    """The dirty-bitmaps entries with the members QEMU 7.2 and blockd both report."""
    return [(b["name"], b["count"], b["granularity"], b["recording"], b["busy"], b["persistent"], b.get("inconsistent", False))
            for b in bitmaps_of(q, node)]


def dirty_map(uri: str, name: str) -> list[tuple[int, int, int]]:
    out = run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", uri]).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


def image_bitmaps(image: Path) -> list[dict]:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", str(image)]).stdout)
    return info.get("format-specific", {}).get("data", {}).get("bitmaps", [])


def writes(uri: str, *commands: str) -> None:
    run(["qemu-io", "-f", "raw", *[arg for c in commands for arg in ("-c", c)], uri])


# --- commands, errors and listings, side by side with qemu-storage-daemon -------------------------

ERROR_SEQUENCE = [
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "b0"}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "b0"}),
    ("block-dirty-bitmap-add", {"node": "zz", "name": "b0"}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": ""}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "x" * 1024}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "g", "granularity": 1000}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "g", "granularity": 256}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "g", "granularity": 1 << 31}),
    ("block-dirty-bitmap-add", {"node": "f0", "name": "p", "persistent": True}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "p", "persistent": True, "granularity": 512}),
    ("block-dirty-bitmap-add", {"node": "disk0", "name": "d", "disabled": True}),
    ("block-dirty-bitmap-remove", {"node": "disk0", "name": "zz"}),
    ("block-dirty-bitmap-remove", {"node": "zz", "name": "zz"}),
    ("block-dirty-bitmap-clear", {"node": "disk0", "name": "zz"}),
    ("block-dirty-bitmap-enable", {"node": "disk0", "name": "zz"}),
    ("block-dirty-bitmap-disable", {"node": "disk0", "name": "zz"}),
    ("block-dirty-bitmap-merge", {"node": "disk0", "target": "zz", "bitmaps": ["b0"]}),
    ("block-dirty-bitmap-merge", {"node": "disk0", "target": "b0", "bitmaps": ["zz"]}),
    ("block-dirty-bitmap-merge", {"node": "disk0", "target": "b0", "bitmaps": [{"node": "nn", "name": "zz"}]}),
    ("block-dirty-bitmap-merge", {"node": "disk0", "target": "b0", "bitmaps": ["d", {"node": "disk0", "name": "p"}]}),
    ("block-dirty-bitmap-disable", {"node": "disk0", "name": "b0"}),
    ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "disk0", "bitmaps": ["p"]}),
    ("block-export-add", {"type": "nbd", "id": "e2", "node-name": "disk0", "bitmaps": ["zz"], "writable": True}),
    ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "disk0", "name": "x3", "bitmaps": ["b0"]}),
    ("block-dirty-bitmap-remove", {"node": "disk0", "name": "b0"}),
    ("block-dirty-bitmap-clear", {"node": "disk0", "name": "b0"}),
    ("block-dirty-bitmap-enable", {"node": "disk0", "name": "b0"}),
    ("block-export-add", {"type": "nbd", "id": "e4", "node-name": "disk0", "name": "x4", "bitmaps": ["b0"]}),
    ("nbd-server-add", {"device": "disk0", "name": "x5", "bitmap": "zz"}),
    ("nbd-server-add", {"device": "disk0", "name": "x6", "bitmap": "d"}),
    ("block-export-del", {"id": "e3"}),
    ("block-export-del", {"id": "x6"}),
]


def test_commands_answer_as_qemu_storage_daemon(launcher, tmp_path):
    """Every answer of a sequence of bitmap commands (successes and QEMU's error wording), and the
    dirty-bitmaps listing after it, equal qemu-storage-daemon 7.2's."""
    answers = {}
    listings = {}
    for program in ("blockd", "qsd"):
        image = qcow2(tmp_path / f"{program}.qcow2")
        args = node_args(image, tmp_path / f"{program}.nbd")
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        with daemon.qmp() as q:
            got = []
            for name, arguments in ERROR_SEQUENCE:
                reply = q.cmd(name, arguments)
                got.append(reply.get("error", {}).get("desc", "ok"))
            answers[program] = got
            listings[program] = sorted(listing(q))
    for (name, arguments), ours, theirs in zip(ERROR_SEQUENCE, answers["blockd"], answers["qsd"]):
        assert ours == theirs, f"{name} {json.dumps(arguments)[:80]}: blockd {ours!r}, qsd {theirs!r}"
    assert listings["blockd"] == listings["qsd"]


# --- writes mark bitmaps; the meta context on the wire --------------------------------------------

CLIENT_WRITES = ["write -P 1 0 4k", "write -P 2 1M 64k", "write -z 8M 128k", "discard 16M 1M", "write -P 3 60M 1"]


def test_writes_show_in_the_dirty_bitmap_context_as_on_qemu_storage_daemon(launcher, tmp_path):
    """Writes, zero-writes and discards through a writable export mark the bitmap at its
    granularity; nbdinfo --map=qemu:dirty-bitmap:b0, the counts and the sha256 of the bits equal
    qemu-storage-daemon's for the same writes; qemu-img map with x-dirty-bitmap reads it too."""
    require("nbdinfo", "qemu-io", "qemu-img")
    results = {}
    for program in ("blockd", "qsd"):
        image = qcow2(tmp_path / f"{program}.qcow2")
        sock = tmp_path / f"{program}.nbd"
        args = node_args(image, sock)
        daemon = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        with daemon.qmp() as q:
            q.execute("block-dirty-bitmap-add", node="disk0", name="b0")
            q.execute("block-dirty-bitmap-add", node="disk0", name="small", granularity=4096)
            q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True,
                      bitmaps=["b0", {"node": "disk0", "name": "small"}])
            uri = f"nbd+unix:///disk0?socket={sock}"
            writes(uri, *CLIENT_WRITES)
            sums = [q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=n)["sha256"] for n in ("b0", "small")]
            contexts = run(["nbdinfo", "--list", "--json", uri]).stdout
            results[program] = (dirty_map(uri, "b0"), dirty_map(uri, "small"), sorted(listing(q)), sums,
                                sorted(json.loads(contexts)["exports"][0]["contexts"]))
            mapped = run(["qemu-img", "map", "--output=json", "--image-opts",
                          f"driver=nbd,export=disk0,server.type=unix,server.path={sock},x-dirty-bitmap=qemu:dirty-bitmap:b0"]).stdout
            # qemu-img reads the bitmap context in place of base:allocation: dirty = "data": false.
            results[program] += ([(e["start"], e["length"], e["data"]) for e in json.loads(mapped)],)
    ours, theirs = results["blockd"], results["qsd"]
    assert ours[0] == theirs[0]
    assert (0, 65536, 1) in ours[0] and (65536, (1 << 20) - 65536, 0) in ours[0]  # a 4 KiB write dirties one 64 KiB chunk
    assert ours[1] == theirs[1] and ours[2] == theirs[2] and ours[3] == theirs[3]
    assert ours[4] == theirs[4] and "qemu:dirty-bitmap:small" in ours[4]
    assert ours[5] == theirs[5]


def test_block_status_with_req_one_and_extended_headers(start_blockd, tmp_path):
    """libnbd's block_status over base:allocation and the bitmap context, as backup tools call it
    (get_block_size(SIZE_MAXIMUM) per request), with REQ_ONE and with and without extended headers."""
    image = qcow2(tmp_path / "d.qcow2")
    sock = tmp_path / "q.sock"
    daemon = start_blockd(args=node_args(image, tmp_path / "unused.sock")[:-2] + [
        "--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0"], export="disk0")
    with QMP(sock) as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="cbt")
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["cbt"])
    for extended in (False, True):
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.add_meta_context("qemu:dirty-bitmap:cbt")
        if hasattr(h, "set_request_extended_headers"):
            h.set_request_extended_headers(extended)
        h.connect_uri(daemon.uri())
        assert h.can_meta_context("qemu:dirty-bitmap:cbt")
        h.pwrite(b"\x11" * 8192, 3 << 20)
        seen = {}

        def record(metacontext, offset, entries, err):
            seen.setdefault(metacontext, []).append((offset, list(entries)))
            return 0
        length = min(h.get_block_size(nbd.SIZE_MAXIMUM), SIZE)
        h.block_status(length, 0, record)
        pairs = seen["qemu:dirty-bitmap:cbt"][0][1]
        assert pairs == [3 << 20, 0, 65536, 1, length - (3 << 20) - 65536, 0], pairs
        assert "base:allocation" in seen
        seen.clear()
        h.block_status(length, 0, record, nbd.CMD_FLAG_REQ_ONE)
        assert seen["qemu:dirty-bitmap:cbt"][0][1] == [3 << 20, 0]
        h.shutdown()


# --- incremental backup with real tools -------------------------------------------------------------

def copy_dirty(uri: str, bitmap: str, backup: Path) -> int:
    """Copies the dirty extents nbdinfo reports into `backup` with libnbd; returns the bytes copied."""
    h = nbd.NBD()
    h.connect_uri(uri)
    copied = 0
    with open(backup, "r+b") as out:
        for offset, length, kind in dirty_map(uri, bitmap):
            if kind & 1:
                out.seek(offset)
                out.write(h.pread(length, offset))
                copied += length
    h.shutdown()
    return copied


def test_incremental_backup_rounds(start_blockd, tmp_path):
    """A full copy with nbdcopy, then rounds of client writes (qemu-io, nbdsh) each followed by an
    incremental copy of just the dirty extents: the backup equals the disk after every round
    (qemu-img compare), and each round copies only what its writes dirtied."""
    require("nbdcopy", "nbdinfo", "nbdsh", "qemu-io", "qemu-img")
    image = qcow2(tmp_path / "d.qcow2")
    sock = tmp_path / "q.sock"
    daemon = start_blockd(args=node_args(image, tmp_path / "unused.sock")[:-2] + [
        "--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0"], export="disk0")
    with QMP(sock) as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="cbt", persistent=True)
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["cbt"])
        uri = daemon.uri()
        writes(uri, "write -P 7 0 1M", "write -P 9 40M 3M")
        backup = tmp_path / "backup.raw"
        run(["nbdcopy", uri, str(backup)])
        q.execute("block-export-del", id="e0")
        q.execute("block-dirty-bitmap-clear", node="disk0", name="cbt")
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["cbt"])
        for round_ in range(3):
            writes(uri, f"write -P {round_ + 20} {round_ * 5 + 1}M 12k", f"write -z {round_ * 7 + 30}M 64k")
            run(["nbdsh", "-u", uri, "-c", f"h.pwrite(b'\\x5a' * 1000, {(round_ + 50) << 20} + 3)"],
                env={**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")})  # nbdsh runs python3 -m nbd
            assert copy_dirty(uri, "cbt", backup) == 3 * 65536  # three writes, three 64 KiB chunks
            run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(backup), uri])
            # An exported bitmap is busy (QEMU's rule): the next period starts with the export re-added.
            assert "in use" in q.error("block-dirty-bitmap-clear", node="disk0", name="cbt")["desc"]
            q.execute("block-export-del", id="e0")
            q.execute("block-dirty-bitmap-clear", node="disk0", name="cbt")
            q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["cbt"])
        assert listing(q)[0][1] == 0


# --- persistence: blockd restarts, qemu-img and qemu-storage-daemon both ways ---------------------

def test_persistent_bitmap_survives_restart_and_qemu_reads_it(launcher, tmp_path):
    """A persistent bitmap written through blockd is in the image after a clean stop (qemu-img info
    lists it, qemu-img check is clean, qemu-img bitmap --merge/--disable/--remove take it);
    blockd started again has the same bits, and qemu-storage-daemon serves the same dirty map."""
    require("qemu-img", "qemu-io", "nbdinfo")
    image = qcow2(tmp_path / "d.qcow2")
    sock = tmp_path / "b.nbd"
    daemon = launcher.blockd(*node_args(image, sock), name="b1")
    with daemon.qmp() as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="cbt0", persistent=True, granularity=65536)
        q.execute("block-dirty-bitmap-add", node="disk0", name="off", persistent=True, disabled=True, granularity=16384)
        q.execute("block-dirty-bitmap-add", node="disk0", name="mem")
        q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"}, writable=True, bitmaps=["cbt0"])
        writes(f"nbd+unix:///disk0?socket={sock}", "write -P 1 5M 4k", "write -P 2 33M 200k")
        q.execute("block-dirty-bitmap-merge", node="disk0", target="off", bitmaps=["cbt0"])
        before = dirty_map(f"nbd+unix:///disk0?socket={sock}", "cbt0")
        sha = q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name="cbt0")["sha256"]
    assert daemon.stop() == 0
    assert [(b["name"], b["granularity"], b["flags"]) for b in image_bitmaps(image)] == [
        ("cbt0", 65536, ["auto"]), ("off", 16384, [])]
    run(["qemu-img", "check", str(image)])

    daemon = launcher.blockd(*node_args(image, sock), name="b2")
    with daemon.qmp() as q:
        assert listing(q) == [("cbt0", 5 * 65536, 65536, True, False, True, False),
                              ("off", 20 * 16384, 16384, False, False, True, False)]  # 5 chunks of 64 KiB merged in
        assert q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name="cbt0")["sha256"] == sha
    assert daemon.stop() == 0

    qsd_sock = tmp_path / "q.nbd"
    qsd = launcher.qsd(*node_args(image, qsd_sock), "--export", "type=nbd,id=e0,node-name=disk0,bitmaps.0=cbt0,writable=on", name="qsd")
    assert dirty_map(f"nbd+unix:///disk0?socket={qsd_sock}", "cbt0") == before
    with qsd.qmp() as q:
        assert q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name="cbt0")["sha256"] == sha
    qsd.stop()
    run(["qemu-img", "bitmap", "--merge", "cbt0", "--disable", str(image), "off"])
    run(["qemu-img", "bitmap", "--remove", str(image), "cbt0"])
    assert [b["name"] for b in image_bitmaps(image)] == ["off"]
    run(["qemu-img", "check", str(image)])


def test_blockd_reads_what_qemu_wrote(launcher, tmp_path):
    """Bitmaps made by qemu-img bitmap and filled by qemu-storage-daemon's writes load in blockd with
    the same bits and flags; blockd keeps them through its own writes and a clean stop."""
    require("qemu-img", "qemu-io", "nbdinfo")
    image = qcow2(tmp_path / "d.qcow2")
    run(["qemu-img", "bitmap", "--add", "-g", "32768", str(image), "a"])
    run(["qemu-img", "bitmap", "--add", "--disable", str(image), "b"])
    sock = tmp_path / "q.nbd"
    qsd = launcher.qsd(*node_args(image, sock), "--export", "type=nbd,id=e0,node-name=disk0,writable=on,bitmaps.0=a", name="qsd")
    writes(f"nbd+unix:///disk0?socket={sock}", "write 1M 100k", "write -z 20M 1M")
    theirs = dirty_map(f"nbd+unix:///disk0?socket={sock}", "a")
    with qsd.qmp() as q:
        sums = [q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=n)["sha256"] for n in ("a", "b")]
        qsd_listing = sorted(listing(q))
    qsd.stop()
    bsock = tmp_path / "b.nbd"
    daemon = launcher.blockd(*node_args(image, bsock), "--export", "type=nbd,id=e0,node-name=disk0,writable=on,bitmaps.0=a")
    assert dirty_map(f"nbd+unix:///disk0?socket={bsock}", "a") == theirs
    with daemon.qmp() as q:
        assert [q.execute("x-debug-block-dirty-bitmap-sha256", node="disk0", name=n)["sha256"] for n in ("a", "b")] == sums
        assert sorted(listing(q)) == qsd_listing
    writes(f"nbd+unix:///disk0?socket={bsock}", "write 50M 4k")
    assert daemon.stop() == 0
    assert [(b["name"], b["flags"]) for b in image_bitmaps(image)] == [("a", ["auto"]), ("b", [])]
    run(["qemu-img", "check", str(image)])


def test_crash_leaves_bitmaps_inconsistent(launcher, tmp_path):
    """SIGKILL while open read-write: qemu-img info shows the bitmap in use; blockd (like
    qemu-storage-daemon) loads it inconsistent, refuses to use it with QEMU's words, and removes it."""
    image = qcow2(tmp_path / "d.qcow2")
    daemon = launcher.blockd(*node_args(image, tmp_path / "b.nbd"), name="b1")
    with daemon.qmp() as q:
        q.execute("block-dirty-bitmap-add", node="disk0", name="cbt", persistent=True)
    daemon.stop()  # stored cleanly once
    daemon = launcher.blockd(*node_args(image, tmp_path / "b.nbd"), name="b2")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    launcher.started.remove(daemon)
    assert image_bitmaps(image)[0]["flags"] == ["in-use", "auto"]
    answers = {}
    for program in ("blockd", "qsd"):
        copy = tmp_path / f"{program}.qcow2"
        copy.write_bytes(image.read_bytes())
        args = node_args(copy, tmp_path / f"{program}.nbd")
        d = launcher.blockd(*args, name=program) if program == "blockd" else launcher.qsd(*args, name=program)
        with d.qmp() as q:
            got = [listing(q)]
            for name in ("block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-remove"):
                got.append(q.cmd(name, {"node": "disk0", "name": "cbt"}).get("error", {}).get("desc", "ok"))
            got.append(listing(q))
            answers[program] = got
        d.stop()
        assert image_bitmaps(copy) == []
    assert answers["blockd"] == answers["qsd"]
    assert answers["blockd"][0][0][6] is True


def test_blockdev_del_stores_bitmaps(launcher, tmp_path):
    """blockdev-del of a qcow2 node (with its file defined inline) stores its persistent bitmaps, as
    a clean stop does (resizing with bitmaps: test_bitmap_resize.py)."""
    image = qcow2(tmp_path / "d.qcow2")
    daemon = launcher.blockd("--nbd-server", f"addr.type=unix,addr.path={tmp_path}/b.nbd")
    with daemon.qmp() as q:
        q.execute("blockdev-add", driver="qcow2", **{"node-name": "disk0"}, file={"driver": "file", "filename": str(image)})
        q.execute("block-dirty-bitmap-add", node="disk0", name="keep", persistent=True)
        q.execute("blockdev-del", **{"node-name": "disk0"})
        assert [b["name"] for b in image_bitmaps(image)] == ["keep"]
        q.execute("blockdev-add", driver="qcow2", **{"node-name": "disk0"}, file={"driver": "file", "filename": str(image)})
        assert listing(q) == [("keep", 0, 65536, True, False, True, False)]
        q.execute("block-dirty-bitmap-remove", node="disk0", name="keep")
        q.execute("block_resize", **{"node-name": "disk0"}, size=SIZE * 2)
        q.execute("blockdev-del", **{"node-name": "disk0"})
    assert image_bitmaps(image) == []
    run(["qemu-img", "check", str(image)])


def test_blockimg_info_lists_bitmaps_as_qemu_img(tmp_path):
    """blockimg info (human and JSON) lists an image's bitmaps (flags, name, granularity) exactly
    as qemu-img info does, in-use flag included."""
    from test_blockimg import blockimg_binary
    image = qcow2(tmp_path / "d.qcow2")
    run(["qemu-img", "bitmap", "--add", str(image), "b0"])
    run(["qemu-img", "bitmap", "--add", "-g", "512", "--disable", str(image), "b1"])
    for _ in range(2):
        theirs = json.loads(run(["qemu-img", "info", "--output=json", str(image)]).stdout)["format-specific"]
        ours = json.loads(run([blockimg_binary(), "info", "--output=json", str(image)]).stdout)["format-specific"]
        assert ours == theirs
        human = [line for line in run(["qemu-img", "info", str(image)]).stdout.splitlines() if line.startswith("    ")]
        assert [line for line in run([blockimg_binary(), "info", str(image)]).stdout.splitlines() if line.startswith("    ")] == human
        # Second pass: b0 left in use, as after a crash.
        data = bytearray(image.read_bytes())
        ext = data.find((0x23852875).to_bytes(4, "big"), 104)
        directory = int.from_bytes(data[ext + 8 + 16:ext + 8 + 24], "big")
        data[directory + 15] |= 1
        image.write_bytes(bytes(data))
    assert "in-use" in ours["data"]["bitmaps"][0]["flags"]
