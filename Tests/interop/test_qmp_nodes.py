"""Block nodes and devices over QMP (through qemu.qmp): blockdev-add in its QEMU 2.6 form ({"options": {...}}, where
an "id" creates a device) and in the flat form, with children defined inline or named; blockdev-del
and x-blockdev-del with their in-use checks; and what query-named-block-nodes and query-block say
about the nodes, compared with the files themselves. Every answer is also checked against the
types blockd's own query-qmp-schema declares."""
import os

import pytest

from conftest import make_image
from library_monitor import monitor
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

SIZE = 4 * MiB
ZERO_LIMITS = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")


@pytest.fixture
def image(tmp_path):
    path = make_image(tmp_path / "disk.img", SIZE)
    with open(path, "r+b") as f:  # 64 KiB of data so that the allocated size is not 0
        f.write(os.urandom(64 * KiB))
        f.flush()
        os.fsync(f.fileno())
    return path


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def nodes_by_name(q) -> dict:
    answer = q.execute("query-named-block-nodes")
    Schema(q.execute("query-qmp-schema")).check_return("query-named-block-nodes", answer)
    return {node["node-name"]: node for node in answer}


def check_plain_node(node: dict, *, drv: str, filename: str, size: int, ro: bool = False, direct: bool = False) -> None:
    """The members that blockd fills the same way for every node of its drivers."""
    assert node["drv"] == drv
    assert node["file"] == filename
    assert node["ro"] is ro
    assert node["encrypted"] is False
    assert node["backing_file_depth"] == 0
    assert "backing_file" not in node
    assert node["detect_zeroes"] == "off"
    assert node["write_threshold"] == 0
    assert all(node[key] == 0 for key in ZERO_LIMITS), node
    assert node["cache"] == {"writeback": True, "direct": direct, "no-flush": False}
    assert node["image"]["filename"] == filename
    assert node["image"]["virtual-size"] == size


def test_2_6_form_with_an_id_creates_a_device_over_an_inline_child(launcher, image):
    q = monitor(launcher.blockd())
    assert q.execute("blockdev-add", options={
        "driver": "raw", "id": "dev0", "node-name": "r0",
        "file": {"driver": "file", "node-name": "f0", "filename": str(image)}}) == {}
    nodes = nodes_by_name(q)
    assert set(nodes) == {"r0", "f0"}
    check_plain_node(nodes["r0"], drv="raw", filename=str(image), size=SIZE)
    check_plain_node(nodes["f0"], drv="file", filename=str(image), size=SIZE)
    assert nodes["r0"]["image"]["format"] == "raw"
    assert nodes["f0"]["image"]["format"] == "file"
    # The host allocation of the file, as st_blocks tells it (the raw node reports its file's).
    assert nodes["f0"]["image"]["actual-size"] == allocated(image) >= 64 * KiB
    assert nodes["r0"]["image"]["actual-size"] == allocated(image)

    devices = q.execute("query-block")
    Schema(q.execute("query-qmp-schema")).check_return("query-block", devices)
    assert len(devices) == 1
    device = devices[0]
    assert device["device"] == "dev0"
    assert device["type"] == "unknown"
    # Removable, as QEMU says of a device no guest device holds; blockd's devices have a tray (the
    # exports stand for the guest device), closed, and nothing locks it.
    assert device["removable"] is True and device["locked"] is False and device["tray_open"] is False
    assert device["inserted"]["node-name"] == "r0"
    check_plain_node(device["inserted"], drv="raw", filename=str(image), size=SIZE)

    # The device's statistics start at zero and carry the device and node names.
    stats = q.execute("query-blockstats")
    assert [(s["device"], s.get("node-name")) for s in stats] == [("dev0", "r0")]
    assert stats[0]["stats"]["rd_operations"] == stats[0]["stats"]["wr_operations"] == 0
    q.close()


