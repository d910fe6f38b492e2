"""A catalogue of malformed and hostile NBD input, sent with our own raw client (nbdwire), and
extended headers end to end.

Each test asserts the exact reply the spec (doc/proto.md of NetworkBlockDevice/nbd) prescribes, or
blockd's documented behaviour where the spec leaves a choice. Next to every hostile client a
well-behaved libnbd client (the bystander) runs a read/write workload on the same server; it must
see correct data and no error, and must keep making progress while the hostile client misbehaves."""
from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import import_or_skip
from nbdwire import (
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
    CMD_FLAG_PAYLOAD_LEN, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    EXTENDED_REQUEST_MAGIC, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, IHAVEOPT, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW,
    NBD_EPERM, OPT_ABORT, OPT_EXPORT_NAME, OPT_EXTENDED_HEADERS, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
    OPT_PEEK_EXPORT, OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_EXT_HEADER_REQD,
    REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO,
    REP_META_CONTEXT, REP_SERVER, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS_EXT, REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REQUEST_MAGIC, STATE_HOLE, STATE_ZERO,
    TF_CAN_MULTI_CONN, TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_CACHE, TF_SEND_DF, TF_SEND_FAST_ZERO, TF_SEND_FLUSH,
    TF_SEND_FUA, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, Closed, Conn, connect_go, info_request,
    meta_context_request, name_of,
)

nbd = import_or_skip("nbd")

KiB = 1 << 10
MiB = 1 << 20
SIZE = 64 * MiB                      # larger than the 32 MiB maximum payload
MAX_PAYLOAD = 32 * MiB
DATA = [(0, 1 * MiB), (2 * MiB, 1 * MiB)]   # random data; the rest of the image is a hole
BYSTANDER = (48 * MiB, 1 * MiB)      # the region only the bystander writes
DESCRIPTION = "hostile test disk"
STYLES = ["simple", "structured", "extended"]
CHUNKED = ["structured", "extended"]


# --- The well-behaved neighbour ------------------------------------------------------------------

class Bystander:
    """A libnbd client writing, reading back and flushing in its own region, in a thread."""

    def __init__(self, uri: str, image: Path):
        self.image = image
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.expected: dict[int, bytes] = {}
        self.errors: list[str] = []
        self.ops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(1234)
        base, length = BYSTANDER
        slots = length // 4096
        while not self._stop.is_set():
            try:
                offset = base + rng.randrange(slots) * 4096
                data = rng.randbytes(4096)
                self.h.pwrite(data, offset, nbd.CMD_FLAG_FUA if self.ops % 3 == 0 else 0)
                self.expected[offset] = data
                if self.h.pread(4096, offset) != data:
                    self.errors.append(f"read back of {offset} differs")
                other = rng.choice(list(self.expected))
                if self.h.pread(4096, other) != self.expected[other]:
                    self.errors.append(f"earlier write at {other} lost")
                if self.ops % 10 == 0:
                    self.h.flush()
                self.ops += 1
            except Exception as error:  # noqa: BLE001 - every failure is a finding
                self.errors.append(f"after {self.ops} ops: {error!r}")
                return
            time.sleep(0.001)

    def progress(self, count: int = 5, timeout: float = 5.0) -> None:
        """Asserts the workload completes `count` more iterations within `timeout` (the server still serves it)."""
        target = self.ops + count
        deadline = time.monotonic() + timeout
        while self.ops < target and not self.errors and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not self.errors, f"bystander failed: {self.errors}"
        assert self.ops >= target, f"bystander stalled at {self.ops} ops (wanted {target} within {timeout}s)"

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "bystander hung"
        try:
            self.h.shutdown()
        except nbd.Error as error:
            self.errors.append(f"shutdown: {error!r}")
        assert not self.errors, f"bystander failed: {self.errors}"
        assert self.ops > 0, "bystander never completed an operation"
        with open(self.image, "rb") as f:
            for offset, data in self.expected.items():
                f.seek(offset)
                assert f.read(4096) == data, f"bystander data at {offset} not in the image"


@dataclass
class Env:
    blockd: object
    image: Path
    bystander: Bystander | None = None
    conns: list[Conn] = field(default_factory=list)
    finished: bool = False

    @property
    def path(self) -> Path:
        return self.blockd.sock

    def conn(self, timeout: float = 5.0) -> Conn:
        c = Conn.connect(self.path, timeout)
        self.conns.append(c)
        return c

    def go(self, export: str = "disk0", style: str = "structured", meta: tuple[str, ...] = ()) -> Conn:
        c = connect_go(self.path, export, style=style, meta=meta)
        self.conns.append(c)
        return c

    def file(self, offset: int, length: int) -> bytes:
        with open(self.image, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def assert_serving(self) -> None:
        """The server still accepts and serves a new client, and the bystander still progresses."""
        assert self.blockd.proc.poll() is None, f"blockd died:\n{self.blockd.log_text()}"
        with connect_go(self.path, "disk0") as c:
            assert c.read(0, 64 * KiB).data == self.file(0, 64 * KiB)
            c.disconnect()
        if self.bystander:
            self.bystander.progress()

    def finish(self) -> None:
        """Closes the hostile connections and checks the bystander; called by the test or at teardown."""
        if self.finished:
            return
        self.finished = True
        for c in self.conns:
            c.close()
        if self.bystander:
            self.bystander.finish()
        assert self.blockd.proc.poll() is None, f"blockd died:\n{self.blockd.log_text()}"


@pytest.fixture
def hostile(tmp_path, start_blockd):
    """Factory: a blockd over a 64 MiB image exporting 'disk0' (writable) and 'ro0' (read-only) of the
    same node, with a bystander already connected to 'disk0'."""
    envs: list[Env] = []

    def factory(server_opts: str = "", bystander: bool = True) -> Env:
        image = tmp_path / f"hostile-{len(envs)}.img"
        with open(image, "wb") as f:
            f.truncate(SIZE)
            for offset, length in DATA:
                f.seek(offset)
                f.write(os.urandom(length))
        blockd = start_blockd(args=[
            "--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk0,file=f0",
            "--export", f"type=nbd,id=e0,node-name=disk0,name=disk0,writable=on,description={DESCRIPTION}",
            "--export", "type=nbd,id=e1,node-name=disk0,name=ro0,writable=off",
        ], server_opts=server_opts)
        env = Env(blockd, image)
        envs.append(env)
        if bystander:
            env.bystander = Bystander(blockd.uri("disk0"), image)
        return env

    yield factory
    for env in envs:
        env.finish()


@pytest.fixture
def env(hostile) -> Env:
    return hostile()


def option_reply_types(replies) -> list[tuple[int, int]]:
    return [(r.option, r.type) for r in replies]


def quiet(conn: Conn, wait: float = 0.2) -> bool:
    """True when the server has sent nothing more (and not closed) within `wait` seconds."""
    ready, _, _ = select.select([conn.sock], [], [], wait)
    return not ready


# =================================================================================================
# Handshake
# =================================================================================================

def test_greeting_and_handshake_flags(env):
    c = env.conn()
    assert c.greeting() == FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES   # no other handshake flag may be set
    c.send(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES))
    assert quiet(c), "the server must wait for an option"
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("flags", [1 << 2, 1 << 31, 0xFFFFFFFF, int.from_bytes(b"GET ", "big")],
                         ids=["bit2", "bit31", "all", "http"])
