"""blockd against qemu-storage-daemon 7.2, case by case: the same command line and the same QMP
commands (and NBD clients) on both, answers normalised (differential.py) and compared. QSD is the
reference. A case whose answers differ fails unless it is listed in INTENTIONAL (blockd differs on
purpose; the reason is given, and the case must still differ) or PENDING (a difference someone is
working on; it must still differ, so that fixing it makes the entry go).

BLOCKD_DIFF_TABLE=path writes the outcome of every case (equal / differs / by design) as Markdown
tables; BLOCKD_DIFF_TABLE=docs/compatibility.md refreshes the tables of that document in place."""
import json
import os

import pytest

from conftest import require
from differential import Case, Group, run_group
from qsd_cases_arguments import ARGUMENTS
from qsd_cases_errors import ERRORS
from qsd_cases_exports import EXPORTS, STATS
from qsd_cases_graph import GRAPH
from qsd_cases_protocol import PROTOCOL

GROUPS: list[Group] = [ERRORS, GRAPH, EXPORTS, STATS, ARGUMENTS, PROTOCOL]

RESIZE_UNDER_EXPORTS = ("blockd lets block_resize change the size of a node under a live export (clients that reconnect "
                        "see the new size, docs/compatibility.md); QEMU's NBD exports unshare the resize permission")
INTERFACE_2_6 = "blockd implements the QEMU 2.6 interface and says so: version 2.6.0, package 'blockd VERSION'"

# Cases where blockd answers differently on purpose, with the reason (docs/compatibility.md repeats it).
INTENTIONAL = {
    "errors:block_resize exported node": RESIZE_UNDER_EXPORTS,
    "errors:block_resize file under exported raw": RESIZE_UNDER_EXPORTS + "; a raw node without offset or size "
        "passes the resize through, so resizing its file is resizing the export",
    "errors:x-debug-query-block-graph": "blockd's exports share the resize permission (see block_resize), so the "
        "export's edge and the raw node's edge below it list 'resize' in shared-perm",
    "errors:block_passwd": "block_passwd is part of blockd's 2.6 contract; it fails with the message QEMU 2.10 to 4.1 "
        "gave (passwords are secret objects now), where QEMU 7.2, which removed the command, does not know it",
    "arguments:qmp_capabilities unknown capability": "QEMU 7.2 names the bad list element 'null' (a quirk of its "
        "input visitor); blockd names it by its path, 'enable[0]'",
    "protocol:greeting version": INTERFACE_2_6,
    "protocol:query-version": INTERFACE_2_6,
    "protocol:query-commands": "blockd has 2.6's device commands (tray and medium, block_set_io_throttle, stop, cont, "
        "x-blockdev-del, block_passwd) and its x-blockd-* commands; qemu-storage-daemon has job, bitmap, snapshot, "
        "chardev, QOM and transaction commands blockd does not have yet",
    "protocol:quit": "blockd announces its exit with 2.6's SHUTDOWN event; qemu-storage-daemon 7.2 sends no event",
    "graph:block_resize of a null-co node": "blockd resizes null-co nodes (test exports that grow); QEMU's null "
        "driver cannot be resized",
    "exports:export of a file whose size is not a multiple of 512": "blockd serves a file's exact size; QEMU rounds "
        "it up to whole 512-byte sectors and reads zeroes past the end of the file (query-named-block-nodes "
        "reports QEMU's sector-rounded virtual-size in both)",
}

# Differences that remain to be fixed, with who or what they wait for.
PENDING: dict[str, str] = {
}

# Members blockd sends because its QEMU 2.6 contract requires them and QEMU 7.2 no longer does: they
# are taken out of blockd's answers before comparing (the seed's 2.6 forms are accepted in addition).
ACCEPTED_2_6 = {
    "encryption_key_missing": "required in 2.6's BlockDeviceInfo; QEMU 7.2 dropped it with the old encryption",
}


def without_2_6_members(value):
    if isinstance(value, dict):
        return {k: without_2_6_members(v) for k, v in value.items() if k not in ACCEPTED_2_6}
    if isinstance(value, list):
        return [without_2_6_members(v) for v in value]
    return value

CASES = [(group, case) for group in GROUPS for case in group.cases]
assert len({f"{g.name}:{c.id}" for g, c in CASES}) == len(CASES), "case ids must be unique"


def case_id(group: Group, case: Case) -> str:
    return f"{group.name}:{case.id}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    require("qemu-storage-daemon", "qemu-img")
    root = tmp_path_factory.mktemp("qsd-diff")
    cache: dict[str, dict] = {}
    table: dict[str, str] = {}

    def outcome(group: Group, case: Case):
        if group.name not in cache:
            cache[group.name] = run_group(group, root)
        return cache[group.name][case.id]

    yield outcome, table
    path = os.environ.get("BLOCKD_DIFF_TABLE")
    if path:
        write_table(path, table)


BEGIN, END = "<!-- BEGIN generated case table -->", "<!-- END generated case table -->"