def test_flat_form_with_references_inline_children_and_options(launcher, image, tmp_path):
    other = make_image(tmp_path / "direct.img", 1 * MiB)
    q = monitor(launcher.blockd())
    q.execute("blockdev-add", {"driver": "file", "node-name": "f1", "filename": str(image), "read-only": True})
    q.execute("blockdev-add", {"driver": "raw", "node-name": "r1", "file": "f1", "read-only": True})
    q.execute("blockdev-add", {"driver": "raw", "node-name": "r2", "file": {"driver": "null-co", "size": 65536}})
    q.execute("blockdev-add", {"driver": "file", "node-name": "fd", "filename": str(other), "cache": {"direct": True}})
    q.execute("blockdev-add", {"driver": "null-aio", "node-name": "na", "size": 3 * MiB})
    nodes = nodes_by_name(q)
    # The inline child of r2 has no name: it is listed under a generated one, as QEMU does.
    generated = [name for name in nodes if name.startswith("#block")]
    assert set(nodes) - set(generated) == {"f1", "r1", "r2", "fd", "na"} and len(generated) == 1
    check_plain_node(nodes["f1"], drv="file", filename=str(image), size=SIZE, ro=True)
    check_plain_node(nodes["r1"], drv="raw", filename=str(image), size=SIZE, ro=True)
    # A node built from options only is named by QEMU's json: pseudo-filename of those options.
    pseudo = 'json:{"driver": "raw", "file": {"driver": "null-co", "size": 65536}}'
    check_plain_node(nodes["r2"], drv="raw", filename=pseudo, size=65536)
    check_plain_node(nodes[generated[0]], drv="null-co", filename='json:{"driver": "null-co", "size": 65536}', size=65536)
    check_plain_node(nodes["fd"], drv="file", filename=str(other), size=1 * MiB, direct=True)
    check_plain_node(nodes["na"], drv="null-aio", filename='json:{"driver": "null-aio", "size": 3145728}', size=3 * MiB)
    assert nodes["fd"]["image"]["actual-size"] == allocated(other)
    # Nodes without an id are not devices.
    assert q.execute("query-block") == []
    assert q.execute("query-blockstats") == []
    # Deleting in the wrong order is refused; in the right order it works.
    assert q.error("blockdev-del", {"node-name": "f1"}) == {"class": "GenericError", "desc": "Block device f1 is in use"}
    assert q.error("blockdev-del", {"node-name": generated[0]}) == {
        "class": "GenericError", "desc": f"Node {generated[0]} is not owned by the monitor"}
    for name in ("r1", "f1", "r2", "fd", "na"):
        assert q.execute("blockdev-del", {"node-name": name}) == {}
    assert q.execute("query-named-block-nodes") == []
    q.close()


@pytest.mark.parametrize("form", ["flat", "2.6"])
def test_a_root_node_without_node_name_or_id_is_refused(launcher, image, form):
    """QEMU: "'node-name' must be specified for the root node"; blockd's reference says the same
    ("without "id", "node-name" is required")."""
    q = monitor(launcher.blockd())
    options = {"driver": "file", "filename": str(image)}
    error = q.error("blockdev-add", options if form == "flat" else {"options": options})
    assert error["class"] == "GenericError" and "node-name" in error["desc"], error
    assert q.execute("query-named-block-nodes") == []
    q.close()


