"""A small synchronous QMP client and the launchers the test_qmp_*.py files share.

The client speaks the wire protocol itself (one JSON object per line each way), so that the tests
see exactly what blockd sends: replies keep their `id`, events are queued as they arrive between
replies, and raw bytes can be sent to check how malformed input is answered."""
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import blockd_binary, require

KiB = 1024
MiB = 1024 * 1024


class QMPError(AssertionError):
    """A command answered with an error where success was expected."""


class ErrorReplies:
    """`error` for any client whose `cmd` returns whole replies."""

    def error(self, name: str, arguments: dict | None = None, /, **kwargs) -> dict:
        """Runs a command that must fail; returns its error object ({class, desc})."""
        reply = self.cmd(name, arguments, **kwargs)
        assert "error" in reply, f"{name} {arguments or kwargs} succeeded: {reply}"
        assert set(reply["error"]) == {"class", "desc"}, reply
        return reply["error"]


class QMP(ErrorReplies):
    """One monitor connection: `QMP(path)` for a unix socket, `QMP(("127.0.0.1", port))` for TCP."""

    def __init__(self, address, negotiate: bool = True, timeout: float = 10):
        family = socket.AF_UNIX if isinstance(address, (str, Path)) else socket.AF_INET
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(str(address) if family == socket.AF_UNIX else address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                # A daemon just started: the monitor's socket appears, then listens, a moment after
                # the NBD listener its starter waited for.
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.buffer = b""
        self.events: list[dict] = []
        self.greeting = self.receive()
        if negotiate:
            assert self.execute("qmp_capabilities") == {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def receive(self) -> dict:
        """The next message, events included."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)  # a timeout leaves the buffer as it was
            if not data:
                raise EOFError("monitor closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict:
        """The next reply (return or error); events met on the way are queued."""
        while True:
            message = self.receive()
            if "event" in message:
                self.events.append(message)
                continue
            return message

    def request(self, message) -> dict:
        """Sends any JSON value (a request or not) and returns the reply as it came."""
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.reply()

    def cmd(self, name: str, arguments: dict | None = None, /, **kwargs) -> dict:
        """Runs a command; returns the whole reply ({"return": ...} or {"error": ...})."""
        message = {"execute": name}
        if arguments is not None or kwargs:
            message["arguments"] = {**(arguments or {}), **kwargs}
        return self.request(message)

    def execute(self, name: str, arguments: dict | None = None, /, **kwargs):
        """Runs a command that must succeed; returns its result."""
        reply = self.cmd(name, arguments, **kwargs)
        if "error" in reply:
            raise QMPError(f"{name} {arguments or kwargs} failed: {reply['error']}")
        assert set(reply) == {"return"}, reply
        return reply["return"]

    def event(self, name: str, timeout: float = 5) -> dict:
        """Waits for the next event called `name` (queued or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} event within {timeout} s (got {self.events})")
            self.sock.settimeout(remaining)
            try:
                self.events.append(self.receive())
            except socket.timeout:
                continue
            finally:
                self.sock.settimeout(10)

    def no_event(self, seconds: float = 0.3) -> list[dict]:
        """Collects what arrives within `seconds` (to check that nothing does)."""
        self.sock.settimeout(seconds)
        try:
            while True:
                self.events.append(self.receive())
        except (socket.timeout, EOFError):
            pass
        finally:
            self.sock.settimeout(10)
        return self.events


def wait_for_socket(path: Path, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    """Waits until the unix socket accepts connections (it exists between bind and listen too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(path))
                return
            except ConnectionRefusedError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not appear")


def monitor_args(path: Path, chardev: str = "m0", tcp_port: int | None = None, pretty: bool = False) -> list[str]:
    """--chardev/--monitor options for one monitor on a unix socket (or on 127.0.0.1:tcp_port)."""
    where = f"host=127.0.0.1,port={tcp_port}" if tcp_port else f"path={path}"
    return ["--chardev", f"socket,id={chardev},{where},server=on,wait=off",
            "--monitor", f"chardev={chardev}" + (",pretty=on" if pretty else "")]


class Daemon:
    """A running blockd or qemu-storage-daemon with a QMP monitor on `qmp_path`."""

    def __init__(self, program: str, workdir: Path, args: list[str], name: str, tcp_port: int | None = None):
        self.program = program
        self.workdir = workdir
        self.qmp_path = workdir / f"{name}.sock"
        self.tcp_port = tcp_port
        self.log_path = workdir / f"{name}.log"
        argv = [*args, *monitor_args(self.qmp_path)]
        if tcp_port:
            argv += monitor_args(self.qmp_path, chardev="m1", tcp_port=tcp_port)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([program, *argv], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_socket(self.qmp_path, self.proc)
            if tcp_port:
                deadline = time.monotonic() + 15
                while not _port_open(tcp_port):
                    assert time.monotonic() < deadline and self.proc.poll() is None, self.log_text()
                    time.sleep(0.02)
        except Exception:
            self.stop()
            raise AssertionError(f"{program} did not start:\n{self.log_text()}")

    def qmp(self, negotiate: bool = True) -> QMP:
        return QMP(self.qmp_path, negotiate=negotiate)

    def tcp_qmp(self, negotiate: bool = True) -> QMP:
        return QMP(("127.0.0.1", self.tcp_port), negotiate=negotiate)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM (to this process only) and its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Launcher:
    """Starts daemons in `workdir` and stops them all at the end; blockd must then exit 0."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[Daemon] = []

    def blockd(self, *args: str, name: str = "qmp", tcp_port: int | None = None) -> Daemon:
        daemon = Daemon(blockd_binary(), self.workdir, list(args), name, tcp_port)
        self.started.append(daemon)
        return daemon

    def qsd(self, *args: str, name: str = "qsd") -> Daemon:
        if shutil.which("qemu-storage-daemon") is None:
            require("qemu-storage-daemon")
        daemon = Daemon("qemu-storage-daemon", self.workdir, list(args), name)
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        problems = []
        for daemon in self.started:
            status = daemon.stop()
            if daemon.program != "qemu-storage-daemon" and status != 0:
                problems.append(f"{daemon.program} exited with {status}:\n{daemon.log_text()}")
        self.started.clear()
        assert not problems, "\n".join(problems)


@pytest.fixture
def launcher(tmp_path):
    """A Launcher for this test: launcher.blockd(*args) / launcher.qsd(*args), each with a QMP monitor."""
    launch = Launcher(tmp_path)
    yield launch
    launch.stop_all()


def stats_of(entries: list[dict], key: str, value: str) -> dict:
    """The BlockStats entry of a query-blockstats answer whose `key` ("device" or "node-name") is `value`."""
    found = [e for e in entries if e.get(key) == value]
    assert len(found) == 1, f"expected one entry with {key}={value!r} in {entries}"
    return found[0]


def json_type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    return "object"


def shape(value):
    """The shape of a JSON value: member names and types, recursively, values dropped; the shape of
    a list is the merged shape of its items (members seen in some items only are kept)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        merged = None
        for item in value:
            merged = merge_shapes(merged, shape(item))
        return [merged] if merged is not None else []
    return json_type(value)


def merge_shapes(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: merge_shapes(a.get(key), b.get(key)) for key in {*a, *b}}
    if isinstance(a, list) and isinstance(b, list):
        return [merge_shapes(a[0] if a else None, b[0] if b else None)] if (a or b) else []
    if a == b:
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} == {"int", "number"}:
        return "number"
    raise AssertionError(f"one list holds items of different types: {a} and {b}")


def shape_differences(ours, theirs, path: str = "") -> tuple[list[str], list[str], list[str]]:
    """(only in ours, only in theirs, type mismatches) between two shapes, as dotted paths."""
    only_ours, only_theirs, mismatched = [], [], []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted({*ours, *theirs}):
            sub = f"{path}.{key}" if path else key
            if key not in theirs:
                only_ours.append(sub)
            elif key not in ours:
                only_theirs.append(sub)
            else:
                a, b, c = shape_differences(ours[key], theirs[key], sub)
                only_ours += a
                only_theirs += b
                mismatched += c
    elif isinstance(ours, list) and isinstance(theirs, list):
        if ours and theirs:
            return shape_differences(ours[0], theirs[0], path + "[]")
        if ours != theirs:
            mismatched.append(f"{path}: {'empty' if not ours else 'items'} vs {'empty' if not theirs else 'items'}")
    elif ours != theirs and not (ours is None or theirs is None) and {ours, theirs} != {"int", "number"}:
        # A JSON number without a fraction reads as int: 0 and 0.0 are both a "number" member.
        mismatched.append(f"{path}: {ours} vs {theirs}")
    return only_ours, only_theirs, mismatched


class Schema:
    """Checks JSON values against a query-qmp-schema answer (QEMU's introspection format)."""

    JSON_TYPES = {"string": str, "int": int, "number": (int, float), "boolean": bool, "null": type(None)}

    def __init__(self, entries: list[dict]):
        self.types = {entry["name"]: entry for entry in entries}

    def command(self, name: str) -> dict:
        entry = self.types[name]
        assert entry["meta-type"] == "command", entry
        return entry

    def problems(self, value, type_name: str, path: str = "$") -> list[str]:
        """What is wrong with `value` as a `type_name` (empty when it conforms)."""
        entry = self.types.get(type_name)
        if entry is None:
            return [f"{path}: type {type_name!r} is not in the schema"]
        meta = entry["meta-type"]
        if meta == "builtin":
            if entry["json-type"] == "value":
                return []
            expected = self.JSON_TYPES[entry["json-type"]]
            ok = isinstance(value, expected) and not (isinstance(value, bool) and entry["json-type"] != "boolean")
            return [] if ok else [f"{path}: {value!r} is not a {type_name}"]
        if meta == "enum":
            values = entry.get("values") or [m["name"] for m in entry.get("members", [])]
            return [] if value in values else [f"{path}: {value!r} is not one of {type_name} {values}"]
        if meta == "array":
            if not isinstance(value, list):
                return [f"{path}: {json_type(value)} where an array of {entry['element-type']} belongs"]
            element = entry["element-type"]
            return [p for i, item in enumerate(value) for p in self.problems(item, element, f"{path}[{i}]")]
        if meta == "alternate":
            for member in entry["members"]:
                if not self.problems(value, member["type"], path):
                    return []
            return [f"{path}: {value!r} matches no branch of {type_name}"]
        if meta == "object":
            if not isinstance(value, dict):
                return [f"{path}: {json_type(value)} where object {type_name} belongs"]
            members = {m["name"]: m for m in entry["members"]}
            if "tag" in entry and value.get(entry["tag"]) is not None:
                for variant in entry.get("variants", []):
                    if variant["case"] == value[entry["tag"]]:
                        members.update({m["name"]: m for m in self.types[variant["type"]]["members"]})
            out = []
            for name, member in members.items():
                if name in value:
                    out += self.problems(value[name], member["type"], f"{path}.{name}")
                elif "default" not in member:
                    out.append(f"{path}.{name}: required member of {type_name} is missing")
            out += [f"{path}.{name}: member not in {type_name}" for name in value if name not in members]
            return out
        return [f"{path}: cannot check meta-type {meta}"]

    def check_return(self, command: str, value) -> None:
        problems = self.problems(value, self.command(command)["ret-type"])
        assert not problems, f"{command} answer does not match its schema:\n" + "\n".join(problems)


# Argument errors as today's QEMU reports them, word for word (checked against
# qemu-storage-daemon by test_qmp_differential.py, and against blockd by test_qmp_protocol.py).
# The daemon has a null-co node "n0" and no NBD server; node names are unique per case so that a
# wrongly accepted blockdev-add does not change the outcome of the next case.
UNIX_26 = {"type": "unix", "data": {"path": "/nonexistent/qmp-test-nbd.sock"}}
ARGUMENT_ERRORS = [
    ("blockdev-del", {}, "Parameter 'node-name' is missing"),
    ("blockdev-del", {"node-name": 1}, "Invalid parameter type for 'node-name', expected: string"),
    ("blockdev-del", {"node-name": "n0", "zz": 1}, "Parameter 'zz' is unexpected"),
    ("query-version", {"x": 1}, "Parameter 'x' is unexpected"),
    ("query-blockstats", {"query-nodes": "yes"}, "Invalid parameter type for 'query-nodes', expected: boolean"),
    ("nbd-server-start", {}, "Parameter 'addr' is missing"),
    ("nbd-server-start", {"addr": UNIX_26, "max-connections": -1}, "Parameter 'max-connections' expects uint32_t"),
    ("nbd-server-start", {"addr": UNIX_26, "max-connections": 1 << 32}, "Parameter 'max-connections' expects uint32_t"),
    ("nbd-server-add", {"writable": True}, "Parameter 'device' is missing"),
    ("nbd-server-add", {"device": "n0", "writable": "yes"}, "Invalid parameter type for 'writable', expected: boolean"),
    ("nbd-server-remove", {"name": "x", "mode": "soft"}, "Parameter 'mode' does not accept value 'soft'"),
    ("nbd-server-remove", {"mode": "safe"}, "Parameter 'name' is missing"),
    ("qmp_capabilities", {"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
    ("qmp_capabilities", {"bogus": 1}, "Parameter 'bogus' is unexpected"),
    ("block-export-del", {"id": "e", "mode": "x"}, "Parameter 'mode' does not accept value 'x'"),
    ("block-export-del", {"id": 5}, "Invalid parameter type for 'id', expected: string"),
    ("block-export-add", {"id": "e1", "node-name": "n0"}, "Parameter 'type' is missing"),
    ("block-export-add", {"type": "xx", "id": "e2", "node-name": "n0"}, "Parameter 'type' does not accept value 'xx'"),
    ("block-export-add", {"type": "nbd", "node-name": "n0"}, "Parameter 'id' is missing"),
    ("block-export-add", {"type": "nbd", "id": "e4", "node-name": "n0", "writable": "yes"},
     "Invalid parameter type for 'writable', expected: boolean"),
    ("block-export-add", {"type": "nbd", "id": "e5", "node-name": "n0", "bogus": 1}, "Parameter 'bogus' is unexpected"),
    ("blockdev-add", {"node-name": "x1"}, "Parameter 'driver' is missing"),
    ("blockdev-add", {"driver": "nosuch", "node-name": "x2"}, "Parameter 'driver' does not accept value 'nosuch'"),
    ("blockdev-add", {"driver": "file", "node-name": "x3"}, "Parameter 'filename' is missing"),
    ("blockdev-add", {"driver": "file", "node-name": "x4", "filename": "IMAGE", "bogus": 1},
     "Parameter 'bogus' is unexpected"),
    ("blockdev-add", {"driver": "file", "node-name": "x5", "filename": "IMAGE", "cache": {"direct": "yes"}},
     "Invalid parameter type for 'cache.direct', expected: boolean"),
    ("blockdev-add", {"driver": "null-co", "node-name": "x6", "size": "big"},
     "Invalid parameter type for 'size', expected: integer"),
    ("blockdev-add", {"driver": "null-co", "node-name": "x7", "read-only": "yes"},
     "Invalid parameter type for 'read-only', expected: boolean"),
    ("blockdev-add", {"driver": "file", "node-name": "x8", "filename": "IMAGE", "discard": "sometimes"},
     "Parameter 'discard' does not accept value 'sometimes'"),
]


def argument_case_id(case) -> str:
    command, arguments, _ = case
    return f"{command}:{json.dumps(arguments, sort_keys=True)}"


def with_image(arguments: dict, image: Path) -> dict:
    """The arguments with the placeholder "IMAGE" replaced by a real file."""
    return json.loads(json.dumps(arguments).replace('"IMAGE"', json.dumps(str(image))))


def schema_member(schema: Schema, type_name: str, path: str):
    """The schema member a shape path ("return[].image.dirty-flag", as shape_differences names it)
    leads to from `type_name` (the type of "return"), or None when the schema does not declare it."""
    parts = path.replace("[]", ".[]").split(".")
    assert parts[0] == "return", path
    current, member = type_name, None
    for part in parts[1:]:
        if not part:
            continue
        entry = schema.types.get(current)
        if entry is None:
            return None
        if part == "[]":
            if entry["meta-type"] != "array":
                return None
            current = entry["element-type"]
            continue
        if entry["meta-type"] != "object":
            return None
        members = {m["name"]: m for m in entry["members"]}
        for variant in entry.get("variants", []):
            members.update({m["name"]: m for m in schema.types[variant["type"]]["members"]})
        member = members.get(part)
        if member is None:
            return None
        current = member["type"]
    return member
