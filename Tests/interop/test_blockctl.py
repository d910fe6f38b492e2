"""blockctl against a running blockd's monitor: commands as arguments, schema checks, errors, events."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, require


def blockctl_binary() -> str:
    if os.environ.get("BLOCKCTL"):
        return os.environ["BLOCKCTL"]
    blockd = os.environ.get("BLOCKD")
    if blockd and (Path(blockd).parent / "blockctl").exists():
        return str(Path(blockd).parent / "blockctl")
    for kind in ("release", "debug"):
        candidate = ROOT / ".build" / kind / "blockctl"
        if candidate.exists():
            return str(candidate)
    pytest.fail("no blockctl binary: run 'swift build' or set BLOCKCTL")


@pytest.fixture
def monitor(start_blockd, tmp_path):
    qmp = tmp_path / "qmp.sock"
    daemon = start_blockd(None, extra=["--chardev", f"socket,id=m0,path={qmp},server=on,wait=off", "--monitor", "chardev=m0"])
    deadline = time.monotonic() + 5
    while not qmp.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return daemon, qmp


def run(qmp, *words, check=True):
    proc = subprocess.run([blockctl_binary(), "--socket", str(qmp), *words], capture_output=True, text=True, timeout=20)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_query_pretty_and_json(monitor):
    _, qmp = monitor
    exports = json.loads(run(qmp, "query-block-exports").stdout)
    assert exports == [{"id": "e0", "type": "nbd", "node-name": "disk0", "shutting-down": False}]
    reply = json.loads(run(qmp, "--json", "query-version").stdout)
    assert reply["return"]["qemu"] == {"major": 2, "minor": 6, "micro": 0}


def test_arguments_are_typed_from_the_schema(monitor):
    _, qmp = monitor
    assert run(qmp, "blockdev-add", "driver=null-co", "node-name=n1", "size=1048576", "read-zeroes=true").stdout.strip() == "OK"
    # "123" is sent as the string the schema asks for (an integer would be refused).
    assert run(qmp, "nbd-server-add", "device=n1", "name=x1", "description=123", "writable=true").stdout.strip() == "OK"
    names = {e["id"] for e in json.loads(run(qmp, "query-block-exports").stdout)}
    assert names == {"e0", "x1"}
    nodes = {n["node-name"]: n for n in json.loads(run(qmp, "query-named-block-nodes").stdout)}
    assert nodes["n1"]["image"]["virtual-size"] == 1048576


def test_errors_print_class_and_exit_nonzero(monitor):
    _, qmp = monitor
    proc = run(qmp, "blockdev-del", "node-name=disk0", check=False)
    assert proc.returncode == 1
    assert "GenericError: Node disk0 is in use" in proc.stderr
    proc = run(qmp, "blockdev-del", "node-name=nope", check=False)
    assert proc.returncode == 1 and "GenericError: Failed to find node with node-name='nope'" in proc.stderr
    proc = run(qmp, "query-block", "x=1", check=False)
    assert proc.returncode == 2 and "query-block has no argument 'x'" in proc.stderr
    proc = run(qmp, "nbd-server-remove", check=False)
    assert proc.returncode == 2 and "needs argument 'name'" in proc.stderr
    proc = subprocess.run([blockctl_binary(), "--socket", "/nonexistent/qmp.sock", "query-block"], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot connect" in proc.stderr


def test_events_are_followed(monitor):
    _, qmp = monitor
    follower = subprocess.Popen([blockctl_binary(), "--socket", str(qmp), "--json", "--events", "--count", "1", "--timeout", "10"],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        run(qmp, "block-export-del", "id=e0")
        out, _ = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
    event = json.loads(out)
    assert event["event"] == "BLOCK_EXPORT_DELETED" and event["data"] == {"id": "e0"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}


def test_help_from_the_schema(monitor):
    _, qmp = monitor
    overview = subprocess.run([blockctl_binary(), "help"], capture_output=True, text=True, check=True).stdout
    assert "query-blockstats" in overview and "block-export-add" in overview
    detail = subprocess.run([blockctl_binary(), "help", "nbd-server-remove"], capture_output=True, text=True, check=True).stdout
    assert "name=..." in detail and "mode" in detail
    marked = run(qmp, "help").stdout
    # blockd offers every command of its schema: none is marked "-".
    assert "  query-block " in marked and "  block-commit " in marked and "  block-dirty-bitmap-add " in marked
    assert "\n- " not in marked, marked


def test_help_marks_what_a_server_does_not_offer(tmp_path):
    """Against qemu-storage-daemon, which has no 2.6 device commands, those are marked "-"."""
    require("qemu-storage-daemon")
    sock = tmp_path / "qsd.sock"
    qsd = subprocess.Popen(["qemu-storage-daemon", "--chardev", f"socket,id=m0,path={sock},server=on,wait=off",
                            "--monitor", "chardev=m0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        marked = run(sock, "help").stdout
        assert "- block_passwd" in marked and "  query-named-block-nodes " in marked, marked
    finally:
        qsd.terminate()
        qsd.wait(timeout=10)
    assert subprocess.run([blockctl_binary(), "help", "nope"], capture_output=True, text=True).returncode != 0
