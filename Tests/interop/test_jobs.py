"""Block jobs (issue #13) with real clients: mirror and backup while libnbd clients write through
the export, the job state sequences and events compared with qemu-storage-daemon's for the same
script, and QEMU's error classes and wording. Data is checked byte for byte (qemu-img compare,
and a model of what the clients wrote)."""
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import require, import_or_skip
from qmp_client import launcher  # noqa: F401 (fixture)

nbd = import_or_skip("nbd")
require("qemu-img", "qemu-io")

MiB = 1024 * 1024
SIZE = 16 * MiB


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True)


def make_images(work: Path, size: int = SIZE):
    """src.raw with a pattern in its first half, dst.qcow2 and small.qcow2 empty."""
    run("qemu-img", "create", "-f", "raw", str(work / "src.raw"), str(size))
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x11 0 {size // 2}", str(work / "src.raw"))
    run("qemu-img", "create", "-f", "qcow2", str(work / "dst.qcow2"), str(size))
    run("qemu-img", "create", "-f", "qcow2", str(work / "small.qcow2"), str(size // 2))


def daemon_args(work: Path) -> list[str]:
    return ["--blockdev", f"driver=file,node-name=f0,filename={work / 'src.raw'}",
            "--blockdev", "driver=raw,node-name=src,file=f0",
            "--blockdev", f"driver=file,node-name=f1,filename={work / 'dst.qcow2'}",
            "--blockdev", "driver=qcow2,node-name=dst,file=f1",
            "--blockdev", f"driver=file,node-name=f2,filename={work / 'small.qcow2'}",
            "--blockdev", "driver=qcow2,node-name=small,file=f2",
            "--nbd-server", f"addr.type=unix,addr.path={work / 'nbd.sock'}",
            "--export", "type=nbd,id=e0,node-name=src,name=src,writable=on"]


def start(launcher, kind: str, work: Path):
    work.mkdir(exist_ok=True)
    make_images(work)
    if kind == "qsd":
        return launcher.qsd(*daemon_args(work), name="qsd")
    return launcher.blockd(*daemon_args(work), name="blockd")


def job_trace(qmp, until: str, timeout: float = 20) -> list[str]:
    """Events up to and including `until` (an event name, or JOB_STATUS_CHANGE:status), as
    names (JOB_STATUS_CHANGE as its status). Drain pauses (paused/running pairs QEMU sends when
    another command drains the node) are dropped."""
    trace = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        qmp.no_event(0.05)
        while qmp.events:
            event = qmp.events.pop(0)
            name = event["event"]
            label = f"status:{event['data']['status']}" if name == "JOB_STATUS_CHANGE" else name
            if name in ("BLOCK_JOB_COMPLETED",) and "error" in event["data"]:
                label += ":error"
            trace.append(label)
            if label == until or name == until:
                return drop_drain_pauses(trace)
    raise AssertionError(f"no {until} within {timeout} s: {trace}")


def drop_drain_pauses(trace: list[str]) -> list[str]:
    out = []
    for label in trace:
        if label == "status:running" and out and out[-1] == "status:paused":
            out.pop()
            continue
        out.append(label)
    return out


def scripted(qmp, script: str) -> list:
    """Runs one of the shared scripts; returns (replies, traces) to compare between daemons."""
    results = []
    if script == "mirror-complete":
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full"}))
        results.append(job_trace(qmp, "BLOCK_JOB_READY"))
        results.append(strip_jobs(qmp.execute("query-block-jobs")))
        results.append(qmp.cmd("block-job-pause", device="m1"))
        results.append(job_trace(qmp, "status:standby"))
        results.append(qmp.cmd("block-job-pause", device="m1"))
        results.append(qmp.cmd("block-job-resume", device="m1"))
        results.append(job_trace(qmp, "status:ready"))
        results.append(qmp.cmd("job-complete", id="m1"))
        results.append(job_trace(qmp, "status:null"))
        results.append(qmp.execute("query-jobs"))
    elif script == "mirror-soft-cancel":
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full"}))
        results.append(job_trace(qmp, "BLOCK_JOB_READY"))
        results.append(qmp.cmd("block-job-cancel", device="m1"))
        results.append(job_trace(qmp, "status:null"))
    elif script == "mirror-hard-cancel":
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full"}))
        results.append(job_trace(qmp, "BLOCK_JOB_READY"))
        results.append(qmp.cmd("job-cancel", id="m1"))
        results.append(job_trace(qmp, "status:null"))
    elif script == "mirror-size-mismatch":
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "small", "sync": "full"}))
        results.append(job_trace(qmp, "status:null"))
    elif script == "backup-manual":
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                                   "auto-finalize": False, "auto-dismiss": False}))
        results.append(job_trace(qmp, "BLOCK_JOB_PENDING"))
        results.append(strip_jobs(qmp.execute("query-block-jobs")))
        results.append(qmp.cmd("job-dismiss", id="b1"))
        results.append(qmp.cmd("job-finalize", id="b1"))
        results.append(job_trace(qmp, "status:concluded"))
        results.append(qmp.execute("query-jobs"))
        results.append(qmp.cmd("job-dismiss", id="b1"))
        results.append(job_trace(qmp, "status:null"))
    elif script == "errors":
        results.append(qmp.cmd("block-job-cancel", device="nope"))
        results.append(qmp.cmd("job-cancel", id="nope"))
        results.append(qmp.cmd("block-job-complete", device="nope"))
        results.append(qmp.cmd("blockdev-mirror", device="src", target="dst", sync="full"))
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "1x", "device": "src", "target": "dst", "sync": "full"}))
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "nope", "target": "dst", "sync": "full"}))
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "nope", "sync": "full"}))
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                                   "granularity": 100}))
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b3", "device": "src", "target": "dst", "sync": "incremental"}))
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b3", "device": "src", "target": "small", "sync": "full"}))
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                                   "speed": 1}))
        results.append(job_trace(qmp, "status:running"))
        results.append(qmp.cmd("block-job-complete", device="b1"))
        results.append(qmp.cmd("job-finalize", id="b1"))
        results.append(qmp.cmd("block-job-set-speed", device="b1", speed=-1))
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full"}))
        results.append(qmp.cmd("blockdev-backup", {"job-id": "b2", "device": "src", "target": "dst", "sync": "full"}))
        results.append(qmp.cmd("block-job-resume", device="b1"))
        results.append(qmp.cmd("job-cancel", id="b1"))
        results.append(job_trace(qmp, "status:null"))
    return results