def test_failed_blockdev_add_leaves_nothing_behind(launcher, image, tmp_path):
    q = monitor(launcher.blockd())
    missing = tmp_path / "missing.img"
    error = q.error("blockdev-add", {"driver": "raw", "node-name": "r9",
                                     "file": {"driver": "file", "node-name": "f9", "filename": str(missing)}})
    assert error["class"] == "GenericError" and str(missing) in error["desc"], error
    error = q.error("blockdev-add", {"driver": "raw", "node-name": "r9", "offset": 2 * SIZE,
                                     "file": {"driver": "file", "node-name": "f9", "filename": str(image)}})
    assert error["class"] == "GenericError", error
    error = q.error("blockdev-add", {"driver": "raw", "node-name": "r9", "file": "nosuch"})
    assert error["class"] == "GenericError" and "nosuch" in error["desc"], error
    # The inline child opened before the parent failed is closed again.
    assert q.execute("query-named-block-nodes") == []
    q.execute("blockdev-add", {"driver": "raw", "node-name": "r9",
                               "file": {"driver": "file", "node-name": "f9", "filename": str(image)}})
    assert set(nodes_by_name(q)) == {"r9", "f9"}
    # Names are unique, across node names and device ids.
    error = q.error("blockdev-add", {"driver": "null-co", "node-name": "f9"})
    assert error["class"] == "GenericError" and "f9" in error["desc"], error
    q.execute("blockdev-add", options={"driver": "null-co", "id": "dev1", "node-name": "n1"})
    error = q.error("blockdev-add", options={"driver": "null-co", "id": "dev1", "node-name": "n2"})
    assert error["class"] == "GenericError" and "dev1" in error["desc"], error
    assert set(nodes_by_name(q)) == {"r9", "f9", "n1"}
    q.close()


def test_exported_and_used_nodes_cannot_be_deleted(launcher, image, tmp_path):
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=f0",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,writable=on")
    q = monitor(daemon)
    # QEMU 7.2's answers (test_qsd_differential.py compares them with qemu-storage-daemon's).
    assert q.error("blockdev-del", {"node-name": "disk0"}) == {"class": "GenericError", "desc": "Node disk0 is in use"}
    assert q.error("blockdev-del", {"node-name": "f0"}) == {"class": "GenericError", "desc": "Block device f0 is in use"}
    assert q.error("x-blockdev-del", {"node-name": "disk0"}) == {"class": "GenericError", "desc": "Node disk0 is in use"}
    # An export's own device is not listed, as in qemu-storage-daemon, unless asked for (a blockd extension).
    assert q.execute("query-block") == []
    devices = q.execute("query-block", **{"x-blockd-exports": True})
    assert [(d["device"], d["inserted"]["node-name"]) for d in devices] == [("e0", "disk0")]
    assert set(nodes_by_name(q)) == {"disk0", "f0"}

    q.execute("block-export-del", id="e0")
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "e0"}
    assert q.execute("blockdev-del", {"node-name": "disk0"}) == {}
    assert q.execute("blockdev-del", {"node-name": "f0"}) == {}
    assert q.execute("query-named-block-nodes") == []
    assert q.execute("query-block") == []
    q.close()


def test_x_blockdev_del_of_a_2_6_device(launcher, image, tmp_path):
    q = monitor(launcher.blockd())
    q.execute("blockdev-add", options={"driver": "raw", "id": "dev0", "node-name": "r0",
                                       "file": {"driver": "file", "node-name": "f0", "filename": str(image)}})
    q.execute("nbd-server-start", addr={"type": "unix", "data": {"path": str(tmp_path / "nbd.sock")}})
    q.execute("nbd-server-add", device="dev0", writable=True)
    error = q.error("x-blockdev-del", id="dev0")
    assert error["class"] == "DeviceInUse" and "dev0" in error["desc"], error
    assert error["desc"].count("in use") == 1 and "''" not in error["desc"], error
    # The device's node cannot be deleted behind the device's back.
    assert q.error("blockdev-del", {"node-name": "r0"}) == {"class": "GenericError", "desc": "Node r0 is in use"}
    error = q.error("x-blockdev-del", {"node-name": "r0"})
    assert error["class"] == "GenericError" and "dev0" in error["desc"], error
    assert q.error("x-blockdev-del", {"id": "dev0", "node-name": "r0"})["class"] == "GenericError"
    assert q.error("x-blockdev-del", {})["class"] == "GenericError"

    q.execute("nbd-server-remove", name="dev0")
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "dev0"}
    assert q.execute("x-blockdev-del", id="dev0") == {}
    assert q.execute("query-block") == []
    # The node and its inline child went with the device.
    assert q.execute("query-named-block-nodes") == []
    assert q.error("x-blockdev-del", id="dev0")["class"] == "DeviceNotFound"
    q.execute("nbd-server-stop")
    q.close()
