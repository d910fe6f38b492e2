"""Error policies of every block job (issue #13): on-error for stream and commit,
on-source-error / on-target-error for mirror and backup. blkdebug injects one failure (ENOSPC or
EIO, `once`) into the job's target or source; the replies, the BLOCK_JOB_ERROR events (operation,
action), the status sequence and the io-status while stopped are compared with
qemu-storage-daemon's, and the data the job left behind with qemu-img compare."""
import json
import time
from pathlib import Path

import pytest

from conftest import require
from qmp_client import launcher  # noqa: F401 (fixture)
from test_jobs import SIZE, drop_drain_pauses, run, start

require("qemu-img", "qemu-io")

ENOSPC, EIO = 28, 5


def job_trace_events(qmp, *until: str, timeout: float = 20) -> list:
    """Events as labels (statuses, BLOCK_JOB_ERROR with operation and action) until each label of
    `until` was seen, in that order; drain pauses (paused/running pairs QEMU sends when a command
    drains the node) are dropped."""
    trace = []
    wanted = list(until)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        qmp.no_event(0.05)
        while qmp.events:
            event = qmp.events.pop(0)
            name = event["event"]
            data = event["data"]
            if name == "JOB_STATUS_CHANGE":
                label = f"status:{data['status']}"
            elif name == "BLOCK_JOB_ERROR":
                label = f"BLOCK_JOB_ERROR:{data['operation']}:{data['action']}"
            elif name == "BLOCK_JOB_COMPLETED" and "error" in data:
                label = "BLOCK_JOB_COMPLETED:error"
            else:
                label = name
            trace.append(label)
            if wanted and (label == wanted[0] or name == wanted[0]):
                wanted.pop(0)
                if not wanted:
                    return drop_drain_pauses(trace)
    raise AssertionError(f"no {until} within {timeout} s: {trace}")


def io_state(qmp) -> list:
    return [{k: job[k] for k in ("device", "io-status", "paused", "status")} for job in qmp.execute("query-block-jobs")]


def flaky_raw(qmp, work: Path, name: str, errno: int, event: str = "pwritev", fill: bool = False) -> Path:
    """A raw node `name` on a blkdebug over a new SIZE file whose first `event` fails with `errno`."""
    image = work / f"{name}.raw"
    run("qemu-img", "create", "-f", "raw", str(image), str(SIZE))
    if fill:
        run("qemu-io", "-f", "raw", "-c", f"write -P 0x77 0 {SIZE}", str(image))
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": name,
                                 "file": {"driver": "blkdebug",
                                          "inject-error": [{"event": event, "errno": errno, "once": True}],
                                          "image": {"driver": "file", "filename": str(image)}}})
    return image


def backup_stop_script(qmp, work: Path, errno: int, policy: str) -> list:
    flaky_raw(qmp, work, "flaky", errno)
    results = [qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "flaky", "sync": "full",
                                           "on-target-error": policy})]
    results.append(job_trace_events(qmp, "BLOCK_JOB_ERROR", "status:paused"))
    results.append(io_state(qmp))
    results.append(qmp.cmd("block-job-resume", device="b1"))
    results.append(job_trace_events(qmp, "status:null"))
    return results


def backup_report_script(qmp, work: Path) -> list:
    flaky_raw(qmp, work, "flaky", EIO)
    results = [qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "flaky", "sync": "full",
                                           "on-target-error": "report"})]
    results.append(job_trace_events(qmp, "status:null"))
    return results


def backup_enospc_policy_on_eio_script(qmp, work: Path) -> list:
    """enospc stops only on ENOSPC: an EIO is reported."""
    flaky_raw(qmp, work, "flaky", EIO)
    results = [qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "flaky", "sync": "full",
                                           "on-target-error": "enospc"})]
    results.append(job_trace_events(qmp, "status:null"))
    return results


def mirror_stop_script(qmp, work: Path, policy: str, errno: int) -> list:
    flaky_raw(qmp, work, "flaky", errno)
    results = [qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "flaky", "sync": "full",
                                           "on-target-error": policy})]
    if policy in ("stop", "enospc"):
        results.append(job_trace_events(qmp, "BLOCK_JOB_ERROR", "status:paused"))
        results.append(io_state(qmp))
        results.append(qmp.cmd("block-job-resume", device="m1"))
    results.append(job_trace_events(qmp, "BLOCK_JOB_READY"))
    results.append(io_state(qmp))
    results.append(qmp.cmd("block-job-cancel", device="m1"))
    results.append(job_trace_events(qmp, "status:null"))
    return results


def commit_script(qmp, work: Path, policy: str) -> list:
    """base.raw (blkdebug: its first write fails with EIO) <- mid.qcow2 <- top.qcow2, committing
    mid into base (not the active layer), then top into base (active commit)."""
    image = work / "base.raw"
    run("qemu-img", "create", "-f", "raw", str(image), str(SIZE))
    run("qemu-img", "create", "-f", "qcow2", "-b", str(image), "-F", "raw", str(work / "mid.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 1M 2M", str(work / "mid.qcow2"))
    run("qemu-img", "create", "-f", "qcow2", "-b", str(work / "mid.qcow2"), "-F", "qcow2", str(work / "top.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 4M 1M", str(work / "top.qcow2"))
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": "base", "read-only": False,
                                 "file": {"driver": "blkdebug", "node-name": "dbg",
                                          "inject-error": [{"event": "pwritev", "errno": EIO, "once": True}],
                                          "image": {"driver": "file", "filename": str(image)}}})
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "mid", "backing": "base",
                                 "file": {"driver": "file", "filename": str(work / "mid.qcow2")}})
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": "mid",
                                 "file": {"driver": "file", "filename": str(work / "top.qcow2")}})
    results = [qmp.cmd("block-commit", {"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base",
                                        "on-error": policy})]
    if policy == "stop":
        results.append(job_trace_events(qmp, "BLOCK_JOB_ERROR", "status:paused"))
        results.append(io_state(qmp))
        results.append(qmp.cmd("block-job-resume", device="c1"))
    results.append(job_trace_events(qmp, "status:null"))
    return results


