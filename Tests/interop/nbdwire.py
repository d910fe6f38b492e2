"""A small raw-socket NBD client for protocol tests (doc/proto.md of NetworkBlockDevice/nbd).

libnbd is a well-behaved client: it will not send malformed messages and (1.14) cannot negotiate
extended headers. This module speaks the wire protocol byte by byte so that tests can send exactly
what they want, including garbage, and check every byte the server sends back.

Everything the server sends is validated as it is parsed (magic numbers, cookies, chunk lengths,
the DONE flag, extended reply offsets); a violation raises `ProtocolViolation` (an AssertionError,
so a test fails with the reason). A closed connection raises `Closed`.

    conn = Conn.connect(path)
    conn.handshake()                                 # greeting + client flags
    conn.opt_structured_reply()                      # -> OptionReply (ACK expected)
    conn.go("disk0")                                 # -> list of replies; enters transmission
    reply = conn.request(CMD_READ, offset=0, length=4096)
    assert reply.error == 0 and reply.data == ...
"""
from __future__ import annotations

import functools
import select
import socket
import struct
import time
from dataclasses import dataclass, field

# --- Magic numbers -------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
EXTENDED_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REPLY_MAGIC = 0x6E8A278C

# --- Handshake flags -----------------------------------------------------------------------------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# --- Options -------------------------------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# --- Option replies ------------------------------------------------------------------------------
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_PLATFORM = 2**31 + 4
REP_ERR_TLS_REQD = 2**31 + 5
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_SHUTDOWN = 2**31 + 7
REP_ERR_BLOCK_SIZE_REQD = 2**31 + 8
REP_ERR_TOO_BIG = 2**31 + 9
REP_ERR_EXT_HEADER_REQD = 2**31 + 10

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- Transmission flags --------------------------------------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11
TF_BLOCK_STAT_PAYLOAD = 1 << 12

# --- Commands and command flags ------------------------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8                         # experimental RESIZE extension (blockd: --export ...,x-resize=on)

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4
CMD_FLAG_PAYLOAD_LEN = 1 << 5

# --- Replies -------------------------------------------------------------------------------------
REPLY_FLAG_DONE = 1 << 0

REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_BLOCK_STATUS_EXT = 6
REPLY_TYPE_ERROR = 2**15 + 1
REPLY_TYPE_ERROR_OFFSET = 2**15 + 2

STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# --- Error values (fixed by the spec, not the host's errno) --------------------------------------
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# Reverse tables for messages. Each family is listed explicitly: some prefixes overlap ("REP_" and "REPLY_").
_FAMILIES = ("OPT_", "REP_", "CMD_", "REPLY_TYPE_", "NBD_E")
_EXCLUDED = ("CMD_FLAG_", "REPLY_FLAG_", "REPLY_TYPE_")
_NAMES: dict[str, dict[int, str]] = {family: {} for family in _FAMILIES}
for _name, _value in list(globals().items()):
    if not isinstance(_value, int):
        continue
    for _family in _FAMILIES:
        if _name.startswith(_family) and (_family == "REPLY_TYPE_" or not _name.startswith(_EXCLUDED)):
            _NAMES[_family][_value] = _name


def name_of(prefix: str, value: int) -> str:
    """A constant's name for messages, e.g. name_of('REP_', 2**31+1) == 'REP_ERR_UNSUP'."""
    return _NAMES.get(prefix, {}).get(value, f"{prefix}?{value:#x}")


class Closed(Exception):
    """The server closed (or reset) the connection."""


