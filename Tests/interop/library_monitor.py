"""A QMP monitor connection through QEMU's own Python library (qemu.qmp's synchronous legacy API,
QEMUMonitorProtocol, the one QEMU's iotests use), with the method names the functional test_qmp_*
files call: execute, error, cmd, event, no_event, close.

The functional tests talk to blockd through it, so that what they check is what a real QMP client
gets. The protocol tests (test_qmp_protocol.py and friends) keep the project's own client in
qmp_client.py, which sends malformed input and sees every byte."""
import asyncio
import os
import time

import pytest

from conftest import skip_or_fail
from qmp_client import ErrorReplies

try:
    from qemu.qmp import ConnectError, ExecuteError
    from qemu.qmp.legacy import QEMUMonitorProtocol
except ImportError as missing:  # pragma: no cover - depends on the machine
    if os.environ.get("CI"):
        pytest.fail(f"required Python package missing in CI: qemu.qmp ({missing}); scripts/setup-deps installs it",
                    pytrace=False)
    skip_or_fail(f"Python package qemu.qmp not installed ({missing}); scripts/setup-deps installs it")


class LibraryMonitor(ErrorReplies):
    """One negotiated monitor connection over qemu.qmp."""

    def __init__(self, path, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while True:
            self.monitor = QEMUMonitorProtocol(str(path))
            try:
                self.greeting = self.monitor.connect(negotiate=True)
                break
            except ConnectError:
                # The socket file exists from bind() on; until listen() a connection is refused.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.monitor.settimeout(timeout)
        self.events: list[dict] = []

    def close(self) -> None:
        self.monitor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def execute(self, name: str, arguments: dict | None = None, /, **kwargs):
        """Runs a command that must succeed (qemu.qmp raises ExecuteError otherwise); returns its result."""
        try:
            return self.monitor.cmd(name, **{**(arguments or {}), **kwargs})
        except ExecuteError as failure:
            raise AssertionError(f"{name} {arguments or kwargs} failed: {failure}") from failure

    def cmd(self, name: str, arguments: dict | None = None, /, **kwargs) -> dict:
        """Runs a command; returns the whole reply ({"return": ...} or {"error": ...})."""
        return self.monitor.cmd_raw(name, {**(arguments or {}), **kwargs})

    def event(self, name: str, timeout: float = 5) -> dict:
        """Waits for the next event called `name` (already received or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} event within {timeout} s (got {self.events})")
            try:
                self.events.append(self.monitor.pull_event(wait=float(remaining)))
            except asyncio.TimeoutError:
                continue

    def no_event(self, seconds: float = 0.3) -> list[dict]:
        """Collects what arrives within `seconds` (to check that nothing does)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self.events.append(self.monitor.pull_event(wait=float(remaining)))
            except asyncio.TimeoutError:
                break
        return self.events


def monitor(daemon) -> LibraryMonitor:
    """A qemu.qmp connection to the monitor of a qmp_client.Daemon."""
    return LibraryMonitor(daemon.qmp_path)