def active_commit_script(qmp, work: Path) -> list:
    """top.qcow2 <- a raw base whose first write fails with ENOSPC; active commit, on-error=enospc."""
    image = work / "base.raw"
    run("qemu-img", "create", "-f", "raw", str(image), str(SIZE))
    run("qemu-img", "create", "-f", "qcow2", "-b", str(image), "-F", "raw", str(work / "top.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x31 4M 1M", str(work / "top.qcow2"))
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": "base", "read-only": False,
                                 "file": {"driver": "blkdebug",
                                          "inject-error": [{"event": "pwritev", "errno": ENOSPC, "once": True}],
                                          "image": {"driver": "file", "filename": str(image)}}})
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": "base",
                                 "file": {"driver": "file", "filename": str(work / "top.qcow2")}})
    results = [qmp.cmd("block-commit", {"job-id": "c1", "device": "top", "on-error": "enospc"})]
    results.append(job_trace_events(qmp, "BLOCK_JOB_ERROR", "status:paused"))
    results.append(io_state(qmp))
    results.append(qmp.cmd("block-job-resume", device="c1"))
    results.append(job_trace_events(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-complete", device="c1"))
    results.append(job_trace_events(qmp, "status:null"))
    return results


def stream_script(qmp, work: Path, policy: str) -> list:
    """base.qcow2 (blkdebug: its first data read fails with EIO) <- top.qcow2, streamed into top."""
    run("qemu-img", "create", "-f", "qcow2", str(work / "base.qcow2"), str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 2M", str(work / "base.qcow2"))
    run("qemu-img", "create", "-f", "qcow2", "-b", str(work / "base.qcow2"), "-F", "qcow2", str(work / "top.qcow2"))
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                 "file": {"driver": "blkdebug",
                                          "inject-error": [{"event": "read_aio", "errno": EIO, "once": True}],
                                          "image": {"driver": "file", "filename": str(work / "base.qcow2")}}})
    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": "base",
                                 "file": {"driver": "file", "filename": str(work / "top.qcow2")}})
    results = [qmp.cmd("block-stream", {"job-id": "s1", "device": "top", "on-error": policy})]
    if policy == "stop":
        results.append(job_trace_events(qmp, "BLOCK_JOB_ERROR", "status:paused"))
        results.append(io_state(qmp))
        results.append(qmp.cmd("block-job-resume", device="s1"))
    results.append(job_trace_events(qmp, "status:null"))
    return results


CASES = {
    # case: (script, images equal to each other in blockd's work dir, images blockd and qsd leave the same)
    "backup-enospc": (lambda q, w: backup_stop_script(q, w, ENOSPC, "enospc"), [("src.raw", "flaky.raw")], ["flaky.raw"]),
    "backup-stop-eio": (lambda q, w: backup_stop_script(q, w, EIO, "stop"), [("src.raw", "flaky.raw")], ["flaky.raw"]),
    "backup-report": (backup_report_script, [], []),
    "backup-enospc-on-eio": (backup_enospc_policy_on_eio_script, [], []),
    "mirror-stop-eio": (lambda q, w: mirror_stop_script(q, w, "stop", EIO), [("src.raw", "flaky.raw")], ["flaky.raw"]),
    "mirror-ignore": (lambda q, w: mirror_stop_script(q, w, "ignore", EIO), [("src.raw", "flaky.raw")], ["flaky.raw"]),
    "commit-stop": (lambda q, w: commit_script(q, w, "stop"), [], ["base.raw"]),
    "commit-report": (lambda q, w: commit_script(q, w, "report"), [], []),
    "active-commit-enospc": (active_commit_script, [], ["base.raw"]),
    "stream-stop": (lambda q, w: stream_script(q, w, "stop"), [], ["top.qcow2"]),
    "stream-report": (lambda q, w: stream_script(q, w, "report"), [], ["top.qcow2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_policy_like_qemu_storage_daemon(launcher, tmp_path, case):
    require("qemu-storage-daemon")
    script, same_images, same_as_qsd = CASES[case]
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = script(reference, tmp_path / "qsd")
        got = script(mine, tmp_path / "blockd")
    expected = json.loads(json.dumps(expected).replace(str(tmp_path / "qsd"), "$WORK"))
    got = json.loads(json.dumps(got).replace(str(tmp_path / "blockd"), "$WORK"))
    assert got == expected
    launcher.stop_all()
    for left, right in same_images:
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp_path / "blockd" / left),
            str(tmp_path / "blockd" / right))
    # A stopped and resumed job lost nothing: blockd's images read as qemu-storage-daemon's.
    for image in same_as_qsd:
        run("qemu-img", "compare", "-U", str(tmp_path / "qsd" / image), str(tmp_path / "blockd" / image))