def write_table(path: str, table: dict[str, str]) -> None:
    """Writes the outcome of every case as Markdown; into a file holding the BEGIN/END markers (such
    as docs/compatibility.md), between them."""
    counts = {kind: sum(1 for v in table.values() if v == kind) for kind in ("equal", "differs", "by design")}
    lines = [BEGIN, "", f"{len(table)} cases: {counts['equal']} equal, {counts['by design']} differ by design, "
             f"{counts['differs']} differ (pending).", ""]
    for group in GROUPS:
        keys = [case_id(group, c) for c in group.cases if case_id(group, c) in table]
        if not keys:
            continue
        lines += [f"### {group.name}", "", "| case | outcome | reason |", "|---|---|---|"]
        for key in keys:
            reason = (INTENTIONAL.get(key) or PENDING.get(key) or "").replace("|", "\\|")
            lines.append(f"| `{key.split(':', 1)[1].replace('|', '/')}` | {table[key]} | {reason} |")
        lines.append("")
    lines.append(END)
    text = "\n".join(lines) + "\n"
    if os.path.exists(path):
        old = open(path).read()
        if BEGIN in old and END in old:
            text = old[:old.index(BEGIN)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize("group,case", CASES, ids=[case_id(g, c) for g, c in CASES])
def test_same_answer_as_qemu_storage_daemon(outcomes, group, case):
    outcome, table = outcomes
    key = case_id(group, case)
    results = outcome(group, case)
    theirs, ours = results["qsd"], without_2_6_members(results["blockd"])
    same = json.dumps(theirs, sort_keys=True) == json.dumps(ours, sort_keys=True)
    table[key] = "equal" if same else "by design" if key in INTENTIONAL else "differs"
    detail = (f"\nqsd:    {json.dumps(theirs, sort_keys=True)[:3000]}"
              f"\nblockd: {json.dumps(ours, sort_keys=True)[:3000]}")
    if key in INTENTIONAL:
        assert not same, f"{key} is listed as an intentional difference but the answers are equal now{detail}"
    elif key in PENDING:
        assert not same, f"{key} is listed as pending but the answers are equal now: drop it from PENDING{detail}"
    else:
        assert same, f"{key}: blockd answers differently from qemu-storage-daemon{detail}"


@pytest.fixture(scope="module")
def blockd_schema(tmp_path_factory):
    from qmp_client import Launcher, Schema
    launch = Launcher(tmp_path_factory.mktemp("schema"))
    try:
        with launch.blockd().qmp() as q:
            return Schema(q.execute("query-qmp-schema"))
    finally:
        launch.stop_all()


@pytest.mark.parametrize("group", GROUPS, ids=[g.name for g in GROUPS])
def test_blockd_answers_match_its_own_schema(outcomes, blockd_schema, group):
    """Every successful answer blockd gave in the suite conforms to the schema it publishes."""
    outcome, _ = outcomes
    problems = []
    for case in group.cases:
        for command, reply in outcome(group, case)["blockd-replies"]:
            if not isinstance(reply, dict) or "return" not in reply or command not in blockd_schema.types:
                continue
            found = blockd_schema.problems(reply["return"], blockd_schema.command(command)["ret-type"])
            problems += [f"{case.id}: {command}: {p}" for p in found]
    assert problems == []


# The commands only blockd has, and why; qemu-storage-daemon's commands blockd lacks are later work
# (the protocol:query-commands case lists them in docs/compatibility.md).
BLOCKD_ONLY_COMMANDS = {
    "block_passwd": "2.6 contract; fails as later QEMU did",
    "block_set_io_throttle": "2.6 device throttling (qemu-storage-daemon throttles with throttle nodes only)",
    "stop": "2.6 run state: pauses every device", "cont": "2.6 run state: resumes them",
    "x-blockdev-del": "2.6's experimental node and device removal",
    "blockdev-open-tray": "tray and medium of the devices exports stand for",
    "blockdev-close-tray": "as above", "blockdev-remove-medium": "as above", "blockdev-insert-medium": "as above",
    "x-blockdev-remove-medium": "as above", "x-blockdev-insert-medium": "as above", "blockdev-change-medium": "as above",
    "x-blockdev-create": "blockdev-create under its QEMU 2.12 name",
    "query-blockd-metrics": "blockd's own: the state of its Prometheus endpoint (x-blockd-metrics-start/stop)",
}


def test_commands_only_blockd_has_are_the_documented_ones(outcomes):
    outcome, _ = outcomes
    from qsd_cases_protocol import PROTOCOL
    case = next(c for c in PROTOCOL.cases if c.id == "query-commands")
    results = outcome(PROTOCOL, case)
    ours, theirs = set(results["blockd"][0]), set(results["qsd"][0])
    extra = {name for name in ours - theirs if not name.startswith("x-blockd-")}
    assert extra == set(BLOCKD_ONLY_COMMANDS)


def test_the_lists_name_only_existing_cases():
    known = {case_id(g, c) for g, c in CASES}
    assert set(INTENTIONAL) <= known, set(INTENTIONAL) - known
    assert set(PENDING) <= known, set(PENDING) - known
    assert not set(INTENTIONAL) & set(PENDING)


def test_suite_size():
    assert len(CASES) >= 150, len(CASES)