def test_unknown_client_flags_dropped(env, flags):
    """Client flags: 'the server MUST drop the TCP connection if the client sets an unknown flag'."""
    c = env.conn()
    c.greeting()
    c.send(struct.pack(">I", flags))
    assert c.read_until_closed(2) == b"", "an option reply was sent instead of dropping the client"
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("magic", [0, IHAVEOPT ^ 1, 0x4E42444D41474943, REQUEST_MAGIC], ids=["zero", "one-bit", "nbdmagic", "request"])
def test_bad_option_magic_dropped(env, magic):
    c = env.conn()
    c.handshake()
    c.send_option(OPT_LIST, magic=magic)
    assert c.read_until_closed(2) == b""
    env.assert_serving()
    env.finish()


def _truncate(c: Conn, stage: str) -> None:
    if stage == "before-greeting":
        return
    c.greeting()
    if stage == "flags-partial":
        c.send(b"\x00\x00")
        return
    c.send(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES))
    if stage == "option-header-partial":
        c.send(struct.pack(">QI", IHAVEOPT, OPT_GO)[:11])
    elif stage == "option-data-partial":
        c.send_option(OPT_GO, info_request("disk0")[:5], length=len(info_request("disk0")))


@pytest.mark.parametrize("stage", ["before-greeting", "flags-partial", "option-header-partial", "option-data-partial"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_truncated_handshake(env, stage, how):
    c = env.conn()
    _truncate(c, stage)
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("option", [0, OPT_PEEK_EXPORT, 12, 0x7FFFFFFF, 0x80000005, 0xFFFFFFFF])
def test_unknown_option_is_unsupported_and_session_continues(env, option):
    c = env.conn()
    c.handshake()
    assert option_reply_types(c.option(option, b"some option data")) == [(option, REP_ERR_UNSUP)]
    assert option_reply_types(c.option(option)) == [(option, REP_ERR_UNSUP)]
    assert c.opt_list()[-1].type == REP_ACK
    assert c.opt_structured_reply().type == REP_ACK
    assert c.go("disk0")[-1].type == REP_ACK
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


@pytest.mark.parametrize("option", [OPT_INFO, OPT_GO, OPT_SET_META_CONTEXT, OPT_LIST_META_CONTEXT])
def test_oversized_option_is_too_big_and_session_continues(env, option):
    c = env.conn()
    c.handshake()
    c.send_option(option, bytes(64 * KiB + 1))
    assert option_reply_types([c.read_option_reply()]) == [(option, REP_ERR_TOO_BIG)]
    assert quiet(c)
    assert c.opt_structured_reply().type == REP_ACK
    assert c.go("disk0")[-1].type == REP_ACK
    assert c.read(2 * MiB, 8192).data == env.file(2 * MiB, 8192)
    env.bystander.progress()
    env.finish()


def test_huge_option_length_dropped(env):
    """blockd drops a client announcing more than 16 MiB of option data (a denial of service: the spec lets
    a server hard-disconnect) instead of reading it."""
    c = env.conn()
    c.handshake()
    c.send_option(OPT_INFO, length=0xFFFFFFFF)
    assert c.read_until_closed(2) == b""
    env.assert_serving()
    env.finish()


def test_starttls_refused_without_tls(env):
    """NOTLS mode: NBD_OPT_STARTTLS MUST be answered NBD_REP_ERR_POLICY or NBD_REP_ERR_UNSUP (never TLS_REQD)."""
    c = env.conn()
    c.handshake()
    (reply,) = c.option(OPT_STARTTLS)
    assert reply.type in (REP_ERR_UNSUP, REP_ERR_POLICY), reply
    (reply,) = c.option(OPT_STARTTLS, b"junk")
    assert reply.type in (REP_ERR_INVALID, REP_ERR_UNSUP, REP_ERR_POLICY), reply   # e.g. INVALID: data was included
    assert c.go("disk0")[-1].type == REP_ACK
    assert c.read(0, 512).data == env.file(0, 512)
    env.finish()


def test_options_that_take_no_data_reject_data(env):
    """LIST, STRUCTURED_REPLY and EXTENDED_HEADERS with data: NBD_REP_ERR_INVALID, and nothing is negotiated."""
    c = env.conn()
    c.handshake()
    assert option_reply_types(c.option(OPT_LIST, b"x")) == [(OPT_LIST, REP_ERR_INVALID)]
    assert option_reply_types(c.option(OPT_STRUCTURED_REPLY, b"x")) == [(OPT_STRUCTURED_REPLY, REP_ERR_INVALID)]
    assert option_reply_types(c.option(OPT_EXTENDED_HEADERS, b"\0\0\0\0")) == [(OPT_EXTENDED_HEADERS, REP_ERR_INVALID)]
    assert c.go("disk0")[-1].type == REP_ACK
    assert not c.tflags & TF_SEND_DF, "DF advertised although no structured replies were negotiated"
    reply = c.read(0, 4096)  # must be a simple reply: nothing was negotiated
    assert reply.style == "simple" and reply.data == env.file(0, 4096)
    env.finish()


def test_list_exports(env):
    c = env.conn()
    c.handshake()
    replies = c.opt_list()
    assert [r.type for r in replies] == [REP_SERVER, REP_SERVER, REP_ACK]
    assert [r.server() for r in replies[:2]] == [("disk0", DESCRIPTION), ("ro0", "")]
    env.finish()


def test_info_and_go_replies(env):
    c = env.conn()
    c.handshake()
    asked = [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 0x7777, 0xFFFF]
    info = c.opt_info("disk0", asked)
    assert info[-1].type == REP_ACK and all(r.type == REP_INFO for r in info[:-1])
    items = dict(r.info() for r in info[:-1])
    assert len(items) == len(info) - 1, "an information type was sent twice"
    assert set(items) == {INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE}, "unknown requests must be ignored"
    size, flags = struct.unpack(">QH", items[INFO_EXPORT])
    assert size == SIZE
    assert flags == (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES
                     | TF_SEND_CACHE | TF_SEND_FAST_ZERO | TF_CAN_MULTI_CONN), hex(flags)  # no DF: simple replies
    assert items[INFO_NAME] == b"disk0"
    assert items[INFO_DESCRIPTION] == DESCRIPTION.encode()
    assert struct.unpack(">III", items[INFO_BLOCK_SIZE]) == (1, 4096, MAX_PAYLOAD)

    ro = dict(r.info() for r in c.opt_info("ro0", [])[:-1])
    assert struct.unpack(">QH", ro[INFO_EXPORT])[1] & (TF_READ_ONLY | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES) == TF_READ_ONLY

    # GO right after an INFO with the same parameters MUST give the same information.
    go = c.go("disk0", asked)
    assert go[-1].type == REP_ACK
    assert dict(r.info() for r in go[:-1]) == items
    assert quiet(c), "bytes after the final NBD_REP_ACK of NBD_OPT_GO"
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


@pytest.mark.parametrize("data", [
    struct.pack(">I", 100) + b"disk0" + struct.pack(">H", 0),           # name length beyond the data
    struct.pack(">I", 5) + b"disk0",                                     # no request count
    struct.pack(">I", 5) + b"disk0" + struct.pack(">HH", 3, INFO_NAME),  # fewer requests than counted
    struct.pack(">I", 5) + b"disk0" + struct.pack(">H", 0) + b"xx",      # trailing bytes
    b"",
], ids=["name-overrun", "no-count", "short-list", "trailing", "empty"])
@pytest.mark.parametrize("option", [OPT_INFO, OPT_GO])
def test_malformed_info_is_invalid(env, option, data):
    c = env.conn()
    c.handshake()
    assert option_reply_types(c.option(option, data)) == [(option, REP_ERR_INVALID)]
    assert c.go("ro0")[-1].type == REP_ACK
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


@pytest.mark.parametrize("option", [OPT_INFO, OPT_GO])
def test_unknown_export_then_valid_go(env, option):
    c = env.conn()
    c.handshake()
    # NBD_REP_ERR_UNKNOWN, and the server SHOULD NOT send NBD_REP_INFO before it.
    assert option_reply_types(c.option(option, info_request("nosuch", [INFO_NAME]))) == [(option, REP_ERR_UNKNOWN)]
    # A name with a NUL is not a valid string: not found, or invalid.
    (reply,) = c.option(option, info_request("disk0\0", []))
    assert reply.type in (REP_ERR_UNKNOWN, REP_ERR_INVALID), reply
    assert c.opt_structured_reply().type == REP_ACK
    assert c.go("disk0")[-1].type == REP_ACK
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name(env, no_zeroes):
    c = env.conn()
    c.handshake(FLAG_C_FIXED_NEWSTYLE | (FLAG_C_NO_ZEROES if no_zeroes else 0))
    raw = c.export_name("disk0", no_zeroes)
    assert c.size == SIZE and c.tflags & TF_HAS_FLAGS and not c.tflags & TF_READ_ONLY
    if not no_zeroes:
        assert raw[10:] == bytes(124)
    assert quiet(c), "more bytes than the NBD_OPT_EXPORT_NAME reply"
    assert c.read(2 * MiB, 4096).data == env.file(2 * MiB, 4096)
    env.finish()


def test_export_name_unknown_terminates_session(env):
    """NBD_OPT_EXPORT_NAME cannot report errors: for an unknown export the server MUST terminate the session."""
    c = env.conn()
    c.handshake()
    c.send_option(OPT_EXPORT_NAME, b"nosuch")
    assert c.read_until_closed(2) == b""
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("data", [b"", b"ignored"])
def test_abort(env, data):
    """NBD_OPT_ABORT: the server MUST reply NBD_REP_ACK (and SHOULD ignore any data), then the session ends."""
    c = env.conn()
    c.handshake()
    c.send_option(OPT_ABORT, data)
    assert option_reply_types([c.read_option_reply()]) == [(OPT_ABORT, REP_ACK)]
    assert c.read_until_closed(2) == b""
    env.finish()


# --- Meta contexts -------------------------------------------------------------------------------

def test_meta_context_negotiation(env):
    c = env.conn()
    c.handshake()
    # SET before structured replies: the server SHOULD send NBD_REP_ERR_INVALID.
    assert option_reply_types(c.opt_set_meta_context("disk0", ["base:allocation"])) == [(OPT_SET_META_CONTEXT, REP_ERR_INVALID)]
    assert c.opt_structured_reply().type == REP_ACK

    listed = c.opt_list_meta_context("disk0", [])      # no query: every context the export offers
    assert [r.type for r in listed] == [REP_META_CONTEXT, REP_ACK]
    assert [r.meta_context() for r in listed[:-1]] == [(0, "base:allocation")]  # ids SHOULD be 0
    listed = c.opt_list_meta_context("disk0", ["base:"])  # the wildcard MUST be supported by LIST
    assert [r.meta_context()[1] for r in listed[:-1]] == ["base:allocation"] and listed[-1].type == REP_ACK
    # Unknown namespaces and leaf names MUST be ignored: a single NBD_REP_ACK.
    assert [r.type for r in c.opt_list_meta_context("disk0", ["x-nosuch:thing", "base:nosuch"])] == [REP_ACK]
    # Syntactically invalid (a query length beyond the data): MUST be NBD_REP_ERR_INVALID.
    bad = meta_context_request("disk0", ["base:allocation"])[:-4]
    assert option_reply_types(c.option(OPT_LIST_META_CONTEXT, bad)) == [(OPT_LIST_META_CONTEXT, REP_ERR_INVALID)]
    assert option_reply_types(c.option(OPT_SET_META_CONTEXT, bad)) == [(OPT_SET_META_CONTEXT, REP_ERR_INVALID)]

    selected = c.opt_set_meta_context("disk0", ["base:allocation", "base:allocation", "x-nosuch:y"])
    assert [r.type for r in selected] == [REP_META_CONTEXT, REP_ACK]
    assert c.contexts and list(c.contexts.values()) == ["base:allocation"]
    # Zero queries: the server MUST select no metadata context.
    assert [r.type for r in c.opt_set_meta_context("disk0", [])] == [REP_ACK]
    assert c.go("disk0")[-1].type == REP_ACK
    # So BLOCK_STATUS now has no context: the server SHOULD reply NBD_EINVAL.
    reply = c.request(CMD_BLOCK_STATUS, 0, 4096)
    assert reply.error == NBD_EINVAL and reply.types == [REPLY_TYPE_ERROR]
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


def test_set_meta_context_base_wildcard_selects_nothing(env):
    """'base:' - the server MUST ignore this form during NBD_OPT_SET_META_CONTEXT."""
    c = env.conn()
    c.handshake()
    assert c.opt_structured_reply().type == REP_ACK
    replies = c.opt_set_meta_context("disk0", ["base:"])
    assert option_reply_types(replies) == [(OPT_SET_META_CONTEXT, REP_ACK)], replies
    env.finish()


def test_failed_set_meta_context_clears_the_selection(env):
    """SET_META_CONTEXT 'replaces all previously-set metadata contexts (including when this command fails)'."""
    c = env.conn()
    c.handshake()
    assert c.opt_structured_reply().type == REP_ACK
    assert [r.type for r in c.opt_set_meta_context("disk0", ["base:allocation"])] == [REP_META_CONTEXT, REP_ACK]
    assert option_reply_types(c.opt_set_meta_context("nosuch", ["base:allocation"])) == [(OPT_SET_META_CONTEXT, REP_ERR_UNKNOWN)]
    assert c.go("disk0")[-1].type == REP_ACK
    c.send_request(CMD_BLOCK_STATUS, 0, 4096)
    chunk = c.read_chunk()
    assert chunk.type == REPLY_TYPE_ERROR and chunk.error == NBD_EINVAL, f"block status served with no context selected: {chunk}"
    env.finish()


def test_meta_context_for_another_export_is_not_used(env):
    c = env.conn()
    c.handshake()
    assert c.opt_structured_reply().type == REP_ACK
    assert [r.type for r in c.opt_set_meta_context("ro0", ["base:allocation"])] == [REP_META_CONTEXT, REP_ACK]
    c.contexts = {}
    assert c.go("disk0")[-1].type == REP_ACK
    reply = c.request(CMD_BLOCK_STATUS, 0, 4096)
    assert reply.error == NBD_EINVAL
    env.finish()


def test_structured_reply_after_extended_headers(env):
    """NBD_OPT_STRUCTURED_REPLY after extended headers: NBD_REP_ERR_EXT_HEADER_REQD ('the client has already
    successfully negotiated extended headers, which takes precedence'); extended headers stay in force."""
    c = env.conn()
    c.handshake()
    assert c.opt_extended_headers().type == REP_ACK
    (reply,) = c.option(OPT_STRUCTURED_REPLY)
    assert reply.type == REP_ERR_EXT_HEADER_REQD, reply
    assert c.go("disk0")[-1].type == REP_ACK
    assert c.read(0, 4096).style == "extended"
    env.finish()


def test_extended_headers_after_structured_reply(env):
    c = env.conn()
    c.handshake()
    assert c.opt_structured_reply().type == REP_ACK
    assert c.opt_extended_headers().type == REP_ACK
    assert c.go("disk0")[-1].type == REP_ACK
    reply = c.read(0, 4096)
    assert reply.style == "extended" and reply.data == env.file(0, 4096)
    env.finish()


# --- Handshake time limits and connection limits -------------------------------------------------

@pytest.mark.parametrize("stage", ["after-greeting", "mid-option"])
def test_stalled_handshake_dropped_after_limit(hostile, stage):
    env = hostile(",handshake-max-seconds=1")
    start = time.monotonic()
    c = env.conn()
    c.greeting()
    if stage == "mid-option":
        c.send(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) + struct.pack(">Q", IHAVEOPT)[:5])
    env.bystander.progress()
    assert c.read_until_closed(8) == b""
    elapsed = time.monotonic() - start
    # Not before the limit; well before the 10 s default (a generous bound for a busy machine).
    assert 0.8 <= elapsed <= 5, f"dropped after {elapsed:.2f}s with handshake-max-seconds=1"
    env.assert_serving()
    env.finish()


def test_handshake_limit_covers_the_whole_negotiation(hostile):
    """A client that keeps the negotiation alive with valid options is still dropped at the limit."""
    env = hostile(",handshake-max-seconds=1")
    start = time.monotonic()
    c = env.conn()
    c.handshake()
    with pytest.raises(Closed):
        while time.monotonic() - start < 8:
            assert c.opt_list()[-1].type == REP_ACK
            time.sleep(0.2)
    elapsed = time.monotonic() - start
    assert elapsed <= 5, f"negotiation still going after {elapsed:.2f}s with handshake-max-seconds=1"
    env.assert_serving()
    env.finish()


def test_handshake_limit_against_drip_fed_option(hostile):
    """Slowloris: an option whose data arrives a byte at a time must not stretch the handshake past the limit."""
    env = hostile(",handshake-max-seconds=1")
    start = time.monotonic()
    c = env.conn()
    c.handshake()
    c.send_option(OPT_INFO, length=4096)
    closed_at = None
    while time.monotonic() - start < 8:
        if c.is_closed_by_peer(0.25):
            closed_at = time.monotonic() - start
            break
        try:
            c.send(b"\0")
        except Closed:
            closed_at = time.monotonic() - start
            break
    env.bystander.progress()
    assert closed_at is not None, "drip-fed handshake still open after 8s with handshake-max-seconds=1"
    assert closed_at <= 5, f"dropped only after {closed_at:.2f}s"
    env.finish()


def test_handshake_limit_against_client_that_does_not_read(hostile):
    """A client that sends options but never reads the replies must not hold its connection slot past the
    handshake limit (the server must not block forever sending to it)."""
    env = hostile(",handshake-max-seconds=1,max-connections=2")   # the bystander holds one slot
    deadline = time.monotonic() + 5
    while True:
        # start_blockd's readiness probe may hold the other slot for a moment after it closed.
        c = env.conn(timeout=2)
        try:
            c.handshake()
            break
        except Closed:
            assert time.monotonic() < deadline, "the second slot never became free"
            time.sleep(0.05)
    try:
        c.send(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0) * 5000)
    except (TimeoutError, socket.timeout, Closed):
        pass  # the server stopped reading: fine, that is the point
    time.sleep(2.5)
    env.bystander.progress()
    # The slot must be free again: a new client is admitted and served.
    try:
        fresh = connect_go(env.path, "disk0")
    except Closed:
        pytest.fail("a new client was refused 2.5s after the handshake limit: the connection of the client that "
                    "stopped reading replies still holds its slot (server blocked sending to it)")
    with fresh:
        assert fresh.read(0, 4096).data == env.file(0, 4096)
    env.finish()


