"""Tray and medium of a device under a live NBD export: blockdev-open-tray / blockdev-close-tray,
x-blockdev-remove-medium / x-blockdev-insert-medium (and their later names), blockdev-change-medium,
the DEVICE_TRAY_MOVED event and what query-block shows. A libnbd client stays connected through every
change: it reads the new image's bytes after a swap, gets EIO while there is no medium, and a new
client is refused with a clear message then."""
import json
import os

import pytest

from client_helpers import output, run
from conftest import make_image, require, import_or_skip
from library_monitor import monitor
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")


class Env:
    """blockd with a 2.6-form device "cd0" over image A (node "a"), exported writable as "cd0", and a
    second image B (a different size) that is not opened yet."""

    def __init__(self, launcher, tmp_path):
        self.tmp = tmp_path
        self.a = make_image(tmp_path / "a.img", 1 * MiB, b"random")
        self.b = make_image(tmp_path / "b.img", 2 * MiB, b"random")
        self.sock = tmp_path / "nbd.sock"
        self.daemon = launcher.blockd("--nbd-server", f"addr.type=unix,addr.path={self.sock}")
        self.q = monitor(self.daemon)
        self.q.execute("blockdev-add", options={"driver": "raw", "id": "cd0", "node-name": "a",
                                               "file": {"driver": "file", "filename": str(self.a)}})
        self.q.execute("nbd-server-add", device="cd0", writable=True)

    def uri(self, name: str = "cd0") -> str:
        return f"nbd+unix:///{name}?socket={self.sock}"

    def connect(self, name: str = "cd0"):
        h = nbd.NBD()
        h.connect_uri(self.uri(name))
        return h

    def block(self, device: str = "cd0") -> dict:
        answer = self.q.execute("query-block")
        Schema(self.q.execute("query-qmp-schema")).check_return("query-block", answer)
        found = [d for d in answer if d["device"] == device]
        assert len(found) == 1, answer
        return found[0]

    def tray_event(self, open_: bool) -> None:
        event = self.q.event("DEVICE_TRAY_MOVED")
        assert event["data"] == {"device": "cd0", "id": "cd0", "tray-open": open_}, event


@pytest.fixture
def env(launcher, tmp_path):
    environment = Env(launcher, tmp_path)
    yield environment
    environment.q.close()


def eio(call, *args):
    with pytest.raises(nbd.Error) as error:
        call(*args)
    assert error.value.errno == "EIO", error.value
    return error.value


def test_change_medium_under_a_connected_client(env):
    a, b = env.a.read_bytes(), env.b.read_bytes()
    h = env.connect()
    assert h.get_size() == 1 * MiB
    assert h.pread(64 * KiB, 0) == a[:64 * KiB]
    env.q.execute("blockdev-change-medium", id="cd0", filename=str(env.b), format="raw")
    env.tray_event(True)
    env.tray_event(False)
    # The same handle now reads B; the size it was told at connection time is not updated.
    assert h.pread(64 * KiB, 0) == b[:64 * KiB]
    assert h.pread(4096, 1 * MiB - 4096) == b[1 * MiB - 4096:1 * MiB]
    h.pwrite(b"\x5a" * 4096, 8192)
    h.flush()
    assert env.b.read_bytes()[8192:12288] == b"\x5a" * 4096
    assert env.a.read_bytes() == a, "the old image is not written any more"
    # A reconnecting client sees B's size; nbdinfo agrees.
    fresh = env.connect()
    assert fresh.get_size() == 2 * MiB and fresh.pread(4096, 2 * MiB - 4096) == b[-4096:]
    fresh.shutdown()
    require("nbdinfo")
    assert int(run(["nbdinfo", "--size", env.uri()]).stdout) == 2 * MiB
    info = env.block()
    assert info["inserted"]["file"] == str(env.b) and info["inserted"]["image"]["virtual-size"] == 2 * MiB
    assert info["tray_open"] is False and info["inserted"]["node-name"].startswith("#block"), "the new node's name"
    # The old node stays in the graph (blockdev-add made it); the opened one is listed by its generated name.
    names = [n.get("node-name") for n in env.q.execute("query-named-block-nodes")]
    assert "a" in names and info["inserted"]["node-name"] in names
    # The 2.6 form with "device", back to A, read-only: the client's writes now fail with EPERM.
    env.q.execute("blockdev-change-medium", device="cd0", filename=str(env.a), **{"read-only-mode": "read-only"})
    assert h.pread(4096, 0) == a[:4096]
    with pytest.raises(nbd.Error) as error:
        h.pwrite(b"\1" * 4096, 0)
    assert error.value.errno == "EPERM"
    assert env.block()["inserted"]["ro"] is True
    ro = env.connect()
    assert ro.is_read_only() and ro.get_size() == 1 * MiB
    ro.shutdown()
    # "retain" keeps read-only; "read-write" makes it writable again.
    env.q.execute("blockdev-change-medium", id="cd0", filename=str(env.b))
    assert env.block()["inserted"]["ro"] is True
    env.q.execute("blockdev-change-medium", id="cd0", filename=str(env.b), **{"read-only-mode": "read-write"})
    h.pwrite(b"\x6b" * 4096, 0)
    h.flush()
    assert env.b.read_bytes()[:4096] == b"\x6b" * 4096
    h.shutdown()


