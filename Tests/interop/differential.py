"""The machinery of the differential suite (test_qsd_differential.py): run the same cases against
qemu-storage-daemon (the reference) and blockd, and normalise the answers so that only differences
a client could notice remain.

A group is one command line; each program gets one daemon per group, in a work directory of its own,
and runs the group's cases in order on it. A case is a list of steps; a step is a QMP command (its
whole reply is kept) or a function of the side (an NBD client, a file check) returning JSON. The
normalised results are compared case by case.

Normalisation, applied to both sides alike:
  - the work directory becomes "$WORK";
  - generated node names (QEMU's "#block" + counter + two random digits, blockd's "#block" + counter)
    become their place in the graph, "PARENT/ROLE", from x-debug-query-block-graph taken before and
    after the case;
  - event timestamps are dropped; nanosecond timings become 0 or "<ns>" (taken or not); the dates
    of internal snapshots (each side makes its own images) become "<date>";
  - the items of answers whose order the schema leaves open (node and export lists, the graph) are
    sorted; x-debug-query-block-graph's numeric ids become node names.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from conftest import blockd_binary
from qmp_client import QMP, Daemon

AUTO_NAME = re.compile(r"#block\d+")

# Commands whose list answers have no order a client may rely on.
UNORDERED = {"query-named-block-nodes", "query-blockstats", "query-block-exports", "query-block", "query-jobs",
             "query-block-jobs"}


JSON_NULL = object()  # as a Qmp step's arguments: "arguments": null


@dataclass
class Qmp:
    """A QMP step: a command and its arguments (None: no "arguments" member; any JSON value is sent
    as it is). `pick` keeps part of the normalised answer (a function of it); `fresh` runs it on a
    new, un-negotiated connection."""
    command: str
    arguments: object = None
    pick: Callable | None = None
    fresh: bool = False


@dataclass
class Call:
    """A step that is a function of the side (`Side`), returning a JSON value to compare."""
    function: Callable
    label: str = ""


@dataclass
class Case:
    id: str
    steps: list


@dataclass
class Group:
    """One command line (a function of the work directory) with the files it needs (`prepare`) and
    its cases, run in order."""
    name: str
    args: Callable[[Path], list[str]]
    cases: list[Case]
    prepare: Callable[[Path], None] = lambda work: None


@dataclass
class Side:
    """One program running one group."""
    kind: str  # "qsd" or "blockd"
    work: Path
    daemon: Daemon
    qmp: QMP
    names: dict = field(default_factory=dict)  # generated node name -> its place in the graph
    replies: dict = field(default_factory=dict)  # case id -> [(command, raw reply)] of its QMP steps

    def fresh(self) -> QMP:
        """A new monitor connection, not negotiated. A QEMU socket chardev serves one client at a
        time, so the side's own connection is closed first and reopened afterwards (`reopen`)."""
        self.qmp.close()
        return connect(self.daemon, negotiate=False)

    def reopen(self) -> None:
        self.qmp = connect(self.daemon)

    def nbd_uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.work / 'nbd.sock'}"