def test_idle_connection_flood(hostile):
    """300 idle connections against max-connections=100: the excess is not refused but waits (as with
    QEMU, whose full server stops accepting); the admitted idle ones are dropped at the handshake limit
    and waiting ones take their slots; the server and the bystander carry on."""
    env = hostile(",max-connections=100,handshake-max-seconds=2")
    socks, unqueued = [], 0
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(env.path))
            except BlockingIOError:   # the listen backlog is full too: the kernel turns it away
                unqueued += 1
                s.close()
                continue
            socks.append(s)
        time.sleep(0.5)

        def greeted(s) -> bool:
            try:
                return bool(s.recv(18, socket.MSG_PEEK))
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True   # closed: counted with those that got an answer, checked below

        first_wave = [s for s in socks if greeted(s)]
        waiting = [s for s in socks if s not in first_wave]
        assert len(first_wave) == 99, (len(first_wave), len(waiting), unqueued)
        for s in first_wave:
            assert len(s.recv(18, socket.MSG_PEEK)) == 18, "a connection over the limit was closed instead of waiting"
        env.bystander.progress()
        # The idle ones are dropped at the limit; waiting clients get their slots and a greeting.
        deadline = time.monotonic() + 5
        for s in first_wave:
            s.setblocking(True)
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = s.recv(100)
            assert len(data) == 18 and s.recv(100) == b"", "idle connection not dropped at the handshake limit"
        time.sleep(0.5)
        assert sum(1 for s in waiting if greeted(s)) > 0, "no waiting client took a freed slot"
        env.bystander.progress()
        for s in socks:   # the idle clients leave: their slots (and places in the queue) go to the next client
            s.close()
        env.assert_serving()
    finally:
        for s in socks:
            s.close()
    env.finish()