def test_open_remove_insert_close_with_a_connected_client(env):
    a, b = env.a.read_bytes(), env.b.read_bytes()
    h = env.connect()
    assert h.pread(4096, 0) == a[:4096]
    before = env.block()
    assert before["removable"] is True and before["locked"] is False and before["tray_open"] is False
    assert before["inserted"]["node-name"] == "a" and before["inserted"]["file"] == str(env.a)

    env.q.execute("blockdev-open-tray", id="cd0")
    env.tray_event(True)
    env.q.execute("blockdev-open-tray", device="cd0", force=True)   # already open: nothing, no event
    # The medium is still attached, but nothing can reach it.
    opened = env.block()
    assert opened["tray_open"] is True and opened["inserted"]["node-name"] == "a"
    eio(h.pread, 4096, 0)
    env.q.execute("blockdev-close-tray", id="cd0")
    env.tray_event(False)
    assert h.pread(4096, 0) == a[:4096]

    env.q.execute("blockdev-open-tray", device="cd0")
    env.tray_event(True)
    env.q.execute("x-blockdev-remove-medium", device="cd0")
    empty = env.block()
    assert "inserted" not in empty and empty["tray_open"] is True
    # Every request fails with EIO while there is no medium; the client stays connected.
    eio(h.pread, 4096, 0)
    eio(h.pwrite, b"\1" * 4096, 0)
    eio(h.flush)
    eio(h.zero, 4096, 0)
    eio(h.trim, 4096, 0)
    assert env.a.read_bytes() == a
    env.q.execute("x-blockdev-remove-medium", id="cd0")   # an empty open tray: nothing happens
    # A new client is refused (NBD_REP_ERR_UNKNOWN: "export not available", which libnbd reports as
    # ENOENT); the reason is in the server's message, which libnbd shows in its debug output.
    require("nbdinfo")
    refused = run(["nbdinfo", env.uri()], ok=False, env={**os.environ, "LIBNBD_DEBUG": "1"})
    assert refused.returncode != 0 and "No such file or directory" in output(refused), output(refused)
    assert "export 'cd0' has no medium (the tray is open or the medium was removed)" in output(refused)
    # The node taken out stays in the graph and can be deleted now.
    env.q.execute("blockdev-del", **{"node-name": "a"})

    env.q.execute("blockdev-add", driver="raw", **{"node-name": "b"}, file={"driver": "file", "filename": str(env.b)})
    env.q.execute("x-blockdev-insert-medium", id="cd0", **{"node-name": "b"})
    inserted = env.block()
    assert inserted["tray_open"] is True and inserted["inserted"]["node-name"] == "b"
    eio(h.pread, 4096, 0)   # the tray is still open
    env.q.execute("blockdev-close-tray", device="cd0")
    env.tray_event(False)
    assert h.pread(4096, 0) == b[:4096]
    assert int(run(["nbdinfo", "--size", env.uri()]).stdout) == 2 * MiB

    # The later names: blockdev-remove-medium / blockdev-insert-medium (only "id").
    env.q.execute("blockdev-open-tray", id="cd0")
    env.q.execute("blockdev-remove-medium", id="cd0")
    eio(h.pread, 4096, 0)
    env.q.execute("blockdev-insert-medium", id="cd0", **{"node-name": "b"})
    env.q.execute("blockdev-close-tray", id="cd0")
    assert h.pread(4096, 4096) == b[4096:8192]
    stats = [s for s in env.q.execute("query-blockstats") if s["device"] == "cd0"][0]["stats"]
    assert stats["failed_rd_operations"] == 4 and stats["failed_wr_operations"] == 2 and stats["failed_flush_operations"] == 1
    h.shutdown()


