"""blockd against qemu-storage-daemon: the same QMP session, for the commands both have, must give
answers of the same shape (member names and JSON types, recursively; values are ignored).

qemu-storage-daemon is a later QEMU (7.2 on Debian 12) than the 2.6 contract, so some differences
are expected. Each difference is judged against blockd's own schema (its query-qmp-schema, which
is the 2.6 contract plus blockd's documented additions):
  - a member only blockd sends must be declared by that schema (encryption_key_missing, say:
    required in 2.6, dropped by later QEMU);
  - a member only qemu-storage-daemon sends must be either optional in the schema (blockd may
    leave it out) or a post-2.6 addition listed in POST_2_6 below;
  - every blockd answer must conform to the schema (all required members present, no others).
Known intentional differences outside the shapes are noted where the session meets them."""
import json

import pytest

from client_helpers import qemu_io
from conftest import make_image, require
from qmp_client import (ARGUMENT_ERRORS, MiB, Launcher, Schema, argument_case_id, schema_member,
                        shape, shape_differences, with_image)

# Members QEMU added after 2.6, which the 2.6 contract does not have.
POST_2_6 = {
    # BlockDeviceStats: the unmap_* accounting; BlockStats: driver-specific. Both came after 2.6.
    "query-blockstats": {
        "return[].stats.unmap_operations", "return[].stats.unmap_bytes", "return[].stats.unmap_merged",
        "return[].stats.unmap_total_time_ns", "return[].stats.failed_unmap_operations",
        "return[].stats.invalid_unmap_operations", "return[].driver-specific",
        "return[].parent.stats.unmap_operations", "return[].parent.stats.unmap_bytes",
        "return[].parent.stats.unmap_merged", "return[].parent.stats.unmap_total_time_ns",
        "return[].parent.stats.failed_unmap_operations", "return[].parent.stats.invalid_unmap_operations",
        "return[].parent.driver-specific",
    },
}


