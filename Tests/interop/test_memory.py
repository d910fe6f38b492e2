"""Private memory budget of the release blockd (issue #21): resident anonymous memory (RssAnon) at
idle at most 3 MiB, and at most 64 KiB more per connected client, measured beside
qemu-storage-daemon serving the same null device."""
import os
import shutil
import subprocess
import time
from pathlib import Path

from conftest import ROOT, import_or_skip, require, skip_or_fail

# 0.96 MiB measured before the GnuTLS, libcurl (OpenSSL) and libnbd libraries were linked in; 2.7 MiB
# with them (their initialisation at load is the suspect, not yet measured apart).
IDLE_BUDGET_KIB = 3072
PER_CLIENT_BUDGET_KIB = 64
CLIENTS = 32


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/PID/status")


def measure(program: str, sock: Path) -> tuple[int, float]:
    """(idle RssAnon KiB, RssAnon KiB per connected client) of a server exporting a null device."""
    nbd = import_or_skip("nbd")
    proc = subprocess.Popen([program, "--blockdev", "driver=null-co,node-name=n0,size=1048576,read-zeroes=on",
                             "--nbd-server", f"addr.type=unix,addr.path={sock},max-connections=100",
                             "--export", "type=nbd,id=e0,node-name=n0,name=e0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handles = []
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, f"{program} did not listen"
            time.sleep(0.02)
        time.sleep(0.5)
        idle = rss_anon_kib(proc.pid)
        for _ in range(CLIENTS):
            handle = nbd.NBD()
            handle.connect_uri(f"nbd+unix:///e0?socket={sock}")
            assert handle.pread(4096, 0) == bytes(4096)
            handles.append(handle)
        time.sleep(0.5)
        busy = rss_anon_kib(proc.pid)
        return idle, (busy - idle) / CLIENTS
    finally:
        for handle in handles:
            handle.shutdown()
        proc.terminate()
        proc.wait(15)


def test_private_memory_within_budget(tmp_path):
    blockd = ROOT / ".build" / "release" / "blockd"
    if not blockd.exists():
        skip_or_fail("no release build of blockd: scripts/test builds it (swift build -c release --product blockd)")
    require("qemu-storage-daemon")
    idle, per_client = measure(str(blockd), tmp_path / "blockd.sock")
    qsd_idle, qsd_per_client = measure(shutil.which("qemu-storage-daemon"), tmp_path / "qsd.sock")
    report = (f"RssAnon: blockd {idle} KiB idle, {per_client:.1f} KiB per client; "
              f"qemu-storage-daemon {qsd_idle} KiB idle, {qsd_per_client:.1f} KiB per client")
    print(report)
    assert idle <= IDLE_BUDGET_KIB, report
    assert per_client <= PER_CLIENT_BUDGET_KIB, report