# =================================================================================================
# Transmission
# =================================================================================================

@pytest.mark.parametrize("style", STYLES)
def test_misaligned_requests(env, style):
    """The minimum block size is 1: any offset and length must work."""
    c = env.go(style=style)
    for offset, length in [(1, 1), (511, 2), (4095, 3), (2 * MiB - 7, 14), (12345, 65537), (SIZE - 1, 1),
                           (20 * MiB + 1, 8 * MiB + 3)]:
        data = os.urandom(length)
        reply = c.write(offset, data)
        assert reply.error == 0, f"write at {offset}+{length}: {reply.chunks}"
        assert env.file(offset, length) == data
        assert c.read(offset, length).data == data
        assert c.read(offset - 1, length + 1).data == env.file(offset - 1, length + 1)
    assert c.request(CMD_WRITE_ZEROES, 3, 5).error == 0 and env.file(3, 5) == bytes(5)
    assert c.request(CMD_TRIM, 4097, 8191).error == 0
    assert c.read(4097, 8191).data == env.file(4097, 8191)
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_requests_past_the_end(env, style):
    meta = () if style == "simple" else ("base:allocation",)
    c = env.go(style=style, meta=meta)
    edge = SIZE - 1024
    cases = [
        (CMD_READ, edge, 4096, 0, b"", NBD_EINVAL),
        (CMD_READ, SIZE, 1, 0, b"", NBD_EINVAL),
        (CMD_READ, 2**64 - 512, 1024, 0, b"", NBD_EINVAL),       # offset + length wraps around
        (CMD_WRITE, edge, 4096, 0, os.urandom(4096), NBD_ENOSPC),
        (CMD_WRITE, 2**64 - 100, 200, 0, os.urandom(200), NBD_ENOSPC),
        (CMD_WRITE_ZEROES, edge, 4096, 0, b"", NBD_ENOSPC),
        (CMD_WRITE_ZEROES, 2**63, 4096, CMD_FLAG_NO_HOLE, b"", NBD_ENOSPC),
        (CMD_TRIM, edge, 4096, 0, b"", NBD_EINVAL),
        (CMD_CACHE, edge, 4096, 0, b"", NBD_EINVAL),
    ]
    if meta:
        cases.append((CMD_BLOCK_STATUS, SIZE, 4096, 0, b"", NBD_EINVAL))
    for kind, offset, length, flags, payload, expected in cases:
        if payload and style == "extended":
            flags |= CMD_FLAG_PAYLOAD_LEN
        reply = c.request(kind, offset, length, flags, payload)
        assert reply.error == expected, f"{name_of('CMD_', kind)} at {offset}+{length}: {reply.chunks}"
        if style != "simple" and kind in (CMD_READ, CMD_BLOCK_STATUS):
            assert reply.types == [REPLY_TYPE_ERROR] and reply.chunks[0].flags & REPLY_FLAG_DONE
    assert os.stat(env.image).st_size == SIZE
    assert c.read(edge, 1024).data == env.file(edge, 1024)
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_writes_on_read_only_export(env, style):
    c = env.go("ro0", style=style)
    assert c.tflags & TF_READ_ONLY and not c.tflags & (TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO)
    before = env.file(0, 64 * KiB)
    payload_flag = CMD_FLAG_PAYLOAD_LEN if style == "extended" else 0
    for kind, flags, payload in [(CMD_WRITE, payload_flag, os.urandom(4096)), (CMD_WRITE, payload_flag | CMD_FLAG_FUA, os.urandom(4096)),
                                 (CMD_WRITE_ZEROES, 0, b""), (CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, b""), (CMD_TRIM, 0, b"")]:
        reply = c.request(kind, 0, 4096, flags, payload)
        assert reply.error == NBD_EPERM, f"{name_of('CMD_', kind)}: {reply.chunks}"
    assert env.file(0, 64 * KiB) == before
    assert c.read(0, 64 * KiB).data == before
    assert c.request(CMD_FLUSH).error == 0
    assert c.request(CMD_CACHE, 0, 4096).error == 0
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_read_larger_than_maximum_payload(env, style):
    """Reads above the advertised 32 MiB maximum fail without a payload: NBD_EINVAL with simple replies
    (the only error a simple reply can carry for it), NBD_EOVERFLOW in an error chunk otherwise."""
    c = env.go(style=style)
    reply = c.read(0, MAX_PAYLOAD + 1)
    if style == "simple":
        assert reply.error == NBD_EINVAL and reply.chunks[0].payload == b""
    else:
        assert reply.error == NBD_EOVERFLOW and reply.types == [REPLY_TYPE_ERROR]
    # Exactly the maximum is fine.
    assert c.read(0, MAX_PAYLOAD).data == env.file(0, MAX_PAYLOAD)
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", ["simple", "structured"])
def test_write_larger_than_maximum_payload(env, style):
    """A write above the advertised maximum (and under 64 MiB): the spec says the server SHOULD report
    NBD_EINVAL for a request larger than the maximum block size; the README promises that blockd reads
    and drops the payload, answers EINVAL and keeps the connection up. Nothing is written."""
    c = env.go(style=style)
    before = env.file(0, 64 * KiB)
    c.send_request(CMD_WRITE, 0, MAX_PAYLOAD + 4096, 0, b"\xab" * (MAX_PAYLOAD + 4096))
    reply = c.read_reply()
    assert reply.error == NBD_EINVAL, f"oversized write answered {name_of('NBD_E', reply.error)}: {reply.chunks}"
    # The same connection goes on: the payload was skipped, the next request is read from the right place.
    assert c.read(0, 4096).data == before[:4096]
    assert c.write(4096, b"\x5a" * 4096).error == 0
    assert env.file(0, 4096) == before[:4096], "the oversized write reached the image"
    assert env.file(4096, 4096) == b"\x5a" * 4096
    env.bystander.progress()
    env.finish()


