"""SIGKILL during block jobs (issue #13): a daemon killed at a random moment of a stream, a commit
or a mirror leaves images that qemu-img check accepts and that read the same data as before the
job. One cycle per job normally; fifty with --long."""
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require
from qmp_client import Daemon, QMP
from conftest import blockd_binary
from test_jobs import run
from test_jobs_chain import qcow2_chain, chain_args, SIZE

require("qemu-img", "qemu-io")


def flatten(image: Path, out: Path) -> bytes:
    run("qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", f"if={image}", f"of={out}")
    return out.read_bytes()


@pytest.mark.parametrize("job", ["stream", "commit", "mirror"])
def test_sigkill_during_a_job_leaves_a_valid_chain(tmp_path, long_mode, job):
    cycles = 50 if long_mode else 1
    rng = random.Random(13)
    for cycle in range(cycles):
        work = tmp_path / f"{job}{cycle}"
        work.mkdir()
        top = qcow2_chain(work)
        expected = flatten(top, work / "before.raw")
        run("qemu-img", "create", "-f", "qcow2", str(work / "target.qcow2"), str(SIZE))
        daemon = Daemon(blockd_binary(), work, chain_args(work, top), "blockd")
        try:
            with QMP(daemon.qmp_path) as qmp:
                if job == "stream":
                    qmp.execute("block-stream", {"job-id": "j", "device": "top", "speed": 8 << 20})
                elif job == "commit":
                    qmp.execute("block-commit", {"job-id": "j", "device": "top", "top": str(work / "mid.qcow2"),
                                                 "speed": 8 << 20})
                else:
                    qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                                 "file": {"driver": "file", "filename": str(work / "target.qcow2")}})
                    qmp.execute("blockdev-mirror", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full",
                                                    "speed": 8 << 20})
                time.sleep(rng.uniform(0, 0.6))
                daemon.proc.send_signal(signal.SIGKILL)
                daemon.proc.wait(10)
        finally:
            daemon.stop()
        for image in ("top.qcow2", "mid.qcow2", "target.qcow2"):
            check = subprocess.run(["qemu-img", "check", str(work / image)], capture_output=True, text=True)
            assert check.returncode in (0, 3), f"cycle {cycle}: {image}: {check.stdout}{check.stderr}"  # 3: leaks only
        assert flatten(top, work / "after.raw") == expected, f"cycle {cycle}: data changed"