class ProtocolViolation(AssertionError):
    """The server sent something the spec does not allow."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolViolation(message)


# --- Option replies ------------------------------------------------------------------------------
@dataclass
class OptionReply:
    option: int
    type: int
    data: bytes

    @property
    def is_error(self) -> bool:
        return bool(self.type & 0x8000_0000)

    def __repr__(self) -> str:
        return f"OptionReply({name_of('OPT_', self.option)}, {name_of('REP_', self.type)}, {self.data[:64]!r})"

    # Decoders for the reply types that carry structure.
    def server(self) -> tuple[str, str]:
        """NBD_REP_SERVER: (name, description)."""
        check(self.type == REP_SERVER and len(self.data) >= 4, f"not a valid NBD_REP_SERVER: {self}")
        (length,) = struct.unpack_from(">I", self.data)
        check(length <= len(self.data) - 4, f"NBD_REP_SERVER name length {length} overruns {len(self.data)}")
        return self.data[4:4 + length].decode(), self.data[4 + length:].decode()

    def info(self) -> tuple[int, bytes]:
        """NBD_REP_INFO: (info type, payload), with the length rules of each known type checked."""
        check(self.type == REP_INFO and len(self.data) >= 2, f"not a valid NBD_REP_INFO: {self}")
        (kind,) = struct.unpack_from(">H", self.data)
        expected = {INFO_EXPORT: 12, INFO_BLOCK_SIZE: 14}.get(kind)
        check(expected is None or len(self.data) == expected,
              f"NBD_REP_INFO type {kind} has length {len(self.data)}, spec says {expected}")
        return kind, self.data[2:]

    def meta_context(self) -> tuple[int, str]:
        """NBD_REP_META_CONTEXT: (context id, name)."""
        check(self.type == REP_META_CONTEXT and len(self.data) >= 4, f"not a valid NBD_REP_META_CONTEXT: {self}")
        (context_id,) = struct.unpack_from(">I", self.data)
        return context_id, self.data[4:].decode()


def info_request(name: str, infos: list[int] | tuple[int, ...] = ()) -> bytes:
    """The data of NBD_OPT_INFO / NBD_OPT_GO."""
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta_context_request(name: str, queries: list[str] | tuple[str, ...]) -> bytes:
    """The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for query in queries:
        q = query.encode()
        out += struct.pack(">I", len(q)) + q
    return out


# --- Transmission replies ------------------------------------------------------------------------
@dataclass
class Chunk:
    """One reply message: a simple reply, or a structured/extended chunk."""
    style: str                 # 'simple', 'structured' or 'extended'
    cookie: int
    flags: int = 0
    type: int = REPLY_TYPE_NONE
    offset: int | None = None  # extended replies only: the request's offset, echoed
    payload: bytes = b""
    error: int = 0             # simple replies: the error field; chunks: the error of an error chunk
    message: str = ""          # error chunks: the human-readable message

    @property
    def done(self) -> bool:
        return self.style == "simple" or bool(self.flags & REPLY_FLAG_DONE)

    @property
    def is_error(self) -> bool:
        return self.style != "simple" and bool(self.type & 0x8000)

    def __repr__(self) -> str:
        if self.style == "simple":
            return f"Simple(cookie={self.cookie}, error={name_of('NBD_E', self.error) if self.error else 0}, {len(self.payload)} bytes)"
        return (f"Chunk({self.style}, cookie={self.cookie}, flags={self.flags:#x}, {name_of('REPLY_TYPE_', self.type)}, "
                f"offset={self.offset}, {len(self.payload)} bytes{', error=' + name_of('NBD_E', self.error) if self.error else ''})")