def test_write_larger_than_maximum_payload_with_extended_headers(env):
    """With extended headers a PAYLOAD_LEN above the maximum SHOULD be a hard disconnect (the README:
    the connection is dropped); nothing is written."""
    c = env.go(style="extended")
    before = env.file(0, 64 * KiB)
    try:
        c.send_request(CMD_WRITE, 0, MAX_PAYLOAD + 4096, CMD_FLAG_PAYLOAD_LEN, b"\xab" * (MAX_PAYLOAD + 4096))
    except Closed:
        pass  # the server hung up while the payload was still being sent
    assert c.read_until_closed(5) == b"", "a reply to an oversized extended write instead of a disconnect"
    assert env.file(0, 64 * KiB) == before
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("style", ["simple", "structured"])
def test_write_header_announcing_huge_payload_dropped(env, style):
    """blockd drops a client announcing a write payload over 64 MiB instead of reading it (the spec lets a
    server hard-disconnect a payload large enough to be a denial of service)."""
    c = env.go(style=style)
    c.send_request(CMD_WRITE, 0, 0xFFFFFFFF, 0, b"\0" * 4096)
    assert c.read_until_closed(3) == b""
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_unknown_commands_are_einval(env, style):
    c = env.go(style=style)
    for kind in (8, 9, 100, 0x7FFF, 0xFFFF):   # 8 (RESIZE) was never negotiated
        for length in (0, 4096):
            reply = c.request(kind, 0, length)
            assert reply.error == NBD_EINVAL, f"command {kind}: {reply.chunks}"
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_unknown_and_inapplicable_flags_are_einval(env, style):
    meta = () if style == "simple" else ("base:allocation",)
    c = env.go(style=style, meta=meta)
    before = env.file(2 * MiB, 4096)
    payload_flag = CMD_FLAG_PAYLOAD_LEN if style == "extended" else 0
    cases = [
        (CMD_READ, 1 << 15, b""), (CMD_READ, 1 << 6, b""), (CMD_READ, CMD_FLAG_NO_HOLE, b""),
        (CMD_READ, CMD_FLAG_REQ_ONE, b""), (CMD_READ, CMD_FLAG_FAST_ZERO, b""),
        (CMD_WRITE, payload_flag | 1 << 10, os.urandom(4096)), (CMD_WRITE, payload_flag | CMD_FLAG_NO_HOLE, os.urandom(4096)),
        (CMD_WRITE, payload_flag | CMD_FLAG_DF, os.urandom(4096)),
        (CMD_FLUSH, 1 << 12, b""), (CMD_TRIM, CMD_FLAG_NO_HOLE, b""), (CMD_CACHE, CMD_FLAG_NO_HOLE, b""),
        (CMD_WRITE_ZEROES, CMD_FLAG_REQ_ONE, b""), (CMD_WRITE_ZEROES, CMD_FLAG_DF, b""),
    ]
    if style != "extended":
        cases.append((CMD_READ, CMD_FLAG_PAYLOAD_LEN, b""))   # PAYLOAD_LEN is not valid with compact headers
    if meta:
        cases += [(CMD_BLOCK_STATUS, CMD_FLAG_DF, b""), (CMD_BLOCK_STATUS, 1 << 14, b"")]
    for kind, flags, payload in cases:
        offset = 2 * MiB if kind == CMD_WRITE else 0
        reply = c.request(kind, offset, 4096 if kind != CMD_FLUSH else 0, flags, payload)
        assert reply.error == NBD_EINVAL, f"{name_of('CMD_', kind)} flags {flags:#x}: {reply.chunks}"
    assert env.file(2 * MiB, 4096) == before, "a rejected write was applied"
    assert c.read(2 * MiB, 4096).data == before
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_fua_accepted_on_every_command(env, style):
    """NBD_CMD_FLAG_FUA 'is valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated, in which
    case the server MUST accept all commands with this bit set'."""
    c = env.go(style=style)
    assert c.tflags & TF_SEND_FUA
    payload_flag = CMD_FLAG_PAYLOAD_LEN if style == "extended" else 0
    data = os.urandom(4096)
    for kind, offset, length, flags, payload in [
        (CMD_WRITE, 2 * MiB, 4096, payload_flag, data), (CMD_READ, 2 * MiB, 4096, 0, b""), (CMD_FLUSH, 0, 0, 0, b""),
        (CMD_CACHE, 0, 4096, 0, b""), (CMD_TRIM, 8 * MiB, 4096, 0, b""), (CMD_WRITE_ZEROES, 9 * MiB, 4096, 0, b""),
    ]:
        if kind == CMD_WRITE and style == "extended":
            continue   # covered by test_extended_write_with_payload_len
        reply = c.request(kind, offset, length, flags | CMD_FLAG_FUA, payload)
        assert reply.error == 0, f"{name_of('CMD_', kind)} with FUA: {reply.chunks}"
        if kind == CMD_WRITE:
            assert env.file(2 * MiB, 4096) == data
        if kind == CMD_READ:
            assert reply.data == env.file(2 * MiB, 4096)
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", CHUNKED)
def test_fua_accepted_on_block_status(env, style):
    c = env.go(style=style, meta=("base:allocation",))
    reply = c.request(CMD_BLOCK_STATUS, 0, 4 * MiB, CMD_FLAG_FUA)
    assert reply.error == 0, f"BLOCK_STATUS with FUA: {reply.chunks}"
    assert reply.extents()[next(iter(c.contexts))][0] == (1 * MiB, 0)
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_zero_length_requests_keep_the_connection(env, style):
    """Length 0: 'the behavior of a server on such a request is unspecified although the server SHOULD NOT
    disconnect'; whatever it answers must still be a well-formed reply."""
    c = env.go(style=style)
    kinds = [CMD_READ, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE]
    if style != "extended":
        kinds.append(CMD_WRITE)   # with extended headers a WRITE always carries a (nonzero) PAYLOAD_LEN
    for kind in kinds:
        c.request(kind, 4096, 0)
    assert c.read(0, 4096).data == env.file(0, 4096)
    env.finish()


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("magic", ["random", "other-style"])
def test_bad_request_magic_dropped(env, style, magic):
    c = env.go(style=style)
    if magic == "random":
        header = struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 4096)
        if style == "extended":
            header += b"\0\0\0\0"
    elif style == "extended":
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096) + b"\0\0\0\0"
    else:
        header = struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096)
    c.send(header)
    assert c.read_until_closed(2) == b""
    env.assert_serving()
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_disconnect_completes_outstanding_requests(env, style):
    """NBD_CMD_DISC: the server MUST handle all outstanding requests, then close; no reply to DISC itself."""
    c = env.go(style=style)
    data = os.urandom(64 * KiB)
    read = c.send_request(CMD_READ, 0, 64 * KiB)
    write = c.send_request(CMD_WRITE, 2 * MiB, len(data), CMD_FLAG_PAYLOAD_LEN if style == "extended" else 0, data)
    flush = c.send_request(CMD_FLUSH)
    c.disconnect()
    replies = {cookie: c.read_reply(cookie) for cookie in (read, write, flush)}
    assert replies[read].data == env.file(0, 64 * KiB)
    assert replies[write].error == 0, replies[write].chunks
    assert replies[flush].error == 0, replies[flush].chunks
    assert c.read_until_closed(2) == b""
    assert env.file(2 * MiB, len(data)) == data
    env.finish()