def test_new_connection_without_medium_is_refused_at_go(env):
    """NBD_OPT_GO / NBD_OPT_INFO answer NBD_REP_ERR_UNKNOWN with a message; the export is still listed."""
    from nbdwire import REP_ACK, REP_ERR_UNKNOWN, Conn
    env.q.execute("blockdev-open-tray", id="cd0")
    with Conn.connect(env.sock) as c:
        c.handshake()
        names = [r.server()[0] for r in c.opt_list() if r.type != REP_ACK]
        assert names == ["cd0"]
        for replies in (c.opt_info("cd0"), c.go("cd0")):
            assert [r.type for r in replies] == [REP_ERR_UNKNOWN], replies
            assert b"has no medium" in replies[0].data
    env.q.execute("blockdev-close-tray", id="cd0")
    with Conn.connect(env.sock) as c:
        c.handshake()
        assert c.go("cd0")[-1].type == REP_ACK


def test_errors(env):
    q = env.q
    q.execute("blockdev-add", options={"driver": "raw", "id": "cd1", "node-name": "a1",
                                       "file": {"driver": "file", "node-name": "f1", "filename": str(env.b)}})
    q.execute("blockdev-add", driver="null-co", **{"node-name": "n0"}, size=1 * MiB)
    q.execute("blockdev-add", driver="null-co", **{"node-name": "n1"}, size=1 * MiB)
    q.execute("block-export-add", type="nbd", id="e1", **{"node-name": "n1"})
    generic = "GenericError"
    cases = [
        ("blockdev-open-tray", {"device": "nope"}, "DeviceNotFound", "Device 'nope' not found"),
        ("blockdev-open-tray", {"id": "nope"}, "DeviceNotFound", "Device 'nope' not found"),
        ("blockdev-open-tray", {}, generic, "Need exactly one of 'device' and 'id'"),
        ("blockdev-close-tray", {"device": "cd0", "id": "cd0"}, generic, "Need exactly one of 'device' and 'id'"),
        ("x-blockdev-remove-medium", {"device": "cd0"}, generic, "Tray of device 'cd0' is not open"),
        ("blockdev-remove-medium", {"id": "cd0"}, generic, "Tray of device 'cd0' is not open"),
        ("blockdev-remove-medium", {"device": "cd0"}, generic, "Parameter 'id' is missing"),
        ("x-blockdev-insert-medium", {"id": "cd0", "node-name": "n0"}, generic, "Tray of device 'cd0' is not open"),
        ("x-blockdev-insert-medium", {"id": "cd0", "node-name": "zz"}, generic, "Node 'zz' not found"),
        ("x-blockdev-insert-medium", {"id": "cd0", "node-name": "a1"}, generic, "Node 'a1' is already in use by 'cd1'"),
        ("x-blockdev-insert-medium", {"id": "cd0", "node-name": "n1"}, generic, "Node 'n1' is already in use by 'e1'"),
        ("x-blockdev-insert-medium", {"id": "cd0", "node-name": "f1"}, generic,
         "Node 'f1' is already in use by node 'a1'"),
        ("x-blockdev-insert-medium", {"id": "nope", "node-name": "n0"}, "DeviceNotFound", "Device 'nope' not found"),
        ("blockdev-change-medium", {"id": "nope", "filename": str(env.b)}, "DeviceNotFound", "Device 'nope' not found"),
        ("blockdev-del", {"node-name": "a"}, generic, "Node a is in use"),
    ]
    for command, arguments, klass, desc in cases:
        error = q.error(command, arguments)
        assert (error["class"], error["desc"]) == (klass, desc), (command, arguments, error)
    # Open, but a medium is in: inserting fails.
    q.execute("blockdev-open-tray", id="cd0")
    env.tray_event(True)
    error = q.error("x-blockdev-insert-medium", id="cd0", **{"node-name": "n0"})
    assert error == {"class": generic, "desc": "There already is a medium in device 'cd0'"}
    q.execute("blockdev-close-tray", id="cd0")
    env.tray_event(False)
    # A file that cannot be opened, or a format blockd has not: nothing changes.
    h = env.connect()
    a = env.a.read_bytes()
    missing = q.error("blockdev-change-medium", id="cd0", filename=str(env.tmp / "missing.img"))
    assert missing["class"] == generic and "missing.img" in missing["desc"], missing
    bad_format = q.error("blockdev-change-medium", id="cd0", filename=str(env.b), format="qcow9")
    assert bad_format["class"] == generic and "qcow9" in bad_format["desc"], bad_format
    assert q.no_event() == [], "a failed change moves no tray"
    assert h.pread(4096, 0) == a[:4096] and env.block()["inserted"]["node-name"] == "a"
    # Without a medium, block_resize of the device has nothing to resize.
    q.execute("blockdev-open-tray", id="cd0")
    q.execute("x-blockdev-remove-medium", id="cd0")
    error = q.error("block_resize", device="cd0", size=4 * MiB)
    assert error == {"class": generic, "desc": "Device 'cd0' has no medium"}
    h.shutdown()


