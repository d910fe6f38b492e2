"""blkdebug under a running export, driven by a connected libnbd client while its rules change over
QMP (x-blockd-blkdebug-set-rules): a live-added rule fails the next matching read once, with the
errno mapped to the NBD error, then reads succeed; set-state rules form a state machine; sector,
write and flush rules; a config file at open; blockdev-add with rules; and the same sequence of
requests against qemu-storage-daemon's blkdebug gives the same outcomes."""
import pytest

from client_helpers import nbd_outcome
from conftest import make_image, require, import_or_skip
from qmp_client import KiB, MiB, Schema, launcher  # noqa: F401

nbd = import_or_skip("nbd")

SIZE = 4 * MiB


def exported(launcher, tmp_path, blkdebug_opts: str = ""):
    """blockd exporting raw "disk0" over blkdebug "dbg0" over file "f0"; (qmp, nbd handle, image)."""
    image = make_image(tmp_path / "disk.img", SIZE, pattern=b"random")
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd(
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--blockdev", f"driver=blkdebug,node-name=dbg0,image=f0{blkdebug_opts}",
        "--blockdev", "driver=raw,node-name=disk0,file=dbg0",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    return daemon.qmp(), connect(f"nbd+unix:///disk0?socket={sock}"), image


def connect(uri: str):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


outcome = nbd_outcome


def set_rules(q, **rules) -> None:
    assert q.execute("x-blockd-blkdebug-set-rules", {"node-name": "dbg0", **rules}) == {}


def test_live_rule_fails_the_next_read_once(launcher, tmp_path):
    q, h, image = exported(launcher, tmp_path)
    expected = image.read_bytes()[:4096]
    assert h.pread(4096, 0) == expected
    set_rules(q, **{"inject-error": [{"event": "read_aio", "once": True}]})
    assert outcome(lambda: h.pread(4096, 0)) == "EIO"
    assert [h.pread(4096, 0) for _ in range(3)] == [expected] * 3
    # The connection survived the error and still writes.
    h.pwrite(b"w" * 4096, 8192)
    assert h.pread(4096, 8192) == b"w" * 4096
    h.shutdown()


@pytest.mark.parametrize("code,name", [(5, "EIO"), (28, "ENOSPC"), (1, "EPERM"), (22, "EINVAL"), (12, "ENOMEM"),
                                       (75, "EOVERFLOW"), (108, "ESHUTDOWN"), (122, "ENOSPC"), (61, "EIO")])
def test_errno_reaches_the_client_as_its_nbd_error(launcher, tmp_path, code, name):
    q, h, _ = exported(launcher, tmp_path)
    set_rules(q, **{"inject-error": [{"event": "read_aio", "errno": code, "once": True}]})
    assert outcome(lambda: h.pread(512, 0)) == name
    assert outcome(lambda: h.pread(512, 0)) == "ok"
    h.shutdown()


def test_set_state_rules_form_a_state_machine(launcher, tmp_path):
    q, h, _ = exported(launcher, tmp_path)
    set_rules(q, **{
        "set-state": [{"event": "write_aio", "state": 1, "new_state": 2},
                      {"event": "write_aio", "state": 2, "new_state": 3}],
        "inject-error": [{"event": "read_aio", "state": 2, "errno": 28, "once": True},
                         {"event": "read_aio", "state": 3, "errno": 1, "once": True}]})
    steps = [("read", lambda: h.pread(512, 0)),           # state 1: no rule
             ("write", lambda: h.pwrite(b"a" * 512, 0)),  # 1 -> 2
             ("read", lambda: h.pread(512, 0)),           # state 2: ENOSPC, once
             ("read", lambda: h.pread(512, 0)),
             ("write", lambda: h.pwrite(b"b" * 512, 0)),  # 2 -> 3
             ("read", lambda: h.pread(512, 0)),           # state 3: EPERM, once
             ("read", lambda: h.pread(512, 0))]
    assert [(label, outcome(step)) for label, step in steps] == [
        ("read", "ok"), ("write", "ok"), ("read", "ENOSPC"), ("read", "ok"), ("write", "ok"), ("read", "EPERM"),
        ("read", "ok")]
    # "state" sets the state directly.
    set_rules(q, state=7, **{"inject-error": [{"event": "read_aio", "state": 7, "once": True}]})
    assert [outcome(lambda: h.pread(512, 0)) for _ in range(2)] == ["EIO", "ok"]
    h.shutdown()


def test_sector_write_and_flush_rules(launcher, tmp_path):
    q, h, image = exported(launcher, tmp_path)
    before = image.read_bytes()
    set_rules(q, **{"inject-error": [{"event": "write_aio", "sector": 16}]})
    assert outcome(lambda: h.pwrite(b"x" * 512, 0)) == "ok"          # sector 0: untouched by the rule
    assert outcome(lambda: h.pwrite(b"y" * 1024, 15 * 512)) == "EIO"  # sectors 15-16
    assert outcome(lambda: h.pwrite(b"y" * 512, 16 * 512)) == "EIO"   # still armed: no once
    h.flush()
    after = image.read_bytes()
    assert after[:512] == b"x" * 512
    assert after[15 * 512:17 * 512] == before[15 * 512:17 * 512], "a failed write must not reach the image"
    set_rules(q, **{"inject-error": [{"event": "flush_to_os", "once": True}]})
    assert [outcome(h.flush) for _ in range(2)] == ["EIO", "ok"]
    # pwritev is raised by the blkdebug node itself for every write it receives.
    set_rules(q, **{"inject-error": [{"event": "pwritev", "errno": 28, "once": True}]})
    assert [outcome(lambda: h.pwrite(b"z" * 4096, 0)) for _ in range(2)] == ["ENOSPC", "ok"]
    set_rules(q)
    assert outcome(lambda: h.pwrite(b"y" * 512, 16 * 512)) == "ok"
    h.shutdown()


def test_config_file_and_command_line_rules(launcher, tmp_path):
    config = tmp_path / "blkdebug.conf"
    config.write_text('# the first read after the first write fails\n'
                      '[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n\n'
                      '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\nonce = "on"\n')
    q, h, _ = exported(launcher, tmp_path, f",config={config},inject-error.0.event=flush_to_disk,"
                                           "inject-error.0.once=on,inject-error.0.errno=1")
    assert [outcome(lambda: h.pread(512, 0)), outcome(lambda: h.pwrite(b"q" * 512, 0)),
            outcome(lambda: h.pread(512, 0)), outcome(lambda: h.pread(512, 0)), outcome(h.flush),
            outcome(h.flush)] == ["ok", "ok", "ENOSPC", "ok", "EPERM", "ok"]
    h.shutdown()


def test_errors(launcher, tmp_path):
    q, h, _ = exported(launcher, tmp_path)
    assert q.error("x-blockd-blkdebug-set-rules", {"node-name": "disk0"}) == {
        "class": "GenericError", "desc": "Node 'disk0' is not a blkdebug node"}
    assert q.error("x-blockd-blkdebug-set-rules", {"node-name": "nope"}) == {
        "class": "GenericError", "desc": "Device 'nope' not found"}
    assert q.error("x-blockd-blkdebug-set-rules", {"node-name": "dbg0", "inject-error": [{"event": "l2_lod"}]}) == {
        "class": "GenericError", "desc": "Parameter 'inject-error[0].event' does not accept value 'l2_lod'"}
    assert q.error("x-blockd-blkdebug-set-rules", {"node-name": "dbg0", "set-state": [{"event": "l2_load"}]}) == {
        "class": "GenericError", "desc": "Parameter 'set-state[0].new_state' is missing"}
    schema = Schema(q.execute("query-qmp-schema"))
    assert schema.command("x-blockd-blkdebug-set-rules")["arg-type"]
    h.shutdown()


def sequence(q, uri_of, image) -> list[str]:
    """Adds raw-over-blkdebug-over-file with rules over QMP, exports it and runs requests on it."""
    q.execute("blockdev-add", {
        "driver": "raw", "node-name": "disk0",
        "file": {"driver": "blkdebug", "node-name": "dbg0",
                 "image": {"driver": "file", "filename": str(image)},
                 "set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
                 "inject-error": [{"event": "read_aio", "state": 2, "errno": 28, "once": True},
                                  {"event": "write_aio", "state": 2, "sector": 16}]}})
    q.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "disk0", "writable": True})
    # Simple replies: QEMU's server drops a client whose structured read fails.
    h = nbd.NBD()
    h.set_request_structured_replies(False)
    h.connect_uri(uri_of("disk0"))
    results = [outcome(step) for step in (
        lambda: h.pread(512, 0), lambda: h.pwrite(b"a" * 512, 16 * 512), lambda: h.pread(512, 0),
        lambda: h.pread(512, 0), lambda: h.pwrite(b"b" * 512, 0), lambda: h.pwrite(b"c" * 512, 16 * 512),
        lambda: h.pwrite(b"d" * 4096, 8 * KiB))]  # sectors 16-23: still armed
    h.shutdown()
    return results