def strip_jobs(jobs: list[dict]) -> list[dict]:
    """query-block-jobs without what depends on timing (busy)."""
    return [{k: v for k, v in job.items() if k != "busy"} for job in jobs]


SCRIPTS = ["mirror-complete", "mirror-soft-cancel", "mirror-hard-cancel", "mirror-size-mismatch", "backup-manual", "errors"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_replies_and_events_as_qemu_storage_daemon(launcher, tmp_path, script):
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = scripted(reference, script)
        got = scripted(mine, script)
    assert got == expected


def test_mirror_cancel_after_ready_leaves_a_consistent_copy(launcher, tmp_path):
    daemon = start(launcher, "blockd", tmp_path)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full"})
        qmp.event("BLOCK_JOB_READY", timeout=20)
        qmp.execute("block-job-cancel", device="m1")
        qmp.event("BLOCK_JOB_COMPLETED", timeout=20)
    launcher.stop_all()
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / "src.raw"), str(tmp_path / "dst.qcow2"))
    run("qemu-img", "check", str(tmp_path / "dst.qcow2"))


class Writer(threading.Thread):
    """A libnbd client writing random 4 KiB blocks with random bytes through the export until
    stopped; `model` holds what the export must now contain."""

    def __init__(self, uri: str, model: bytearray, seed: int, pause: float = 0.002):
        super().__init__(daemon=True)
        self.pause = pause
        self.uri = uri
        self.model = model
        self.random = random.Random(seed)
        self.stop_flag = threading.Event()
        self.writes = 0
        self.error = None

    def run(self):
        try:
            h = nbd.NBD()
            h.connect_uri(self.uri)
            while not self.stop_flag.is_set():
                block = self.random.randrange(len(self.model) // 4096)
                data = self.random.randbytes(4096)
                h.pwrite(data, block * 4096)
                self.model[block * 4096:(block + 1) * 4096] = data
                self.writes += 1
                # A steady load the mirror can keep up with (each write dirties a 64 KiB chunk).
                time.sleep(self.pause)
            h.flush()
            h.shutdown()
        except Exception as error:  # reported by the test
            self.error = error


def read_all(uri: str, size: int) -> bytes:
    h = nbd.NBD()
    h.connect_uri(uri)
    data = bytearray()
    for offset in range(0, size, 4 * MiB):
        data += h.pread(min(4 * MiB, size - offset), offset)
    h.shutdown()
    return bytes(data)


def test_mirror_pivot_while_clients_write(launcher, tmp_path):
    """A mirror at a limited speed while a client writes: after ready and complete the export
    serves the target, which holds every byte the client wrote, before and after the pivot."""
    daemon = start(launcher, "blockd", tmp_path)
    uri = f"nbd+unix:///src?socket={tmp_path / 'nbd.sock'}"
    model = bytearray(read_all(uri, SIZE))
    writer = Writer(uri, model, seed=1)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 32 * MiB})
        writer.start()
        qmp.event("BLOCK_JOB_READY", timeout=30)
        time.sleep(0.3)
        qmp.execute("block-job-complete", device="m1")
        completed = qmp.event("BLOCK_JOB_COMPLETED", timeout=30)
        assert "error" not in completed["data"]
        time.sleep(0.3)
        writer.stop_flag.set()
        writer.join(10)
        assert writer.error is None and writer.writes > 100, (writer.error, writer.writes)
        assert read_all(uri, SIZE) == bytes(model)
    launcher.stop_all()
    # The target file holds it all; the source stopped at the pivot.
    target = subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={tmp_path / 'dst.qcow2'}",
                             f"of={tmp_path / 'dst.raw'}"], capture_output=True)
    assert target.returncode == 0, target.stderr
    assert (tmp_path / "dst.raw").read_bytes() == bytes(model)
    run("qemu-img", "check", str(tmp_path / "dst.qcow2"))


