"""blockd driven by QEMU's own Python QMP library, qemu.qmp (PyPI; scripts/setup-deps installs it):
the asynchronous QMPClient over the unix and TCP monitors, and the synchronous legacy API that
QEMU's iotests use."""
import asyncio
import os

import pytest

from conftest import free_port, make_image, skip_or_fail
from qmp_client import MiB, launcher  # noqa: F401

try:
    from qemu.qmp import EventListener, ExecuteError, QMPClient
    from qemu.qmp.legacy import QEMUMonitorProtocol
except ImportError:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        pytest.fail("required Python package missing in CI: qemu.qmp (scripts/setup-deps installs it)",
                    pytrace=False)
    skip_or_fail("Python package qemu.qmp not installed (scripts/setup-deps)")


def run(coroutine, timeout: float = 20):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def test_qmp_client_runs_commands_and_receives_events(launcher, tmp_path):
    image = make_image(tmp_path / "disk.img", 2 * MiB)
    port = free_port()
    daemon = launcher.blockd(tcp_port=port)

    async def session():
        client = QMPClient("blockd-test")
        await client.connect(str(daemon.qmp_path))
        version = client.greeting.QMP.version
        assert version["qemu"] == {"major": 2, "minor": 6, "micro": 0}
        assert await client.execute("query-version") == dict(version)
        # The 2.6 form creates a device; query-block shows it.
        assert await client.execute("blockdev-add", {"options": {
            "driver": "raw", "id": "dev0", "node-name": "r0",
            "file": {"driver": "file", "node-name": "f0", "filename": str(image)}}}) == {}
        devices = await client.execute("query-block")
        assert [(d["device"], d["inserted"]["node-name"], d["inserted"]["image"]["virtual-size"]) for d in devices] == [
            ("dev0", "r0", 2 * MiB)]
        assert await client.execute("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": MiB}) == {}
        names = {n["node-name"] for n in await client.execute("query-named-block-nodes")}
        assert names == {"r0", "f0", "n0"}
        with pytest.raises(ExecuteError) as failure:
            await client.execute("blockdev-del", {"node-name": "nosuch"})
        assert failure.value.error_class == "GenericError"
        with pytest.raises(ExecuteError) as failure:
            await client.execute("no-such-command", {"device": "dev0"})
        assert failure.value.error_class == "CommandNotFound"

        # Events: BLOCK_EXPORT_DELETED when an export goes away.
        with client.listener("BLOCK_EXPORT_DELETED") as listener:
            addr = {"type": "unix", "data": {"path": str(tmp_path / "nbd.sock")}}
            await client.execute("nbd-server-start", {"addr": addr})
            await client.execute("nbd-server-add", {"device": "dev0", "writable": True})
            exports = await client.execute("query-block-exports")
            assert [e["id"] for e in exports] == ["dev0"]
            await client.execute("nbd-server-remove", {"name": "dev0"})
            event = await asyncio.wait_for(listener.get(), 5)
            assert event["event"] == "BLOCK_EXPORT_DELETED" and event["data"] == {"id": "dev0"}
            assert set(event["timestamp"]) == {"seconds", "microseconds"}

        # A second client on the TCP monitor sees the same daemon.
        other = QMPClient("blockd-test-tcp")
        await other.connect(("127.0.0.1", port))
        assert {n["node-name"] for n in await other.execute("query-named-block-nodes")} == names
        assert await other.execute("query-block-exports") == []

        # quit: the reply, then SHUTDOWN to both clients.
        shutdown = EventListener("SHUTDOWN")
        other.register_listener(shutdown)
        with client.listener("SHUTDOWN") as mine:
            assert await client.execute("quit") == {}
            assert (await asyncio.wait_for(mine.get(), 5))["event"] == "SHUTDOWN"
        assert (await asyncio.wait_for(shutdown.get(), 5))["event"] == "SHUTDOWN"
        other.remove_listener(shutdown)
        for monitor in (client, other):
            try:
                await monitor.disconnect()
            except EOFError:
                pass  # the daemon closed the monitor first, as it exits after quit (QEMU does the same)

    run(session())
    assert daemon.proc.wait(15) == 0


def test_legacy_synchronous_api(launcher, tmp_path):
    daemon = launcher.blockd("--blockdev", "driver=null-co,node-name=n0,size=1M")
    monitor = QEMUMonitorProtocol(str(daemon.qmp_path))
    greeting = monitor.connect(negotiate=True)
    assert greeting["QMP"]["version"]["qemu"]["minor"] == 6
    assert monitor.cmd("query-version")["qemu"]["major"] == 2
    assert monitor.cmd_raw("query-block-jobs") == {"return": []}
    reply = monitor.cmd_raw("blockdev-del", {"node-name": "nosuch"})
    assert reply["error"] == {"class": "GenericError", "desc": "Failed to find node with node-name='nosuch'"}
    with pytest.raises(ExecuteError) as failure:
        monitor.cmd("blockdev-del", **{"node-name": "nosuch"})
    assert failure.value.error_class == "GenericError"
    monitor.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": str(tmp_path / "nbd.sock")}})
    assert monitor.cmd("block-export-add", type="nbd", id="e0", **{"node-name": "n0"}) == {}
    assert monitor.cmd("block-export-del", id="e0") == {}
    event = monitor.pull_event(wait=5.0)
    assert event["event"] == "BLOCK_EXPORT_DELETED" and event["data"] == {"id": "e0"}
    monitor.close()