@pytest.mark.parametrize("style", STYLES)
def test_pipelined_requests_and_odd_cookies(env, style):
    meta = () if style == "simple" else ("base:allocation",)
    c = env.go(style=style, meta=meta)
    rng = random.Random(7)
    cookies = [0, 2**64 - 1, 2**63, 1] + [rng.getrandbits(64) for _ in range(60)]
    expected_writes = {}
    requests = []
    for i, cookie in enumerate(cookies):
        kind = [CMD_READ, CMD_WRITE, CMD_READ, CMD_FLUSH, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS if meta else CMD_CACHE][i % 6]
        offset = 8 * MiB + i * 64 * KiB
        if kind == CMD_WRITE:
            data = rng.randbytes(rng.randrange(1, 64 * KiB))
            expected_writes[offset] = data
            requests.append(c.encode_request(kind, offset, len(data), CMD_FLAG_PAYLOAD_LEN if style == "extended" else 0, data, cookie=cookie)[1])
        elif kind == CMD_READ:
            requests.append(c.encode_request(kind, rng.randrange(0, 3 * MiB), rng.randrange(1, 128 * KiB), cookie=cookie)[1])
        elif kind == CMD_FLUSH:
            requests.append(c.encode_request(kind, cookie=cookie)[1])
        else:
            requests.append(c.encode_request(kind, offset, 64 * KiB, cookie=cookie)[1])
    # Everything is sent at once, from another thread, while the replies are read here.
    sender = threading.Thread(target=c.send, args=(b"".join(requests),), daemon=True)
    sender.start()
    for _ in cookies:
        reply = c.read_reply()
        assert reply.error == 0, reply.chunks
        if reply.request_type == CMD_READ:
            assert reply.data == env.file(reply.offset, reply.length)
    sender.join(5)
    assert not c.pending
    for offset, data in expected_writes.items():
        assert env.file(offset, len(data)) == data
    env.bystander.progress()
    env.finish()