# Optional members that QEMU 2.6 itself sends in the situation of this session, so blockd must too:
# bdrv_query_stats() (block/qapi.c) fills "parent" for every node that has a "file" child.
SENT_BY_2_6 = {
    "query-blockstats": {"return[].parent"},
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(blockd, qemu-storage-daemon), each exporting its own image as e0 over a raw node disk0 on a
    file node f0, with a second image for blockdev-add."""
    daemons = {}
    launchers = []
    for kind in ("blockd", "qsd"):
        work = tmp_path_factory.mktemp(f"diff-{kind}")
        launch = Launcher(work)
        launchers.append(launch)
        image = make_image(work / "disk.img", 4 * MiB)
        make_image(work / "second.img", 1 * MiB)
        args = ["--blockdev", f"driver=file,node-name=f0,filename={image}",
                "--blockdev", "driver=raw,node-name=disk0,file=f0",
                "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}",
                "--export", "type=nbd,id=e0,node-name=disk0,writable=on"]
        daemons[kind] = getattr(launch, kind)(*args)
    yield daemons["blockd"], daemons["qsd"]
    for launch in launchers:
        launch.stop_all()


def session(daemon) -> list[tuple[str, dict]]:
    """The common session: (label, reply or event) in order."""
    work = daemon.workdir
    q = daemon.qmp()
    out = []

    def step(label, name, arguments=None):
        out.append((label, q.cmd(name, arguments)))

    step("query-version", "query-version")
    step("query-commands", "query-commands")
    step("query-named-block-nodes", "query-named-block-nodes")
    step("query-block-exports", "query-block-exports")
    step("blockdev-add null", "blockdev-add", {"driver": "null-co", "node-name": "n1", "size": MiB})
    step("blockdev-add raw+file", "blockdev-add", {"driver": "raw", "node-name": "r1", "file": {
        "driver": "file", "node-name": "f1", "filename": str(work / "second.img")}})
    step("query-named-block-nodes", "query-named-block-nodes")
    step("nbd-server-add", "nbd-server-add", {"device": "n1", "name": "x1"})
    step("query-block-exports", "query-block-exports")
    step("nbd-server-remove", "nbd-server-remove", {"name": "x1"})
    out.append(("BLOCK_EXPORT_DELETED", q.event("BLOCK_EXPORT_DELETED")))
    step("block-export-add", "block-export-add", {"type": "nbd", "id": "e1", "node-name": "r1", "writable": True})
    step("query-block-exports", "query-block-exports")
    step("block-export-del", "block-export-del", {"id": "e1"})
    out.append(("BLOCK_EXPORT_DELETED", q.event("BLOCK_EXPORT_DELETED")))
    # Error replies: only their shape is compared. The classes differ on purpose: blockd answers
    # DeviceNotFound and DeviceInUse as QEMU 2.6 did for devices; QEMU 7.2 says GenericError.
    step("blockdev-del in use", "blockdev-del", {"node-name": "f0"})
    step("blockdev-del missing", "blockdev-del", {"node-name": "nosuch"})
    step("blockdev-del r1", "blockdev-del", {"node-name": "r1"})
    step("blockdev-del n1", "blockdev-del", {"node-name": "n1"})
    step("query-named-block-nodes", "query-named-block-nodes")
    require("qemu-io")
    qemu_io(f"nbd+unix:///disk0?socket={work / 'nbd.sock'}", "write 0 64k", "read 0 4k")
    step("query-blockstats", "query-blockstats", {"query-nodes": True})
    q.close()
    return out


@pytest.fixture(scope="module")
def sessions(pair):
    blockd, qsd = pair
    ours, theirs = session(blockd), session(qsd)
    assert [label for label, _ in ours] == [label for label, _ in theirs]
    with blockd.qmp() as q:
        schema = Schema(q.execute("query-qmp-schema"))
    return ours, theirs, schema


STEPS = ["query-version", "query-commands", "query-named-block-nodes", "query-block-exports", "blockdev-add null",
         "blockdev-add raw+file", "nbd-server-add", "nbd-server-remove", "BLOCK_EXPORT_DELETED", "block-export-add",
         "block-export-del", "blockdev-del in use", "blockdev-del missing", "blockdev-del r1", "blockdev-del n1",
         "query-blockstats"]


@pytest.mark.parametrize("label", STEPS)
def test_same_shapes(sessions, label):
    ours, theirs, schema = sessions
    pairs = [(a, b) for (la, a), (lb, b) in zip(ours, theirs) if la == label]
    assert pairs
    command = label.split()[0]
    for our_reply, their_reply in pairs:
        assert ("error" in our_reply) == ("error" in their_reply), (our_reply, their_reply)
        only_ours, only_theirs, mismatched = shape_differences(shape(our_reply), shape(their_reply))
        if label == "BLOCK_EXPORT_DELETED":
            assert (only_ours, only_theirs, mismatched) == ([], [], []), (our_reply, their_reply)
            continue
        assert mismatched == [], mismatched
        if "error" in our_reply:
            assert only_ours == only_theirs == [], (our_reply, their_reply)
            continue
        ret_type = schema.command(command)["ret-type"]
        schema.check_return(command, our_reply["return"])
        for path in only_ours:
            assert schema_member(schema, ret_type, path) is not None, f"{label}: blockd sends {path}, not in its schema"
        for path in only_theirs:
            member = schema_member(schema, ret_type, path)
            if member is None:
                assert path in POST_2_6.get(command, set()), (
                    f"{label}: qemu-storage-daemon sends {path}, which blockd's schema does not have\n"
                    f"blockd: {json.dumps(our_reply)}\nqsd: {json.dumps(their_reply)}")
            else:
                assert "default" in member, f"{label}: required member {path} missing from blockd's answer"
                assert path not in SENT_BY_2_6.get(command, set()), (
                    f"{label}: blockd leaves out {path}, which QEMU 2.6 sends here too\n"
                    f"blockd: {json.dumps(our_reply)}\nqsd: {json.dumps(their_reply)}")


def test_judged_differences(sessions):
    """The members one side has and the other not, as judged today; a change here is news."""
    ours, theirs, schema = sessions
    found = set()
    for (label, a), (_, b) in zip(ours, theirs):
        only_ours, only_theirs, _ = shape_differences(shape(a), shape(b))
        found |= {(label, "blockd", p) for p in only_ours} | {(label, "qsd", p) for p in only_theirs}
    # encryption_key_missing: required in 2.6's BlockDeviceInfo, dropped by later QEMU.
    assert ("query-named-block-nodes", "blockd", "return[].encryption_key_missing") in found
    # dirty-flag: optional in 2.6's ImageInfo; QEMU 7.2 sends it for every image.
    assert ("query-named-block-nodes", "qsd", "return[].image.dirty-flag") in found
    unexpected = {f for f in found if f[0] != "query-blockstats" and f[2] not in (
        "return[].encryption_key_missing", "return[].image.dirty-flag")}
    assert unexpected == set(), sorted(unexpected)


def test_query_commands_differences(sessions):
    ours, theirs, _ = sessions
    names = {c["name"] for c in dict(ours)["query-commands"]["return"]}
    their_names = {c["name"] for c in dict(theirs)["query-commands"]["return"]}
    # x-blockdev-del is 2.6's experimental command, which later QEMU replaced by blockdev-del;
    # x-blockd-* are blockd's own (live node policies, documented in its schema).
    # The tray and medium commands are the system emulator's, not qemu-storage-daemon's (it has no
    # guest devices); in blockd, exports play the guest device whose medium they swap.
    medium = {"blockdev-open-tray", "blockdev-close-tray", "x-blockdev-remove-medium", "x-blockdev-insert-medium",
              "blockdev-remove-medium", "blockdev-insert-medium", "blockdev-change-medium"}
    # Device throttling and the run state are the system emulator's too (qemu-storage-daemon throttles
    # with throttle-group objects and the throttle driver only); blockd's devices stand for the guest's.
    device = {"block_set_io_throttle", "stop", "cont"}
    assert {n for n in names - their_names if not n.startswith("x-blockd-")} == {"x-blockdev-del"} | medium | device


def test_argument_error_table_is_what_qemu_says(tmp_path):
    """The argument errors test_qmp_protocol.py expects of blockd are qemu-storage-daemon's, word for word."""
    launch = Launcher(tmp_path)
    try:
        daemon = launch.qsd("--blockdev", f"driver=null-co,node-name=n0,size={MiB}")
        image = make_image(tmp_path / "img.raw", MiB)
        wrong = []
        # A QEMU socket chardev serves one client at a time: one connection after the other.
        for case in sorted(ARGUMENT_ERRORS, key=lambda c: c[0] != "qmp_capabilities"):
            command, arguments, desc = case
            with daemon.qmp(negotiate=command != "qmp_capabilities") as q:
                reply = q.cmd(command, with_image(arguments, image))
            if reply.get("error") != {"class": "GenericError", "desc": desc}:
                wrong.append((argument_case_id(case), reply))
        assert wrong == []
    finally:
        launch.stop_all()