@dataclass
class Reply:
    """Every message of one request's reply, with what they mean."""
    request_type: int
    offset: int
    length: int
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def error(self) -> int:
        """0 on success, else the error number of the first error (simple reply or error chunk)."""
        for chunk in self.chunks:
            if chunk.error:
                return chunk.error
        return 0

    @property
    def style(self) -> str:
        return self.chunks[0].style

    @property
    def types(self) -> list[int]:
        return [c.type for c in self.chunks if c.style != "simple"]

    def content(self) -> list[tuple[str, int, bytes | int]]:
        """READ content chunks in arrival order: ('data', offset, bytes) or ('hole', offset, length)."""
        out: list[tuple[str, int, bytes | int]] = []
        for chunk in self.chunks:
            if chunk.style == "simple":
                if not chunk.error and chunk.payload:
                    out.append(("data", self.offset, chunk.payload))
            elif chunk.type == REPLY_TYPE_OFFSET_DATA:
                (offset,) = struct.unpack_from(">Q", chunk.payload)
                out.append(("data", offset, chunk.payload[8:]))
            elif chunk.type == REPLY_TYPE_OFFSET_HOLE:
                offset, length = struct.unpack(">QI", chunk.payload)
                out.append(("hole", offset, length))
        return out

    @functools.cached_property
    def data(self) -> bytes:
        """A successful READ reassembled; content chunks must cover the request exactly, without overlap."""
        check(self.error == 0, f"read failed with {name_of('NBD_E', self.error)}")
        buffer = bytearray(self.length)
        spans = []
        for kind, offset, body in self.content():
            length = len(body) if kind == "data" else body
            start = offset - self.offset
            check(length > 0, f"empty content chunk at {offset}")
            check(0 <= start and start + length <= self.length,
                  f"content chunk [{offset}, {offset + length}) outside request [{self.offset}, {self.offset + self.length})")
            spans.append((start, start + length))
            if kind == "data":
                buffer[start:start + length] = body
        covered = 0
        for start, end in sorted(spans):
            check(start >= covered, f"content chunk at {self.offset + start} overlaps an earlier one")
            check(start == covered, f"read reply claims success but leaves [{self.offset + covered}, {self.offset + start}) uncovered")
            covered = end
        check(covered == self.length, f"read reply claims success but leaves [{self.offset + covered}, ...) uncovered")
        return bytes(buffer)

    def extents(self) -> dict[int, list[tuple[int, int]]]:
        """BLOCK_STATUS: context id -> [(length, flags)] from (compact or extended) status chunks."""
        out: dict[int, list[tuple[int, int]]] = {}
        for chunk in self.chunks:
            if chunk.type == REPLY_TYPE_BLOCK_STATUS:
                (context,) = struct.unpack_from(">I", chunk.payload)
                body = chunk.payload[4:]
                out[context] = [struct.unpack_from(">II", body, i) for i in range(0, len(body), 8)]
            elif chunk.type == REPLY_TYPE_BLOCK_STATUS_EXT:
                context, _count = struct.unpack_from(">II", chunk.payload)
                body = chunk.payload[8:]
                out[context] = [struct.unpack_from(">QQ", body, i) for i in range(0, len(body), 16)]
        return out


def _validate_chunk(chunk: Chunk, request: tuple[int, int, int, int]) -> None:
    """Per-chunk rules of doc/proto.md § Structured reply types."""
    kind, offset, length, flags = request
    n = len(chunk.payload)
    if chunk.style == "simple":
        return
    if chunk.style == "extended":
        check(chunk.offset == offset, f"extended reply offset {chunk.offset} does not match the request's {offset}: {chunk}")
    t = chunk.type
    if t == REPLY_TYPE_NONE:
        check(n == 0, f"NONE chunk with payload: {chunk}")
        check(chunk.done, f"NONE chunk without DONE: {chunk}")
    elif t == REPLY_TYPE_OFFSET_DATA:
        check(kind == CMD_READ, f"OFFSET_DATA in reply to {name_of('CMD_', kind)}")
        check(n >= 9, f"OFFSET_DATA shorter than 9 bytes: {chunk}")
    elif t == REPLY_TYPE_OFFSET_HOLE:
        check(kind == CMD_READ, f"OFFSET_HOLE in reply to {name_of('CMD_', kind)}")
        check(n == 12, f"OFFSET_HOLE length {n} != 12")
        check(struct.unpack(">QI", chunk.payload)[1] > 0, "OFFSET_HOLE of size 0")
        check(not flags & CMD_FLAG_DF, "OFFSET_HOLE in reply to a DF read")
    elif t == REPLY_TYPE_BLOCK_STATUS:
        check(kind == CMD_BLOCK_STATUS, f"BLOCK_STATUS chunk in reply to {name_of('CMD_', kind)}")
        check(n >= 12 and (n - 4) % 8 == 0, f"BLOCK_STATUS length {n} is not 4 + 8k (k > 0)")
        body = chunk.payload[4:]
        check(all(struct.unpack_from(">I", body, i)[0] > 0 for i in range(0, len(body), 8)), "extent of length 0")
    elif t == REPLY_TYPE_BLOCK_STATUS_EXT:
        check(chunk.style == "extended", "BLOCK_STATUS_EXT without extended headers")
        check(kind == CMD_BLOCK_STATUS, f"BLOCK_STATUS_EXT chunk in reply to {name_of('CMD_', kind)}")
        check(n >= 24 and (n - 8) % 16 == 0, f"BLOCK_STATUS_EXT length {n} is not 8 + 16k (k > 0)")
        (count,) = struct.unpack_from(">I", chunk.payload, 4)
        check(count == 0 or count * 16 + 8 == n, f"BLOCK_STATUS_EXT descriptor count {count} does not match length {n}")
        body = chunk.payload[8:]
        check(all(struct.unpack_from(">Q", body, i)[0] > 0 for i in range(0, len(body), 16)), "extent of length 0")
    elif t in (REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET):
        minimum = 6 if t == REPLY_TYPE_ERROR else 14
        check(n >= minimum, f"{name_of('REPLY_TYPE_', t)} shorter than {minimum}: {chunk}")
        error, message_length = struct.unpack_from(">IH", chunk.payload)
        check(error != 0, "error chunk with error 0")
        check(message_length <= n - minimum, f"error message length {message_length} overruns chunk of {n}")
        check(message_length <= 4096, "error message longer than 4096 bytes")
        chunk.error = error
        chunk.message = chunk.payload[6:6 + message_length].decode()
    elif t & 0x8000:
        (error,) = struct.unpack_from(">I", chunk.payload) if n >= 4 else (NBD_EIO,)
        chunk.error = error or NBD_EIO
    else:
        raise ProtocolViolation(f"unknown chunk type {t:#x}: {chunk}")


