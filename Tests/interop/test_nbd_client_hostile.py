"""The `nbd` driver against a hostile server (issue #14): a fake NBD server on a unix socket that
negotiates properly (doc/proto.md: fixed newstyle, NBD_OPT_GO with NBD_INFO_EXPORT) and then
answers requests wrongly: a bad reply magic, a reply for a cookie never sent, a structured chunk
longer than the request, a connection cut in the middle of a read's data, an error code the protocol
does not define. Each time the client reading through blockd gets an error (never wrong data),
blockd stays up, and another export of the same daemon keeps serving."""
import os
import socket
import struct
import threading

import pytest

from conftest import import_or_skip
from qmp_client import MiB, launcher  # noqa: F401

nbd = import_or_skip("nbd")

NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
OPT_GO, OPT_STRUCTURED_REPLY = 7, 8
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, (1 << 31) + 1
CMD_READ, CMD_DISC = 0, 2
CHUNK_OFFSET_DATA, FLAG_DONE = 1, 1
SIZE = 4 * MiB


def recv_exact(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


class HostileServer:
    """Serves SIZE bytes of 0x11 correctly until `mode` says how to answer reads wrongly."""

    def __init__(self, path, mode: str):
        self.mode = mode
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.running = True
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def option_reply(self, conn, option, kind, payload=b""):
        conn.sendall(struct.pack(">QIII", OPTION_REPLY_MAGIC, option, kind, len(payload)) + payload)

    def serve(self, conn):
        try:
            conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
            recv_exact(conn, 4)
            structured = False
            while True:
                magic, option, length = struct.unpack(">QII", recv_exact(conn, 16))
                assert magic == IHAVEOPT
                recv_exact(conn, length)
                if option == OPT_STRUCTURED_REPLY:
                    structured = True
                    self.option_reply(conn, option, REP_ACK)
                elif option == OPT_GO:
                    # NBD_INFO_EXPORT: size, transmission flags HAS_FLAGS | SEND_FLUSH.
                    self.option_reply(conn, option, REP_INFO, struct.pack(">HQH", 0, SIZE, 1 | 4))
                    self.option_reply(conn, option, REP_ACK)
                    break
                else:
                    self.option_reply(conn, option, REP_ERR_UNSUP)
            self.transmission(conn, structured)
        except (ConnectionError, OSError, AssertionError):
            pass
        finally:
            conn.close()

    def transmission(self, conn, structured):
        while True:
            magic, flags, kind, cookie, offset, length = struct.unpack(">IHHQQI", recv_exact(conn, 28))
            assert magic == REQUEST_MAGIC
            if kind == CMD_DISC:
                return
            if kind != CMD_READ:
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie))
                continue
            data = b"\x11" * length
            mode = self.mode
            if mode == "bad-magic":
                conn.sendall(struct.pack(">IIQ", 0xDEADBEEF, 0, cookie) + data)
            elif mode == "unknown-cookie":
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie ^ 0x5A5A5A5A) + data)
            elif mode == "oversized-chunk":
                body = struct.pack(">Q", offset) + data + b"\x22" * 4096
                conn.sendall(struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, FLAG_DONE, CHUNK_OFFSET_DATA, cookie, len(body)) + body)
            elif mode == "cut-in-data":
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie) + data[:len(data) // 2])
                conn.shutdown(socket.SHUT_RDWR)
                return
            elif mode == "odd-error":
                conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0x7777, cookie))
            else:
                if structured:
                    body = struct.pack(">Q", offset) + data
                    conn.sendall(struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, FLAG_DONE, CHUNK_OFFSET_DATA, cookie, len(body)) + body)
                else:
                    conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie) + data)

    def close(self):
        self.running = False
        self.thread.join()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass
        self.sock.close()


@pytest.mark.parametrize("mode", ["bad-magic", "unknown-cookie", "oversized-chunk", "cut-in-data", "odd-error"])
def test_malformed_replies_fail_requests_not_the_daemon(launcher, tmp_path, mode):
    server = HostileServer(tmp_path / "hostile.sock", "honest")
    try:
        sock = tmp_path / "hostile-nbd.sock"
        daemon = launcher.blockd(
            "--blockdev", f"driver=nbd,node-name=remote,server.type=unix,server.path={tmp_path / 'hostile.sock'}",
            "--blockdev", "driver=null-co,node-name=other,size=4194304,read-zeroes=on",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=remote,name=remote",
            "--export", "type=nbd,id=e1,node-name=other,name=other", name=f"hostile-{mode}")
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///remote?socket={sock}")
        # Honest first: the bytes come through.
        assert h.pread(4096, 0) == b"\x11" * 4096
        server.mode = mode
        try:
            data = h.pread(65536, 1 * MiB)
        except nbd.Error as error:
            assert error.errno is not None or "Input/output" in str(error), error
        else:
            pytest.fail(f"{mode}: the read returned {len(data)} bytes instead of an error")
        # The daemon and its other export are unaffected.
        other = nbd.NBD()
        other.connect_uri(f"nbd+unix:///other?socket={sock}")
        assert other.pread(4096, 0) == bytes(4096)
        other.shutdown()
        names = [node["node-name"] for node in daemon.qmp().execute("query-named-block-nodes")]
        assert "remote" in names and "other" in names
        assert daemon.proc.poll() is None
        # Once the server behaves again, new connections read the right bytes (reconnect).
        server.mode = "honest"
        for conn in list(server.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        import time
        deadline = time.monotonic() + 10
        while True:
            try:
                again = nbd.NBD()
                again.connect_uri(f"nbd+unix:///remote?socket={sock}")
                assert again.pread(4096, 2 * MiB) == b"\x11" * 4096
                again.shutdown()
                break
            except nbd.Error:
                assert time.monotonic() < deadline, daemon.log_text()
                time.sleep(0.2)
    finally:
        server.close()
