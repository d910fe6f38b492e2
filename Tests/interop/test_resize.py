"""block_resize on a live export (of a node or of a 2.6 device): the file changes size, a reconnecting
client sees the new size, a client that stays connected keeps working inside the old range. And the
NBD protocol's experimental RESIZE extension (x-resize=on): a client changes the size itself with
NBD_CMD_RESIZE, checked byte by byte with the project's raw client (no real client implements it).

The extension is client-initiated: NBD has no way to tell a connected client that the server changed
the size, so block_resize is seen by clients that (re)connect afterwards."""
import json
import subprocess
import time

import nbd
import pytest

from conftest import make_image, require
from qmp_client import launcher  # noqa: F401
from test_blockctl import blockctl_binary


@pytest.fixture
def resizable(start_blockd, tmp_path):
    require("nbdinfo")
    image = make_image(tmp_path / "disk.img", 8 << 20, b"random")
    qmp = tmp_path / "qmp.sock"
    daemon = start_blockd(image, extra=["--chardev", f"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0"])
    deadline = time.monotonic() + 5
    while not qmp.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return daemon, image, qmp


def ctl(qmp, *words):
    return subprocess.run([blockctl_binary(), "--socket", str(qmp), *words], capture_output=True, text=True, timeout=20)


def size_of(uri):
    return int(subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, check=True).stdout)


def test_grow_is_seen_by_a_reconnecting_client(resizable):
    daemon, image, qmp = resizable
    before = image.read_bytes()
    connected = nbd.NBD()
    connected.connect_uri(daemon.uri())
    assert connected.get_size() == 8 << 20
    assert ctl(qmp, "block_resize", "node-name=disk0", "size=16777216").returncode == 0
    assert image.stat().st_size == 16 << 20
    assert size_of(daemon.uri()) == 16 << 20
    # The connected client keeps working within the range it knows; data is intact.
    assert connected.pread(4096, 0) == before[:4096]
    connected.shutdown()
    fresh = nbd.NBD()
    fresh.connect_uri(daemon.uri())
    fresh.pwrite(b"\x77" * 4096, (16 << 20) - 4096)
    assert fresh.pread(4096, (12 << 20)) == b"\0" * 4096, "grown space reads as zeroes"
    fresh.flush()
    fresh.shutdown()
    assert image.read_bytes()[-4096:] == b"\x77" * 4096
    stats = json.loads(ctl(qmp, "query-named-block-nodes").stdout)
    assert {n["node-name"]: n["image"]["virtual-size"] for n in stats}["disk0"] == 16 << 20


def test_shrink_and_errors(resizable):
    daemon, image, qmp = resizable
    assert ctl(qmp, "block_resize", "device=e0", "size=4194304").returncode == 0
    assert size_of(daemon.uri()) == 4 << 20 and image.stat().st_size == 4 << 20
    client = nbd.NBD()
    client.set_strict_mode(0)
    client.connect_uri(daemon.uri())
    with pytest.raises(nbd.Error) as error:
        client.pread(4096, 6 << 20)
    assert error.value.errno == "EINVAL"
    client.shutdown()
    missing = ctl(qmp, "block_resize", "node-name=nope", "size=4096")
    assert missing.returncode == 1 and "GenericError: Cannot find device='' nor node-name='nope'" in missing.stderr
    neither = ctl(qmp, "block_resize", "size=4096")
    assert neither.returncode == 1 and "Cannot find device='' nor node-name=''" in neither.stderr


def test_block_resize_of_a_device_is_seen_by_a_reconnecting_client(launcher, tmp_path):
    """block_resize names a 2.6-form device: its medium grows, nbdinfo and libnbd see it on reconnecting,
    and a client that stayed connected keeps the size it was told (NBD cannot tell it of the change)."""
    from qmp_client import MiB
    require("nbdinfo")
    image = make_image(tmp_path / "disk.img", 4 * MiB, b"random")
    sock = tmp_path / "nbd.sock"
    q = launcher.blockd("--nbd-server", f"addr.type=unix,addr.path={sock}").qmp()
    q.execute("blockdev-add", options={"driver": "raw", "id": "dev0", "node-name": "r0",
                                       "file": {"driver": "file", "filename": str(image)}})
    q.execute("nbd-server-add", device="dev0", writable=True)
    uri = f"nbd+unix:///dev0?socket={sock}"
    connected = nbd.NBD()
    connected.connect_uri(uri)
    q.execute("block_resize", device="dev0", size=12 * MiB)
    assert image.stat().st_size == 12 * MiB
    assert size_of(uri) == 12 * MiB
    assert connected.get_size() == 4 * MiB
    fresh = nbd.NBD()
    fresh.connect_uri(uri)
    assert fresh.get_size() == 12 * MiB and fresh.pread(4096, 8 * MiB) == b"\0" * 4096
    fresh.shutdown()
    connected.shutdown()
    info = [d for d in q.execute("query-block") if d["device"] == "dev0"][0]
    assert info["inserted"]["image"]["virtual-size"] == 12 * MiB