@pytest.mark.parametrize("style", ["simple", "structured"])
def test_write_payload_stall_then_resume(env, style):
    """A client stalling in the middle of a write payload holds only its own connection; when the rest
    arrives the write completes normally."""
    c = env.go(style=style)
    data = os.urandom(1 * MiB)
    cookie = c.send_request(CMD_WRITE, 2 * MiB, len(data), 0, b"")
    c.send(data[:300 * KiB])
    env.bystander.progress(10)
    with connect_go(env.path, "disk0") as other:
        assert other.read(0, 4096).data == env.file(0, 4096)
    time.sleep(0.5)
    assert quiet(c, 0.1), "reply before the payload was complete"
    c.send(data[300 * KiB:])
    reply = c.read_reply(cookie)
    assert reply.error == 0
    assert env.file(2 * MiB, len(data)) == data
    assert c.read(2 * MiB, len(data)).data == data
    env.finish()


def test_stall_mid_request_header(env):
    c = env.go()
    header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 77, 0, 4096)
    c.pending[77] = (CMD_READ, 0, 4096, 0)
    c.send(header[:13])
    env.bystander.progress(10)
    assert quiet(c, 0.3)
    c.send(header[13:])
    assert c.read_reply(77).data == env.file(0, 4096)
    env.finish()


def test_close_mid_payload_frees_the_connection(hostile):
    env = hostile(",max-connections=2")   # the bystander holds the other slot
    deadline = time.monotonic() + 5
    while True:
        try:
            c = env.go()   # start_blockd's readiness probe may hold the slot for a moment after it closed
            break
        except (Closed, AssertionError):
            assert time.monotonic() < deadline, "the second slot never became free"
            time.sleep(0.05)
    c.send_request(CMD_WRITE, 2 * MiB, 1 * MiB, 0, os.urandom(100 * KiB))
    c.close()
    env.bystander.progress()
    deadline = time.monotonic() + 3
    while True:
        try:
            with connect_go(env.path, "disk0") as fresh:
                assert fresh.read(0, 4096).data == env.file(0, 4096)
            break
        except (Closed, AssertionError):
            assert time.monotonic() < deadline, "the connection slot of a client that vanished mid-payload was not freed"
            time.sleep(0.05)
    env.finish()