# --- The connection ------------------------------------------------------------------------------
class Conn:
    """One client connection, driven message by message."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.style = "simple"       # reply style negotiated: 'simple', 'structured', 'extended'
        self.size: int | None = None
        self.tflags: int | None = None
        self.handshake_flags: int | None = None
        self.contexts: dict[int, str] = {}
        self.pending: dict[int, tuple[int, int, int, int]] = {}   # cookie -> (type, offset, length, flags)
        self._stash: dict[int, list[Chunk]] = {}   # cookie -> chunks of replies not complete or not asked for yet
        self._next_cookie = 0x1000

    @classmethod
    def connect(cls, path, timeout: float = 5.0) -> "Conn":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        return cls(sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- Bytes ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise Closed(f"send failed: {error}") from error

    def recv_exact(self, count: int) -> bytes:
        chunks = []
        while count > 0:
            try:
                data = self.sock.recv(min(count, 1 << 20))
            except ConnectionResetError as error:
                raise Closed(f"connection reset: {error}") from error
            if not data:
                raise Closed(f"connection closed with {count} bytes still expected")
            chunks.append(data)
            count -= len(data)
        return b"".join(chunks)

    def read_until_closed(self, timeout: float) -> bytes:
        """Everything the server still sends before it closes; TimeoutError when it is still open after `timeout`."""
        deadline = time.monotonic() + timeout
        received = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"server did not close the connection within {timeout}s (got {len(received)} bytes)")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return bytes(received)
            if not data:
                return bytes(received)
            received += data

    def is_closed_by_peer(self, wait: float = 0.0) -> bool:
        """True when the server has closed its end (EOF or reset) within `wait` seconds; consumes nothing else."""
        ready, _, _ = select.select([self.sock], [], [], wait)
        if not ready:
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True

    # --- Handshake -----------------------------------------------------------------------------
    def greeting(self) -> int:
        """Reads NBDMAGIC, IHAVEOPT and the handshake flags; returns the flags."""
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv_exact(18))
        check(magic == NBDMAGIC, f"bad NBDMAGIC {magic:#x}")
        check(opt_magic == IHAVEOPT, f"bad IHAVEOPT {opt_magic:#x} (oldstyle server?)")
        self.handshake_flags = flags
        return flags

    def handshake(self, client_flags: int = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) -> int:
        flags = self.greeting()
        self.send(struct.pack(">I", client_flags))
        return flags

    def send_option(self, option: int, data: bytes = b"", *, length: int | None = None, magic: int = IHAVEOPT) -> None:
        self.send(struct.pack(">QII", magic, option, len(data) if length is None else length) + data)

    def read_option_reply(self, option: int | None = None) -> OptionReply:
        magic, opt, kind, length = struct.unpack(">QIII", self.recv_exact(20))
        check(magic == OPTION_REPLY_MAGIC, f"bad option reply magic {magic:#x}")
        data = self.recv_exact(length) if length else b""
        reply = OptionReply(opt, kind, data)
        if option is not None:
            check(opt == option, f"reply {reply} names option {opt}, expected {option}")
        return reply

    def option(self, option: int, data: bytes = b"") -> list[OptionReply]:
        """Sends one option and reads every reply up to the final one (ACK or an error)."""
        self.send_option(option, data)
        replies = []
        while True:
            reply = self.read_option_reply(option)
            replies.append(reply)
            if reply.type == REP_ACK or reply.is_error:
                return replies
            check(reply.type in (REP_SERVER, REP_INFO, REP_META_CONTEXT), f"unexpected reply type {reply}")

    def opt_structured_reply(self) -> OptionReply:
        (reply,) = self.option(OPT_STRUCTURED_REPLY)
        if reply.type == REP_ACK:
            self.style = "structured"
        return reply

    def opt_extended_headers(self) -> OptionReply:
        (reply,) = self.option(OPT_EXTENDED_HEADERS)
        if reply.type == REP_ACK:
            self.style = "extended"
        return reply

    def opt_list(self) -> list[OptionReply]:
        return self.option(OPT_LIST)

    def opt_set_meta_context(self, export: str, queries) -> list[OptionReply]:
        replies = self.option(OPT_SET_META_CONTEXT, meta_context_request(export, queries))
        self.contexts = {}
        if replies[-1].type == REP_ACK:
            for reply in replies[:-1]:
                context_id, name = reply.meta_context()
                check(context_id not in self.contexts, f"context id {context_id} given twice")
                self.contexts[context_id] = name
        return replies

    def opt_list_meta_context(self, export: str, queries) -> list[OptionReply]:
        return self.option(OPT_LIST_META_CONTEXT, meta_context_request(export, queries))

    def opt_info(self, export: str, infos=()) -> list[OptionReply]:
        return self._info_or_go(OPT_INFO, export, infos)

    def go(self, export: str, infos=()) -> list[OptionReply]:
        """NBD_OPT_GO; on ACK the connection is in transmission phase."""
        return self._info_or_go(OPT_GO, export, infos)

    def _info_or_go(self, option: int, export: str, infos) -> list[OptionReply]:
        replies = self.option(option, info_request(export, infos))
        if replies[-1].type == REP_ACK:
            exports = [r.info()[1] for r in replies[:-1] if r.info()[0] == INFO_EXPORT]
            check(len(exports) == 1, f"{name_of('OPT_', option)} succeeded with {len(exports)} NBD_INFO_EXPORT replies")
            self.size, self.tflags = struct.unpack(">QH", exports[0])
            check(bool(self.tflags & TF_HAS_FLAGS), "NBD_FLAG_HAS_FLAGS clear")
        return replies

    def export_name(self, export: str, no_zeroes: bool) -> bytes:
        """NBD_OPT_EXPORT_NAME; returns the raw reply (size, flags and, without NO_ZEROES, 124 zeroes)."""
        self.send_option(OPT_EXPORT_NAME, export.encode())
        raw = self.recv_exact(10 if no_zeroes else 134)
        self.size, self.tflags = struct.unpack_from(">QH", raw)
        return raw

    # --- Transmission --------------------------------------------------------------------------
    def cookie(self) -> int:
        self._next_cookie += 1
        return self._next_cookie

    def send_request(self, kind: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"",
                     *, cookie: int | None = None, extended: bool | None = None, magic: int | None = None,
                     track: bool = True) -> int:
        """Sends one request header (compact or extended, per negotiation unless `extended` says) and its payload.
        For WRITE `length` defaults to len(payload)."""
        cookie, raw = self.encode_request(kind, offset, length, flags, payload, cookie=cookie, extended=extended,
                                          magic=magic, track=track)
        self.send(raw)
        return cookie

    def encode_request(self, kind: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"",
                       *, cookie: int | None = None, extended: bool | None = None, magic: int | None = None,
                       track: bool = True) -> tuple[int, bytes]:
        """(cookie, bytes) of one request, registered as pending but not sent: to pipeline many requests, send
        their bytes from another thread while reading the replies (a client that stops reading can deadlock)."""
        if extended is None:
            extended = self.style == "extended"
        if kind == CMD_WRITE and length == 0:
            length = len(payload)
        cookie = self.cookie() if cookie is None else cookie
        if extended:
            header = struct.pack(">IHHQQQ", EXTENDED_REQUEST_MAGIC if magic is None else magic, flags, kind, cookie, offset, length)
        else:
            header = struct.pack(">IHHQQI", REQUEST_MAGIC if magic is None else magic, flags, kind, cookie, offset, length & 0xFFFFFFFF)
        if track and kind != CMD_DISC:
            self.pending[cookie] = (kind, offset, length, flags)
        return cookie, header + payload

    def read_chunk(self) -> Chunk:
        """Reads one reply message of whatever style is on the wire, validating it against its request."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            check(self.style != "extended", "simple reply after extended headers were negotiated")
            error, cookie = struct.unpack(">IQ", self.recv_exact(12))
            check(cookie in self.pending, f"simple reply for unknown cookie {cookie:#x}")
            kind, offset, length, flags = self.pending[cookie]
            check(not (self.style == "structured" and kind == CMD_READ), "simple reply to NBD_CMD_READ with structured replies")
            payload = self.recv_exact(length) if kind == CMD_READ and error == 0 else b""
            return Chunk("simple", cookie, error=error, payload=payload)
        if magic == STRUCTURED_REPLY_MAGIC:
            check(self.style == "structured", f"structured reply chunk with {self.style} replies negotiated")
            flags, kind, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
            chunk = Chunk("structured", cookie, flags, kind)
        elif magic == EXTENDED_REPLY_MAGIC:
            check(self.style == "extended", f"extended reply chunk with {self.style} replies negotiated")
            flags, kind, cookie, offset, length = struct.unpack(">HHQQQ", self.recv_exact(28))
            check(length < 1 << 32, f"extended reply length {length} is absurd")
            chunk = Chunk("extended", cookie, flags, kind, offset)
        else:
            raise ProtocolViolation(f"bad reply magic {magic:#x}")
        check(cookie in self.pending, f"reply chunk for unknown cookie {cookie:#x}: {chunk}")
        chunk.payload = self.recv_exact(length) if length else b""
        _validate_chunk(chunk, self.pending[cookie])
        return chunk

    def read_reply(self, cookie: int | None = None) -> Reply:
        """Reads messages until one reply is complete (its DONE chunk). With `cookie`, chunks of other
        replies are stashed for later calls."""
        stash = self._stash
        while True:
            ready = [c for c, chunks in stash.items() if chunks and chunks[-1].done and (cookie is None or c == cookie)]
            if ready:
                done = ready[0]
                chunks = stash.pop(done)
                kind, offset, length, flags = self.pending.pop(done)
                return self._finish(Reply(kind, offset, length, chunks), flags)
            chunk = self.read_chunk()
            stash.setdefault(chunk.cookie, []).append(chunk)

    def _finish(self, reply: Reply, flags: int) -> Reply:
        content = [c for c in reply.chunks if c.type in (REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE) and c.style != "simple"]
        if flags & CMD_FLAG_DF:
            check(len(content) <= 1, f"DF read answered with {len(content)} content chunks")
        if reply.request_type == CMD_BLOCK_STATUS and reply.error == 0:
            status = [c for c in reply.chunks if c.type in (REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_BLOCK_STATUS_EXT)]
            ids = [struct.unpack_from(">I", c.payload)[0] for c in status]
            check(sorted(ids) == sorted(self.contexts), f"block status chunks for contexts {ids}, negotiated {sorted(self.contexts)}")
        if reply.request_type == CMD_READ and reply.error == 0:
            _ = reply.data  # coverage and overlap rules
        return reply

    def request(self, kind: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b"", **kw) -> Reply:
        cookie = self.send_request(kind, offset, length, flags, payload, **kw)
        return self.read_reply(cookie)

    # Conveniences.
    def read(self, offset: int, length: int, flags: int = 0) -> Reply:
        return self.request(CMD_READ, offset, length, flags)

    def write(self, offset: int, data: bytes, flags: int = 0) -> Reply:
        if self.style == "extended":
            flags |= CMD_FLAG_PAYLOAD_LEN
        return self.request(CMD_WRITE, offset, len(data), flags, data)

    def disconnect(self) -> None:
        self.send_request(CMD_DISC)


def connect_go(path, export: str = "disk0", *, style: str = "structured", meta: tuple[str, ...] = (),
               timeout: float = 5.0) -> Conn:
    """A connection in transmission phase: handshake, the reply style asked for, meta contexts, GO."""
    conn = Conn.connect(path, timeout)
    conn.handshake()
    if style == "structured":
        check(conn.opt_structured_reply().type == REP_ACK, "structured replies refused")
    elif style == "extended":
        check(conn.opt_extended_headers().type == REP_ACK, "extended headers refused")
    if meta:
        replies = conn.opt_set_meta_context(export, meta)
        check(replies[-1].type == REP_ACK, f"SET_META_CONTEXT failed: {replies}")
    replies = conn.go(export)
    check(replies[-1].type == REP_ACK, f"GO {export!r} failed: {replies}")
    return conn