def test_backup_is_the_disk_as_it_was_at_job_start(launcher, tmp_path):
    """A slow backup while a client overwrites the whole disk: the backup holds the data as it was
    when the job started, the export the new data."""
    daemon = start(launcher, "blockd", tmp_path)
    uri = f"nbd+unix:///src?socket={tmp_path / 'nbd.sock'}"
    before = read_all(uri, SIZE)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 8 * MiB})
        h = nbd.NBD()
        h.connect_uri(uri)
        new = bytes([0x5a]) * MiB
        for offset in range(0, SIZE, MiB):
            h.pwrite(new, offset)
        h.flush()
        jobs = qmp.execute("query-block-jobs")
        assert jobs and jobs[0]["offset"] < SIZE, jobs  # the job was still running while the client wrote
        qmp.event("BLOCK_JOB_COMPLETED", timeout=30)
        assert h.pread(MiB, 3 * MiB) == new
        h.shutdown()
    launcher.stop_all()
    run("qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={tmp_path / 'dst.qcow2'}", f"of={tmp_path / 'dst.raw'}")
    assert (tmp_path / "dst.raw").read_bytes() == before
    run("qemu-img", "check", str(tmp_path / "dst.qcow2"))


def test_speed_limit_is_kept(launcher, tmp_path):
    """A backup at 4 MiB/s of 16 MiB: progress after one second is about 4 MiB, not all of it."""
    daemon = start(launcher, "blockd", tmp_path)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 4 * MiB})
        time.sleep(1.0)
        offset = qmp.execute("query-block-jobs")[0]["offset"]
        assert 2 * MiB <= offset <= 7 * MiB, offset
        qmp.execute("block-job-set-speed", device="b1", speed=0)
        qmp.event("BLOCK_JOB_COMPLETED", timeout=20)