@pytest.mark.parametrize("style", CHUNKED)
def test_block_status_errors(env, style):
    c = env.go(style=style)   # no meta context selected
    reply = c.request(CMD_BLOCK_STATUS, 0, 4096)
    assert reply.error == NBD_EINVAL and reply.types == [REPLY_TYPE_ERROR]
    c2 = env.go(style=style, meta=("base:allocation",))
    reply = c2.request(CMD_BLOCK_STATUS, 0, 0)   # length 0: blockd answers EINVAL (and does not disconnect)
    assert reply.error == NBD_EINVAL and reply.types == [REPLY_TYPE_ERROR]
    assert c2.read(0, 4096).data == env.file(0, 4096)
    env.finish()


# =================================================================================================
# Extended headers end to end
# =================================================================================================

def file_extents(image: Path, start: int, end: int) -> list[tuple[int, int]]:
    """[(length, base:allocation flags)] of the file from SEEK_DATA/SEEK_HOLE, merged."""
    fd = os.open(image, os.O_RDONLY)
    out: list[tuple[int, int]] = []
    pos = start
    try:
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = end
            if data > pos:
                nxt, flags = min(data, end), STATE_HOLE | STATE_ZERO
            else:
                nxt, flags = min(os.lseek(fd, pos, os.SEEK_HOLE), end), 0
            if out and out[-1][1] == flags:
                out[-1] = (out[-1][0] + nxt - pos, flags)
            else:
                out.append((nxt - pos, flags))
            pos = nxt
    finally:
        os.close(fd)
    return out


def merged(extents) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for length, flags in extents:
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out


def test_extended_headers_end_to_end(env):
    c = env.go(style="extended", meta=("base:allocation",))
    (context,) = c.contexts
    assert c.tflags & TF_SEND_DF and c.tflags & TF_SEND_WRITE_ZEROES

    # READ: one OFFSET_DATA chunk with DONE; the header echoes the request offset (checked by nbdwire).
    reply = c.read(4096 + 3, 8192)
    assert reply.types == [REPLY_TYPE_OFFSET_DATA] and reply.chunks[0].flags & REPLY_FLAG_DONE
    assert reply.chunks[0].offset == 4096 + 3
    assert reply.data == env.file(4096 + 3, 8192)
    # A sparse read of 4 MiB: data and hole chunks, every header carrying the request offset.
    reply = c.read(512 * KiB, 4 * MiB)
    assert REPLY_TYPE_OFFSET_HOLE in reply.types and all(ch.offset == 512 * KiB for ch in reply.chunks)
    assert reply.data == env.file(512 * KiB, 4 * MiB)
    # DF: a single content chunk.
    assert c.read(512 * KiB, 4 * MiB, CMD_FLAG_DF).types == [REPLY_TYPE_OFFSET_DATA]

    # BLOCK_STATUS: BLOCK_STATUS_EXT with 64-bit lengths matching the file (away from the bystander's region).
    reply = c.request(CMD_BLOCK_STATUS, 0, 32 * MiB)
    assert reply.types == [REPLY_TYPE_BLOCK_STATUS_EXT]
    assert struct.unpack_from(">I", reply.chunks[0].payload, 4)[0] == len(reply.extents()[context])
    assert merged(reply.extents()[context]) == file_extents(env.image, 0, 32 * MiB)
    reply = c.request(CMD_BLOCK_STATUS, 1 * MiB + 17, SIZE - 1 * MiB - 17, CMD_FLAG_REQ_ONE)
    assert reply.extents()[context] == [(1 * MiB - 17, STATE_HOLE | STATE_ZERO)]
    assert c.request(CMD_BLOCK_STATUS, SIZE - 4096, 2**40).error == NBD_EINVAL   # beyond the end

    # Commands without data: a single NONE chunk with DONE; errors: a single ERROR chunk.
    for kind, offset, length, flags in [(CMD_WRITE_ZEROES, 2 * MiB, 64 * KiB, 0), (CMD_WRITE_ZEROES, 2 * MiB + 64 * KiB, 4096, CMD_FLAG_NO_HOLE),
                                        (CMD_WRITE_ZEROES, 2 * MiB + 128 * KiB, 4096, CMD_FLAG_FUA),
                                        (CMD_TRIM, 10 * MiB, 1 * MiB, 0), (CMD_FLUSH, 0, 0, 0), (CMD_CACHE, 0, 1 * MiB, 0)]:
        reply = c.request(kind, offset, length, flags)
        assert reply.types == [REPLY_TYPE_NONE] and reply.chunks[0].offset == offset, f"{name_of('CMD_', kind)}: {reply.chunks}"
    for offset, length in [(2 * MiB, 64 * KiB + 4096), (2 * MiB + 128 * KiB, 4096)]:
        assert env.file(offset, length) == bytes(length)
    assert c.read(2 * MiB, 64 * KiB).data == bytes(64 * KiB)

    # 64-bit effect lengths.
    reply = c.request(CMD_WRITE_ZEROES, 0, 2**33)
    assert reply.error == NBD_ENOSPC and reply.types == [REPLY_TYPE_ERROR]
    reply = c.request(CMD_TRIM, 0, 2**40)
    assert reply.error == NBD_EINVAL
    reply = c.read(SIZE - 10, 20)
    assert reply.types == [REPLY_TYPE_ERROR] and reply.error == NBD_EINVAL and reply.chunks[0].offset == SIZE - 10
    env.bystander.progress()
    env.finish()


def test_extended_write_with_payload_len(env):
    """With extended headers 'the flag MUST be set for NBD_CMD_WRITE'; the write must succeed."""
    c = env.go(style="extended")
    data = os.urandom(100 * KiB + 3)
    reply = c.request(CMD_WRITE, 2 * MiB + 1, len(data), CMD_FLAG_PAYLOAD_LEN, data)
    assert reply.error == 0 and reply.types == [REPLY_TYPE_NONE], reply.chunks
    assert env.file(2 * MiB + 1, len(data)) == data
    reply = c.request(CMD_WRITE, 3 * MiB, 4096, CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA, data[:4096])
    assert reply.error == 0, reply.chunks
    assert c.read(2 * MiB + 1, len(data)).data == data
    env.finish()


def test_extended_payload_on_command_without_payload(env):
    """PAYLOAD_LEN on a command that takes no payload: the server SHOULD consume the payload, reply
    NBD_EINVAL, and carry on with the next request."""
    c = env.go(style="extended")
    try:
        reply = c.request(CMD_READ, 0, 512, CMD_FLAG_PAYLOAD_LEN, b"\xee" * 512)
        assert reply.error == NBD_EINVAL, reply.chunks
        assert c.read(0, 4096).data == env.file(0, 4096)
    except Closed as error:
        pytest.fail(f"connection dropped after a READ carrying PAYLOAD_LEN (payload not consumed?): {error}")
    env.finish()
