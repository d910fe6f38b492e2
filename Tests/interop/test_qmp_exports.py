"""NBD exports managed live over QMP (through qemu.qmp) and used by real clients (nbdinfo, libnbd):
nbd-server-start in both address forms, nbd-server-add/remove (safe refused while a client is connected, hard
disconnecting it), block-export-add/del, query-block-exports, the BLOCK_EXPORT_DELETED event and
nbd-server-stop. Data written through an export is checked in the image file."""
import json
import os
import socket
import time

import pytest

from client_helpers import run
from conftest import free_port, make_image, require, import_or_skip
from library_monitor import monitor
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 2 * MiB


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", SIZE)


@pytest.fixture
def daemon(launcher, image):
    """blockd with a raw node disk0 over the image, a monitor, and no NBD server yet."""
    return launcher.blockd("--blockdev", f"driver=file,node-name=f0,filename={image}",
                           "--blockdev", "driver=raw,node-name=disk0,file=f0")


def unix_uri(sock, name: str) -> str:
    return f"nbd+unix:///{name}?socket={sock}"


def nbdinfo(uri: str) -> dict:
    require("nbdinfo")
    info = json.loads(run(["nbdinfo", "--json", uri]).stdout)
    assert len(info["exports"]) == 1
    return info["exports"][0]


def listed(sock) -> dict:
    require("nbdinfo")
    info = json.loads(run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sock}"]).stdout)
    return {e["export-name"]: e for e in info["exports"]}


def connect(uri: str):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def file_bytes(path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def assert_disconnected(h) -> None:
    """The server dropped the connection: the next request fails without a reply."""
    with pytest.raises(nbd.Error) as failure:
        for _ in range(3):
            h.pread(512, 0)
            time.sleep(0.1)
    assert failure.value.errno in ("ENOTCONN", "EPIPE", "ECONNRESET", "ESHUTDOWN", None), failure.value


def exports(q) -> list[dict]:
    answer = q.execute("query-block-exports")
    Schema(q.execute("query-qmp-schema")).check_return("query-block-exports", answer)
    return answer


def test_nbd_server_add_serves_real_clients(daemon, image, tmp_path):
    sock = tmp_path / "nbd.sock"
    q = monitor(daemon)
    assert q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}}) == {}
    assert q.execute("nbd-server-add", device="disk0", name="exp", description="live disk", writable=True) == {}
    # nbd-server-add names the export's id after its name, as QEMU does.
    assert exports(q) == [{"id": "exp", "type": "nbd", "node-name": "disk0", "shutting-down": False}]
    info = nbdinfo(unix_uri(sock, "exp"))
    assert info["export-size"] == SIZE
    assert info["is_read_only"] is False
    assert info["description"] == "live disk"

    h = connect(unix_uri(sock, "exp"))
    data = os.urandom(96 * KiB)
    h.pwrite(data, 1 * MiB + 512)
    h.flush()
    assert h.pread(len(data), 1 * MiB + 512) == data
    assert file_bytes(image, 1 * MiB + 512, len(data)) == data
    h.shutdown()

    # Without "writable" the export is read-only, and its name defaults to the device.
    assert q.execute("nbd-server-add", device="f0") == {}
    assert set(listed(sock)) == {"exp", "f0"}
    ro = connect(unix_uri(sock, "f0"))
    assert ro.is_read_only()
    assert ro.pread(len(data), 1 * MiB + 512) == data
    with pytest.raises(nbd.Error) as failure:
        ro.pwrite(b"x" * 512, 0)
    assert failure.value.errno == "EPERM"
    ro.shutdown()
    # Names are unique; a missing device is QEMU 7.2's GenericError.
    error = q.error("nbd-server-add", device="disk0", name="exp")
    assert error["class"] == "GenericError" and "exp" in error["desc"], error
    assert q.error("nbd-server-add", device="nosuch") == {
        "class": "GenericError", "desc": "Cannot find device='nosuch' nor node-name='nosuch'"}
    q.close()


@pytest.mark.parametrize("form", ["flat unix", "2.6 inet", "flat inet"])
def test_nbd_server_start_address_forms(daemon, tmp_path, form):
    port = free_port()
    addr = {
        "flat unix": {"type": "unix", "path": str(tmp_path / "flat.sock")},
        "2.6 inet": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
        "flat inet": {"type": "inet", "host": "127.0.0.1", "port": str(port)},
    }[form]
    q = monitor(daemon)
    assert q.execute("nbd-server-start", addr=addr) == {}
    error = q.error("nbd-server-start", addr=addr)
    assert error == {"class": "GenericError", "desc": "NBD server already running"}
    q.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0"})
    uri = unix_uri(tmp_path / "flat.sock", "disk0") if "unix" in form else f"nbd://127.0.0.1:{port}/disk0"
    assert nbdinfo(uri)["export-size"] == SIZE
    assert q.execute("nbd-server-stop") == {}
    q.close()