def test_same_outcomes_as_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    results = {}
    for program in ("blockd", "qsd"):
        # Data, not holes: QEMU's NBD server answers reads of holes without reading them.
        image = make_image(tmp_path / f"{program}.img", SIZE, pattern=b"random")
        sock = tmp_path / f"{program}-nbd.sock"
        daemon = launcher.blockd(name=program) if program == "blockd" else launcher.qsd()
        with daemon.qmp() as q:
            q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})
            results[program] = sequence(q, lambda name: f"nbd+unix:///{name}?socket={sock}", image)
    assert results["blockd"] == results["qsd"] == ["ok", "ok", "ENOSPC", "ok", "ok", "EIO", "EIO"]


def test_flushes_of_one_batch_share_one_flush_and_its_outcome(launcher, tmp_path):
    """FLUSH requests that arrive together are answered after one flush of the node, made once every
    write before them completed: pipelined [write, flush, write, flush] gets four good replies, the
    data is there, and a failing flush (a blkdebug rule that fires once) fails every FLUSH of its
    batch, with the next batch's FLUSH succeeding again."""
    from nbdwire import CMD_FLUSH, CMD_WRITE, connect_go
    q, h, _ = exported(launcher, tmp_path)
    c = connect_go(tmp_path / "nbd.sock", "disk0")
    batch = b""
    cookies = []
    for index in range(2):
        cookie, raw = c.encode_request(CMD_WRITE, index * 4096, 4096, 0, bytes([0x40 + index]) * 4096)
        cookies.append(cookie)
        batch += raw
        cookie, raw = c.encode_request(CMD_FLUSH)
        cookies.append(cookie)
        batch += raw
    c.send(batch)
    assert [c.read_reply(cookie).error for cookie in cookies] == [0, 0, 0, 0]
    assert c.read(0, 8192).data == b"\x40" * 4096 + b"\x41" * 4096
    set_rules(q, **{"inject-error": [{"event": "flush_to_os", "once": True}]})
    flushes = [c.encode_request(CMD_FLUSH) for _ in range(3)]
    c.send(b"".join(raw for _, raw in flushes))
    assert [c.read_reply(cookie).error for cookie, _ in flushes] == [5, 5, 5]   # EIO, all three
    assert c.request(CMD_FLUSH).error == 0
    c.disconnect()
    h.shutdown()