def test_export_of_a_plain_node_has_a_device_of_its_own(launcher, tmp_path):
    """An export of a node that no device holds gets an anonymous device, named by the export's id."""
    image = make_image(tmp_path / "disk.img", 1 * MiB, b"random")
    other = make_image(tmp_path / "other.img", 1 * MiB, b"random")
    sock = tmp_path / "nbd.sock"
    q = monitor(launcher.blockd("--blockdev", f"driver=file,node-name=f0,filename={image}",
                                "--blockdev", "driver=raw,node-name=disk0,file=f0",
                                "--nbd-server", f"addr.type=unix,addr.path={sock}",
                                "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"))
    assert q.execute("query-block") == [], "an export's own device is listed only when asked for"
    info = [d for d in q.execute("query-block", **{"x-blockd-exports": True}) if d["device"] == "e0"][0]
    assert info["removable"] is True and info["tray_open"] is False and info["inserted"]["node-name"] == "disk0"
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///disk0?socket={sock}")
    q.execute("blockdev-change-medium", id="e0", filename=str(other))
    assert [e["data"] for e in (q.event("DEVICE_TRAY_MOVED"), q.event("DEVICE_TRAY_MOVED"))] == [
        {"device": "e0", "id": "e0", "tray-open": True}, {"device": "e0", "id": "e0", "tray-open": False}]
    assert h.pread(4096, 0) == other.read_bytes()[:4096]
    assert q.execute("query-block-exports")[0]["node-name"].startswith("#block"), "blockd named the node it opened"
    # The node that was exported is free again: it can be deleted.
    q.execute("blockdev-del", **{"node-name": "disk0"})
    h.shutdown()
    q.close()


def test_hot_swap_with_qemu_io_and_nbdcopy(env):
    """Other real clients: qemu-io reads image B's pattern after the swap; nbdcopy copies B out whole."""
    require("qemu-io", "nbdcopy")
    from client_helpers import qemu_io
    pattern = make_image(env.tmp / "pattern.img", 1 * MiB)
    with open(pattern, "r+b") as f:
        f.write(b"\x2a" * (64 * KiB))
    env.q.execute("blockdev-change-medium", id="cd0", filename=str(pattern))
    qemu_io(env.uri(), "read -P 42 0 64k", "read -P 0 64k 64k")
    copy = env.tmp / "copy.img"
    run(["nbdcopy", env.uri(), str(copy)])
    assert copy.read_bytes() == pattern.read_bytes()
    assert os.path.getsize(copy) == 1 * MiB
    assert json.loads(json.dumps(env.block()))["inserted"]["file"] == str(pattern)


@pytest.mark.parametrize("aio", ["threads", "native"])
def test_swapping_back_and_forth_under_load(launcher, tmp_path, aio):
    """Two clients read without pause while the medium is changed 30 times: every read
    returns the bytes of one image or the other (never an error: a change is one step), and the nodes
    blockd opened and ejected are closed only after the clients moved on (no crash, no EBADF)."""
    import random
    import threading
    import time
    size = 4 * MiB
    a = make_image(tmp_path / "a.img", size, b"random")
    b = make_image(tmp_path / "b.img", size, b"random")
    images = {str(a): a.read_bytes(), str(b): b.read_bytes()}
    sock = tmp_path / "nbd.sock"
    q = monitor(launcher.blockd("--nbd-server", f"addr.type=unix,addr.path={sock}"))
    q.execute("blockdev-add", options={"driver": "raw", "id": "cd0", "node-name": "a",
                                       "file": {"driver": "file", "filename": str(a), "aio": aio}})
    q.execute("nbd-server-add", device="cd0", writable=True)
    stop = threading.Event()
    problems: list[str] = []
    counts = [0, 0]

    def reader(index: int) -> None:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///cd0?socket={sock}")
        rng = random.Random(index)
        while not stop.is_set():
            offset = rng.randrange(0, size // 4096 - 64) * 4096
            length = rng.choice([4096, 64 * KiB, 256 * KiB])
            try:
                data = h.pread(length, offset)
            except nbd.Error as error:
                problems.append(f"read at {offset}: {error}")
                break
            if all(data != image[offset:offset + length] for image in images.values()):
                problems.append(f"read at {offset}+{length} matches neither image")
                break
            counts[index] += 1
        h.shutdown()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for round_ in range(30):
        target = b if round_ % 2 == 0 else a
        q.execute("blockdev-change-medium", id="cd0", filename=str(target))
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join(20)
    assert not problems, problems
    assert min(counts) >= 30, counts
    assert [d for d in q.execute("query-block") if d["device"] == "cd0"][0]["inserted"]["file"] == str(a)
    q.close()