def nbd_greeting(sock, timeout: float = 1.0) -> bytes:
    """What a new client gets within `timeout`: the newstyle greeting when it is served, less when
    it is refused (closed at once, as blockd does) or kept waiting (as QEMU does)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        data = b""
        try:
            while len(data) < 18:
                chunk = s.recv(18 - len(data))
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return data


def test_max_connections(daemon, tmp_path):
    sock = tmp_path / "nbd.sock"
    q = monitor(daemon)
    q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}}, **{"max-connections": 1})
    q.execute("nbd-server-add", device="disk0")
    first = connect(unix_uri(sock, "disk0"))
    # A second client is not served while the first is connected.
    assert not nbd_greeting(sock).startswith(b"NBDMAGIC"), "max-connections=1 let a second client in"
    assert first.pread(512, 0) == bytes(512)
    first.shutdown()
    q.close()


def test_nbd_server_remove_safe_and_hard(daemon, tmp_path):
    sock = tmp_path / "nbd.sock"
    q = monitor(daemon)
    q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
    q.execute("nbd-server-add", device="disk0", name="busy", writable=True)
    h = connect(unix_uri(sock, "busy"))
    h.pwrite(b"a" * 4096, 0)
    for arguments in ({"name": "busy"}, {"name": "busy", "mode": "safe"}):
        error = q.error("nbd-server-remove", arguments)
        assert error["class"] == "GenericError" and "busy" in error["desc"], error
    # Refused: the export and its client go on as before, and no event was sent.
    assert [e["id"] for e in exports(q)] == ["busy"]
    assert h.pread(4096, 0) == b"a" * 4096
    assert q.no_event(0.2) == []

    assert q.execute("nbd-server-remove", name="busy", mode="hard") == {}
    event = q.event("BLOCK_EXPORT_DELETED")
    assert event["data"] == {"id": "busy"}
    assert exports(q) == []
    assert_disconnected(h)
    assert listed(sock) == {}
    error = q.error("nbd-server-remove", name="busy")
    assert error["class"] == "GenericError" and "busy" in error["desc"], error

    # Once its client has left, safe removal works.
    q.execute("nbd-server-add", device="disk0", name="idle")
    client = connect(unix_uri(sock, "idle"))
    client.shutdown()
    deadline = time.monotonic() + 5
    while "error" in (reply := q.cmd("nbd-server-remove", name="idle")):
        assert time.monotonic() < deadline, f"safe removal still refused after the client left: {reply}"
        time.sleep(0.05)
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "idle"}
    q.close()


def test_block_export_add_del(daemon, tmp_path, image):
    sock = tmp_path / "nbd.sock"
    q = monitor(daemon)
    # Like nbd-server-add, block-export-add needs a running server (QEMU: "NBD server not running").
    error = q.error("block-export-add", type="nbd", id="early", **{"node-name": "disk0"})
    assert error == {"class": "GenericError", "desc": "NBD server not running"}
    assert exports(q) == []
    q.execute("nbd-server-start", addr={"type": "unix", "path": str(sock)})
    assert q.execute("block-export-add", {"type": "nbd", "id": "e1", "node-name": "disk0", "name": "one",
                                          "description": "first", "writable": True}) == {}
    # Without a name the export is named after its node, as in QEMU.
    assert q.execute("block-export-add", {"type": "nbd", "id": "e2", "node-name": "f0"}) == {}
    assert sorted(exports(q), key=lambda e: e["id"]) == [
        {"id": "e1", "type": "nbd", "node-name": "disk0", "shutting-down": False},
        {"id": "e2", "type": "nbd", "node-name": "f0", "shutting-down": False},
    ]
    names = listed(sock)
    assert set(names) == {"one", "f0"}
    assert names["one"]["description"] == "first" and names["one"]["is_read_only"] is False
    assert names["f0"]["is_read_only"] is True

    error = q.error("block-export-add", {"type": "nbd", "id": "e1", "node-name": "f0", "name": "other"})
    assert error == {"class": "GenericError", "desc": "Block export id 'e1' is already in use"}
    error = q.error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "f0", "name": "one"})
    assert error["class"] == "GenericError" and "one" in error["desc"], error
    error = q.error("block-export-add", {"type": "nbd", "id": "e3", "node-name": "nosuch"})
    assert error["class"] in ("GenericError", "DeviceNotFound") and "nosuch" in error["desc"], error
    error = q.error("block-export-del", id="nosuch")
    assert error == {"class": "GenericError", "desc": "Export 'nosuch' is not found"}

    # A client on e1: safe deletion is refused, hard deletion disconnects it.
    h = connect(unix_uri(sock, "one"))
    h.pwrite(b"z" * 8192, 8192)
    h.flush()
    error = q.error("block-export-del", id="e1")
    assert error["class"] == "GenericError" and "e1" in error["desc"], error
    assert q.execute("block-export-del", id="e1", mode="hard") == {}
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "e1"}
    assert_disconnected(h)
    assert file_bytes(image, 8192, 8192) == b"z" * 8192
    # No client on e2: the default (safe) deletion works at once.
    assert q.execute("block-export-del", id="e2") == {}
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "e2"}
    assert exports(q) == []
    assert listed(sock) == {}
    q.close()


def test_nbd_server_stop_removes_every_export(daemon, tmp_path):
    sock = tmp_path / "nbd.sock"
    q = monitor(daemon)
    watcher = monitor(daemon)
    q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
    q.execute("nbd-server-add", device="disk0", name="a")
    q.execute("block-export-add", type="nbd", id="b", **{"node-name": "f0"})
    h = connect(unix_uri(sock, "a"))
    assert q.execute("nbd-server-stop") == {}
    for each in (q, watcher):
        deleted = {each.event("BLOCK_EXPORT_DELETED")["data"]["id"] for _ in range(2)}
        assert deleted == {"a", "b"}
    assert exports(q) == []
    assert_disconnected(h)
    with pytest.raises(nbd.Error):
        connect(unix_uri(sock, "a"))
    assert q.error("nbd-server-stop") == {"class": "GenericError", "desc": "NBD server not running"}
    assert q.error("nbd-server-add", device="disk0") == {"class": "GenericError", "desc": "NBD server not running"}
    # The server can be started again on the same path.
    q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(sock)}})
    q.execute("nbd-server-add", device="disk0", name="again")
    assert nbdinfo(unix_uri(sock, "again"))["export-size"] == SIZE
    q.execute("nbd-server-stop")
    q.close()
    watcher.close()