@pytest.fixture
def resize_export(start_blockd, tmp_path):
    """A writable export with the experimental NBD_CMD_RESIZE enabled (x-resize=on), a read-only one
    with it asked for, and a QMP monitor."""
    image = make_image(tmp_path / "disk.img", 8 << 20, b"random")
    qmp = tmp_path / "qmp.sock"
    daemon = start_blockd(args=[
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=f0",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on,x-resize=on",
        "--export", "type=nbd,id=e1,node-name=disk0,name=ro,x-resize=on",
        "--chardev", f"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0"])
    return daemon, image, qmp


@pytest.mark.parametrize("style", ["simple", "structured", "extended"])
def test_nbd_cmd_resize_changes_the_size(resize_export, style):
    """NBD_CMD_RESIZE (8), advertised by NBD_FLAG_SEND_RESIZE (bit 9): the new size is the request's
    offset, its length must be 0; the client that asked may use the new range at once, and a
    reconnecting client (nbdinfo) sees the new size."""
    from nbdwire import CMD_RESIZE, NBD_EINVAL, TF_SEND_RESIZE, connect_go
    daemon, image, qmp = resize_export
    before = image.read_bytes()
    c = connect_go(daemon.sock, "disk0", style=style)
    assert c.tflags & TF_SEND_RESIZE and c.size == 8 << 20
    assert c.request(CMD_RESIZE, 16 << 20, 0).error == 0
    assert image.stat().st_size == 16 << 20
    assert c.write((16 << 20) - 4096, b"\x33" * 4096).error == 0
    assert c.read((12 << 20), 4096).data == b"\0" * 4096
    assert c.request(CMD_RESIZE, 4 << 20, 4096).error == NBD_EINVAL, "the length must be 0"
    assert c.request(CMD_RESIZE, 6 << 20, 0).error == 0   # shrinking
    assert c.read(6 << 20, 4096).error == NBD_EINVAL, "past the new end"
    assert c.read(0, 4096).data == before[:4096]
    c.disconnect()
    assert image.stat().st_size == 6 << 20 and image.read_bytes() == before[:6 << 20]
    require("nbdinfo")
    assert size_of(daemon.uri()) == 6 << 20
    nodes = json.loads(ctl(qmp, "query-named-block-nodes").stdout)
    assert {n["node-name"]: n["image"]["virtual-size"] for n in nodes}["disk0"] == 6 << 20
    # Not on a read-only export, even with x-resize asked for: no flag, so the command is refused.
    ro = connect_go(daemon.sock, "ro", style=style)
    assert not ro.tflags & TF_SEND_RESIZE
    assert ro.request(CMD_RESIZE, 8 << 20, 0).error == NBD_EINVAL, "never negotiated"
    ro.disconnect()
    assert size_of(daemon.uri()) == 6 << 20


def test_x_resize_over_block_export_add(resizable):
    """block-export-add takes "x-resize"; without it NBD_CMD_RESIZE is refused as never negotiated."""
    from nbdwire import CMD_RESIZE, NBD_EINVAL, TF_SEND_RESIZE, connect_go
    from qmp_client import QMP
    daemon, image, qmp = resizable
    with QMP(qmp) as q:
        q.execute("block-export-add", type="nbd", id="e9", **{"node-name": "disk0"}, name="grow", writable=True,
                  **{"x-resize": True})
        error = q.error("block-export-add", type="nbd", id="e8", **{"node-name": "disk0"}, **{"x-resize": "yes"})
        assert error == {"class": "GenericError", "desc": "Invalid parameter type for 'x-resize', expected: boolean"}
    plain = connect_go(daemon.sock, "disk0")
    assert not plain.tflags & TF_SEND_RESIZE
    assert plain.request(CMD_RESIZE, 16 << 20, 0).error == NBD_EINVAL
    plain.disconnect()
    grow = connect_go(daemon.sock, "grow")
    assert grow.tflags & TF_SEND_RESIZE
    assert grow.request(CMD_RESIZE, 10 << 20, 0).error == 0
    grow.disconnect()
    assert image.stat().st_size == 10 << 20 and size_of(daemon.uri()) == 10 << 20