def test_fio_verifies_across_a_mirror_pivot(launcher, tmp_path):
    """fio (nbd engine) writes with crc32c verification through the export while a mirror runs
    and pivots: what it reads back after the pivot comes from the target and must verify."""
    require("fio")
    daemon = start(launcher, "blockd", tmp_path)
    uri = f"nbd+unix:///src?socket={tmp_path / 'nbd.sock'}"
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 16 * MiB})
        fio = subprocess.Popen(["fio", "--name=v", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
                                "--iodepth=8", "--size=4M", "--rate=1m", "--verify=crc32c", "--do_verify=1",
                                "--verify_fatal=1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        qmp.event("BLOCK_JOB_READY", timeout=30)
        qmp.execute("block-job-complete", device="m1")
        assert "error" not in qmp.event("BLOCK_JOB_COMPLETED", timeout=30)["data"]
        output, _ = fio.communicate(timeout=60)
        assert fio.returncode == 0, output
        assert "verify" not in output.lower() or "err=" not in output, output


def error_policy_script(qmp, work: Path) -> list:
    """A mirror onto a blkdebug target whose first write fails with ENOSPC, on-target-error=enospc:
    the job stops (BLOCK_JOB_ERROR action stop, io-status nospace, paused), resume retries."""
    run("qemu-img", "create", "-f", "raw", str(work / "flaky.raw"), str(SIZE))
    qmp.execute("blockdev-add", {"driver": "blkdebug", "node-name": "flaky",
                                 "inject-error": [{"event": "pwritev", "errno": 28, "once": True}],
                                 "image": {"driver": "raw", "file": {"driver": "file", "filename": str(work / "flaky.raw")}}})
    results = [qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "flaky", "sync": "full",
                                           "on-target-error": "enospc"})]
    results.append(job_trace(qmp, "status:paused"))
    jobs = qmp.execute("query-block-jobs")
    results.append([{k: job[k] for k in ("io-status", "paused", "status")} for job in jobs])
    results.append(qmp.cmd("block-job-resume", device="m1"))
    results.append(job_trace(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-cancel", device="m1"))
    results.append(job_trace(qmp, "status:null"))
    return results


def test_on_target_error_stops_and_resume_retries_like_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = error_policy_script(reference, tmp_path / "qsd")
        got = error_policy_script(mine, tmp_path / "blockd")
    assert got == expected
    launcher.stop_all()
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp_path / "blockd" / "src.raw"),
        str(tmp_path / "blockd" / "flaky.raw"))


def drive_script(qmp, work: Path) -> list:
    """drive-mirror and drive-backup onto images they create (qcow2 and raw), then the images."""
    results = [qmp.cmd("drive-mirror", {"job-id": "m1", "device": "src", "target": str(work / "m.qcow2"),
                                        "format": "qcow2", "sync": "full"})]
    results.append(job_trace(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-complete", device="m1"))
    results.append(job_trace(qmp, "status:null"))
    results.append(qmp.cmd("drive-backup", {"job-id": "b1", "device": "dst", "target": str(work / "b.raw"),
                                            "format": "raw", "sync": "full"}))
    results.append(job_trace(qmp, "status:null"))
    results.append(qmp.cmd("drive-mirror", {"job-id": "m2", "device": "dst", "target": str(work / "nope" / "x.qcow2"),
                                            "format": "qcow2", "sync": "full", "mode": "existing"}))
    return results


def test_drive_mirror_and_drive_backup_like_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = drive_script(reference, tmp_path / "qsd")
        got = drive_script(mine, tmp_path / "blockd")
    expected = json.loads(json.dumps(expected).replace(str(tmp_path / "qsd"), "$WORK"))
    got = json.loads(json.dumps(got).replace(str(tmp_path / "blockd"), "$WORK"))
    assert got == expected
    launcher.stop_all()
    work = tmp_path / "blockd"
    run("qemu-img", "check", str(work / "m.qcow2"))
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(work / "src.raw"), str(work / "m.qcow2"))
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(work / "dst.qcow2"), str(work / "b.raw"))
