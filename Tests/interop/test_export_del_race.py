"""A safe-mode block-export-del (and nbd-server-remove) must be refused while a client is connected,
however soon after the client's handshake it arrives. libnbd connects (its connect returns once the
server acknowledged NBD_OPT_GO) and the delete is sent at once, again and again: every delete must be
refused with QEMU's message, and the client must go on reading."""
import time

import pytest

from conftest import import_or_skip
from qmp_client import launcher  # noqa: F401

nbd = import_or_skip("nbd")

ROUNDS = 300


@pytest.fixture
def served(launcher, tmp_path):
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd("--blockdev", "driver=null-co,node-name=n0,size=1048576,read-zeroes=on",
                             "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=e0,node-name=n0,name=e0")
    return daemon, f"nbd+unix:///e0?socket={sock}"


@pytest.mark.parametrize("command", ["block-export-del", "nbd-server-remove"])
def test_safe_delete_right_after_connect_is_refused(served, command):
    daemon, uri = served
    arguments = {"id": "e0"} if command == "block-export-del" else {"name": "e0"}
    with daemon.qmp() as q:
        for round_number in range(ROUNDS):
            h = nbd.NBD()
            h.connect_uri(uri)
            reply = q.cmd(command, arguments)
            assert reply.get("error") == {"class": "GenericError", "desc": "export 'e0' still in use"}, (
                f"round {round_number}: {reply}")
            assert h.pread(4096, 0) == bytes(4096), f"round {round_number}: the client lost its connection"
            h.shutdown()
            del h
        # Once the last client has gone, the safe delete goes through.
        for _ in range(100):
            reply = q.cmd(command, arguments)
            if "return" in reply:
                break
            time.sleep(0.01)
        assert reply == {"return": {}}
        assert q.execute("query-block-exports") == []