def connect(daemon: Daemon, negotiate: bool = True) -> QMP:
    """A monitor connection with a patient timeout (the machine may be busy), retried while the
    socket exists but does not listen yet."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return QMP(daemon.qmp_path, negotiate=negotiate, timeout=60)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def program(kind: str) -> str:
    return "qemu-storage-daemon" if kind == "qsd" else blockd_binary()


def start(kind: str, group: Group, work: Path) -> Side:
    work.mkdir(parents=True, exist_ok=True)
    group.prepare(work)
    daemon = Daemon(program(kind), work, group.args(work), name=kind)
    return Side(kind, work, daemon, connect(daemon))


def stop(side: Side) -> int:
    try:
        side.qmp.close()
    finally:
        return side.daemon.stop()


def learn_names(side: Side) -> None:
    """Adds the generated node names of the side's graph to `side.names` (names that went away keep
    the place they had)."""
    reply = side.qmp.cmd("x-debug-query-block-graph")
    if "return" not in reply:
        return
    graph = reply["return"]
    by_id = {node["id"]: node for node in graph["nodes"]}
    parents: dict[int, tuple[int, str]] = {}
    for edge in graph["edges"]:
        if by_id[edge["parent"]]["type"] == "block-driver":
            parents.setdefault(edge["child"], (edge["parent"], edge["name"]))

    def place(node_id: int, depth: int = 0) -> str:
        name = by_id[node_id]["name"]
        if not AUTO_NAME.fullmatch(name) or node_id not in parents or depth > 64:
            return name
        parent, role = parents[node_id]
        return f"{place(parent, depth + 1)}/{role}"

    for node_id, node in by_id.items():
        if AUTO_NAME.fullmatch(node["name"]):
            side.names[node["name"]] = place(node_id)


def normalise(value, side: Side):
    """The value with paths, generated names and timings made comparable (see the module doc)."""
    work = str(side.work)

    def text(s: str) -> str:
        s = s.replace(work, "$WORK")
        return AUTO_NAME.sub(lambda m: side.names.get(m.group(0), "#block?"), s)

    def walk(v, key=None):
        if isinstance(v, dict):
            return {text(k): walk(item, k) for k, item in v.items() if k != "timestamp"}
        if isinstance(v, list):
            return [walk(item) for item in v]
        if isinstance(v, str):
            return text(v)
        if isinstance(key, str) and key.endswith("_ns") and isinstance(v, int) and not isinstance(v, bool):
            return 0 if v == 0 else "<ns>"
        if key in ("date-sec", "date-nsec"):  # when an image's snapshot was taken, per side
            return "<date>"
        return v

    return walk(value)


def graph_by_names(graph: dict) -> dict:
    """x-debug-query-block-graph with its numeric ids replaced by node names, sorted."""
    by_id = {node["id"]: node for node in graph["nodes"]}

    def name(node_id):
        node = by_id[node_id]
        if node["type"] == "block-driver":
            return node["name"]
        children = sorted(by_id[e["child"]]["name"] for e in graph["edges"] if e["parent"] == node_id)
        return f"{node['type']}({node['name']}) of {','.join(children)}"

    nodes = sorted(({"name": name(n["id"]), "type": n["type"]} for n in graph["nodes"]),
                   key=lambda n: json.dumps(n, sort_keys=True))
    edges = sorted(({**e, "parent": name(e["parent"]), "child": name(e["child"])} for e in graph["edges"]),
                   key=lambda e: json.dumps(e, sort_keys=True))
    return {"nodes": nodes, "edges": edges}


def canonical(command: str, reply: dict) -> dict:
    """A normalised reply with unordered lists sorted."""
    if "return" not in reply:
        return reply
    result = reply["return"]
    if command == "x-debug-query-block-graph":
        result = graph_by_names(result)
    elif command in UNORDERED and isinstance(result, list):
        result = sorted(result, key=lambda item: json.dumps(item, sort_keys=True))
    return {**reply, "return": result}


def message(step: Qmp) -> dict:
    if step.arguments is None:
        return {"execute": step.command}
    return {"execute": step.command, "arguments": None if step.arguments is JSON_NULL else step.arguments}


def run_step(side: Side, step) -> object:
    """The raw answer of one step."""
    if isinstance(step, Call):
        return step.function(side)
    if step.fresh:
        q = side.fresh()
        try:
            return q.request(message(step))
        finally:
            q.close()
            side.reopen()
    return side.qmp.request(message(step))


def finish(side: Side, step, raw) -> object:
    """A step's answer normalised (and sorted, and picked, for QMP steps)."""
    answer = normalise(raw, side)
    if isinstance(step, Qmp) and isinstance(answer, dict) and "exception" not in answer:
        answer = canonical(step.command, answer)
        if step.pick and "return" in answer:
            try:
                answer = step.pick(answer)
            except (KeyError, TypeError, IndexError, AttributeError):
                pass  # an answer of an unexpected form is compared whole
    return answer


def run_case(side: Side, case: Case) -> list:
    """The case's normalised results on one side; an exception becomes its description."""
    try:
        learn_names(side)
    except Exception:
        side.reopen()
    raw = []
    for step in case.steps:
        try:
            raw.append(run_step(side, step))
        except Exception as error:  # a crash or a closed monitor is an answer too
            raw.append({"exception": type(error).__name__})
            try:
                side.reopen()
            except Exception:
                pass
    try:
        learn_names(side)
    except Exception:
        pass
    side.replies[case.id] = [(step.command, r) for step, r in zip(case.steps, raw) if isinstance(step, Qmp)]
    return [finish(side, step, r) for step, r in zip(case.steps, raw)]


def run_group(group: Group, root: Path) -> dict[str, dict[str, list]]:
    """{case id: {"qsd": results, "blockd": results, "blockd-replies": [(command, raw reply)]}} for
    every case of the group."""
    out: dict[str, dict[str, list]] = {case.id: {} for case in group.cases}
    for kind in ("qsd", "blockd"):
        work = root / group.name / kind
        if work.exists():
            shutil.rmtree(work)
        side = start(kind, group, work)
        try:
            for case in group.cases:
                out[case.id][kind] = run_case(side, case)
                if kind == "blockd":
                    out[case.id]["blockd-replies"] = side.replies[case.id]
        finally:
            status = stop(side)
        if kind == "blockd":
            assert status == 0, f"blockd exited with {status} after group {group.name}:\n{side.daemon.log_text()}"
    return out


def pick_named(name: str) -> Callable:
    """A `pick` keeping the items of a list answer about node `name` and the nodes generated below it."""
    def pick(answer):
        if "return" not in answer:
            return answer
        keep = [item for item in answer["return"]
                if (item.get("node-name") or "") == name or (item.get("node-name") or "").startswith(name + "/")]
        return {"return": keep}
    return pick
