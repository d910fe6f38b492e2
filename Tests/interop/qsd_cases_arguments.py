"""Differential cases: argument errors of every command both programs have, generated from
qemu-storage-daemon's own query-qmp-schema (read once when the module loads): for each command an
unknown member, each required member missing, and each member with a value of the wrong JSON type.
Every case fails while the arguments are decoded, so none changes the daemon.

Commands whose arguments are a union (blockdev-add, block-export-add, object-add) get hand-written
cases instead, as does qmp_capabilities (which only a new connection may send)."""
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from differential import JSON_NULL, Case, Group, Qmp

# The commands both programs have (blockd's own and QSD-only commands are compared elsewhere).
SHARED = ["block-export-del", "block-set-write-threshold", "block_resize", "blockdev-del", "nbd-server-add",
          "nbd-server-remove", "nbd-server-start", "nbd-server-stop", "query-block", "query-block-exports",
          "query-block-jobs", "query-blockstats", "query-commands", "query-named-block-nodes", "query-qmp-schema",
          "query-version", "quit", "query-jobs", "x-debug-query-block-graph", "object-del"]
UNIONS = ["blockdev-add", "block-export-add", "object-add"]


def qsd_schema() -> dict:
    """QSD's introspection, by type name; empty when qemu-storage-daemon is not installed."""
    if shutil.which("qemu-storage-daemon") is None:
        return {}
    from differential import connect
    with tempfile.TemporaryDirectory() as work:
        sock = Path(work) / "m.sock"
        proc = subprocess.Popen(["qemu-storage-daemon", "--chardev", f"socket,id=m0,path={sock},server=on,wait=off",
                                 "--monitor", "chardev=m0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            with connect(SimpleNamespace(qmp_path=sock)) as q:
                return {entry["name"]: entry for entry in q.execute("query-qmp-schema")}
        finally:
            proc.terminate()
            proc.wait()


def kind(schema: dict, type_name: str) -> str:
    entry = schema[type_name]
    meta = entry["meta-type"]
    return entry["json-type"] if meta == "builtin" else meta


VALID = {"string": "x0", "int": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
# Valid values of members whose decoding would fail first otherwise (an address that is never used:
# every case fails on another member before the server could start).
OVERRIDES = {("nbd-server-start", "addr"): {"type": "unix", "data": {"path": "/nonexistent/qsd-diff.sock"}}}
WRONG = {"string": 1, "int": "x", "number": "x", "boolean": "x", "enum": 1, "array": "x", "object": "x"}


def valid(schema: dict, type_name: str):
    k = kind(schema, type_name)
    if k == "enum":
        entry = schema[type_name]
        return (entry.get("values") or [m["name"] for m in entry["members"]])[0]
    return VALID.get(k, {})


def generated(schema: dict) -> list[Case]:
    cases = []
    for command in SHARED:
        if command not in schema:
            continue
        members = schema[schema[command]["arg-type"]]["members"]
        required = {m["name"]: OVERRIDES.get((command, m["name"]), valid(schema, m["type"]))
                    for m in members if "default" not in m}
        cases.append(Case(f"{command} unknown member", [Qmp(command, {**required, "zz-unknown": 1})]))
        for name in required:
            rest = {k: v for k, v in required.items() if k != name}
            cases.append(Case(f"{command} without {name}", [Qmp(command, rest)]))
        for member in members:
            k = kind(schema, member["type"])
            if k in WRONG:
                cases.append(Case(f"{command} {member['name']} of the wrong type",
                                  [Qmp(command, {**required, member["name"]: WRONG[k]})]))
    return cases


HAND_WRITTEN = [
    Case("arguments not an object", [Qmp("query-version", [])]),
    Case("arguments null", [Qmp("query-version", JSON_NULL)]),
    Case("nbd-server-start max-connections negative", [Qmp("nbd-server-start", {"addr": {}, "max-connections": -1})]),
    Case("nbd-server-start max-connections too big",
         [Qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "/nonexistent/x"}}, "max-connections": 1 << 32})]),
    Case("nbd-server-start addr.data.path of the wrong type",
         [Qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": 5}}})]),
    Case("nbd-server-start addr.data unknown member",
         [Qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "/nonexistent/x", "zz": 1}}})]),
    Case("block-export-del mode not a mode", [Qmp("block-export-del", {"id": "e", "mode": "soft"})]),
    Case("blockdev-add without driver", [Qmp("blockdev-add", {"node-name": "x1"})]),
    Case("blockdev-add unknown driver", [Qmp("blockdev-add", {"driver": "nosuch", "node-name": "x2"})]),
    Case("blockdev-add file without filename", [Qmp("blockdev-add", {"driver": "file", "node-name": "x3"})]),
    Case("blockdev-add unknown member", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x4", "bogus": 1})]),
    Case("blockdev-add nested wrong type", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x5",
                                                                 "cache": {"direct": "yes"}})]),
    Case("blockdev-add size wrong type", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x6", "size": "big"})]),
    Case("blockdev-add read-only wrong type", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x7",
                                                                    "read-only": "yes"})]),
    Case("blockdev-add discard not a mode", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x8",
                                                                  "discard": "sometimes"})]),
    Case("blockdev-add detect-zeroes not a mode", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "x9",
                                                                        "detect-zeroes": "maybe"})]),
    Case("blockdev-add node-name wrong type", [Qmp("blockdev-add", {"driver": "null-co", "node-name": 5})]),
    Case("blockdev-add invalid node-name", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "1x"})]),
    Case("blockdev-add node-name too long", [Qmp("blockdev-add", {"driver": "null-co", "node-name": "a" * 40})]),
    Case("blockdev-add without node-name", [Qmp("blockdev-add", {"driver": "null-co"})]),
    Case("blockdev-add file of raw missing", [Qmp("blockdev-add", {"driver": "raw", "node-name": "x10"})]),
    Case("blockdev-add inline child unknown member", [Qmp("blockdev-add", {
        "driver": "raw", "node-name": "x11", "file": {"driver": "null-co", "bogus": 1}})]),
    Case("blockdev-add file of raw refers to nothing", [Qmp("blockdev-add", {"driver": "raw", "node-name": "x12",
                                                                             "file": "nope"})]),
    Case("blockdev-add file that does not exist", [Qmp("blockdev-add", {
        "driver": "raw", "node-name": "x13", "file": {"driver": "file", "filename": "/nonexistent/img"}})]),
    Case("blockdev-add qcow2 of a raw file", [Qmp("blockdev-add", {
        "driver": "qcow2", "node-name": "x14", "file": {"driver": "null-co"}})]),
    Case("block-export-add without type", [Qmp("block-export-add", {"id": "e1", "node-name": "n0"})]),
    Case("block-export-add unknown type", [Qmp("block-export-add", {"type": "xx", "id": "e2", "node-name": "n0"})]),
    Case("block-export-add without id", [Qmp("block-export-add", {"type": "nbd", "node-name": "n0"})]),
    Case("block-export-add without node-name", [Qmp("block-export-add", {"type": "nbd", "id": "e3"})]),
    Case("block-export-add writable wrong type", [Qmp("block-export-add", {
        "type": "nbd", "id": "e4", "node-name": "n0", "writable": "yes"})]),
    Case("block-export-add unknown member", [Qmp("block-export-add", {
        "type": "nbd", "id": "e5", "node-name": "n0", "bogus": 1})]),
    Case("block-export-add allocation-depth wrong type", [Qmp("block-export-add", {
        "type": "nbd", "id": "e6", "node-name": "n0", "allocation-depth": 1})]),
    Case("block-export-add bitmaps wrong type", [Qmp("block-export-add", {
        "type": "nbd", "id": "e7", "node-name": "n0", "bitmaps": "b"})]),
    Case("object-add without qom-type", [Qmp("object-add", {"id": "o1"})]),
    Case("object-add limits wrong type", [Qmp("object-add", {"qom-type": "throttle-group", "id": "o2", "limits": 1})]),
    Case("object-add limit wrong type", [Qmp("object-add", {"qom-type": "throttle-group", "id": "o3",
                                                            "limits": {"bps-total": "fast"}})]),
    Case("object-add unknown limit", [Qmp("object-add", {"qom-type": "throttle-group", "id": "o4",
                                                         "limits": {"bps-fast": 1}})]),
    Case("object-add unknown member", [Qmp("object-add", {"qom-type": "throttle-group", "id": "o5", "bogus": 1})]),
    Case("qmp_capabilities enable not an array", [Qmp("qmp_capabilities", {"enable": "oob"}, fresh=True)]),
    Case("qmp_capabilities unknown member", [Qmp("qmp_capabilities", {"bogus": 1}, fresh=True)]),
    Case("qmp_capabilities unknown capability", [Qmp("qmp_capabilities", {"enable": ["nosuch"]}, fresh=True)]),
]


def table_cases() -> list[Case]:
    """The argument errors test_qmp_protocol.py holds blockd to, word for word (qmp_client.py)."""
    from qmp_client import ARGUMENT_ERRORS, argument_case_id, with_image
    return [Case(f"table {argument_case_id(case)}",
                 [Qmp(case[0], with_image(case[1], Path("/nonexistent/qsd-diff.img")), fresh=case[0] == "qmp_capabilities")])
            for case in ARGUMENT_ERRORS]


def args(work):
    return ["--blockdev", "driver=null-co,node-name=n0,size=1048576"]


ARGUMENTS = Group("arguments", args, generated(qsd_schema()) + HAND_WRITTEN + table_cases())
