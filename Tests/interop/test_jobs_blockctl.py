"""blockctl follows block jobs (issue #13): `job-wait JOBID` and `--progress` against a real
blockd job, as plain lines when the output is not a terminal and as a progress bar on a pty; the
job's last event is printed and the exit status says whether the job completed."""
import re
import shutil
import subprocess
import time

from conftest import require
from qmp_client import launcher  # noqa: F401 (fixture)
from test_blockctl import blockctl_binary
from test_jobs import MiB, start

require("qemu-img", "qemu-io")

LINE = re.compile(r"^b1: backup (running|paused) \d+\.\d% [\d.]+ (B|KiB|MiB)/16\.0 MiB ([\d.]+ (B|KiB|MiB)|-)/s ETA [\d:-]+$")


def blockctl(daemon, *words, timeout=60):
    return subprocess.run([blockctl_binary(), "--socket", str(daemon.qmp_path), *words],
                          capture_output=True, text=True, timeout=timeout)


def test_job_wait_prints_lines_and_the_final_event(launcher, tmp_path):
    """A backup at 8 MiB/s of 16 MiB: job-wait prints progress lines that grow, then
    BLOCK_JOB_COMPLETED, and exits 0."""
    daemon = start(launcher, "blockd", tmp_path)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 8 * MiB})
        done = blockctl(daemon, "job-wait", "b1")
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("b1: ")]
    assert len(progress) >= 3, lines
    assert all(LINE.match(line) for line in progress), progress
    percents = [float(line.split()[3].rstrip("%")) for line in progress]
    assert percents == sorted(percents) and percents[-1] > percents[0], percents
    assert "MiB/s" in "".join(progress[1:])  # a rate once there are two samples
    assert lines[-1].startswith("BLOCK_JOB_COMPLETED ") and '"device":"b1"' in lines[-1].replace(" ", ""), lines
    assert "error" not in lines[-1]


def test_job_wait_exit_status_of_a_cancelled_and_a_missing_job(launcher, tmp_path):
    daemon = start(launcher, "blockd", tmp_path)
    missing = blockctl(daemon, "job-wait", "nope")
    assert missing.returncode != 0 and "nope" in missing.stderr, missing
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 1 * MiB})
        waiter = subprocess.Popen([blockctl_binary(), "--socket", str(daemon.qmp_path), "job-wait", "b1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        qmp.execute("job-cancel", id="b1")
        output, errors = waiter.communicate(timeout=20)
    assert waiter.returncode == 1, (output, errors)
    assert output.splitlines()[-1].startswith("BLOCK_JOB_CANCELLED "), output


def test_job_wait_reports_a_failed_job(launcher, tmp_path):
    """A mirror onto a smaller target fails: job-wait prints BLOCK_JOB_COMPLETED with the error, exits 1."""
    daemon = start(launcher, "blockd", tmp_path)
    done = blockctl(daemon, "--progress", "blockdev-backup", "job-id=b1", "device=src", "target=small", "sync=full")
    # QEMU refuses a backup onto a smaller target at once; a mirror fails once it runs.
    assert done.returncode != 0
    done = blockctl(daemon, "--progress", "blockdev-mirror", "job-id=m1", "device=src", "target=small", "sync=full")
    assert done.returncode == 1, (done.stdout, done.stderr)
    last = done.stdout.splitlines()[-1]
    assert last.startswith("BLOCK_JOB_COMPLETED ") and '"error"' in last, done.stdout


def test_progress_flag_follows_the_job_it_starts(launcher, tmp_path):
    daemon = start(launcher, "blockd", tmp_path)
    done = blockctl(daemon, "--progress", "blockdev-backup", "job-id=b1", "device=src", "target=dst", "sync=full",
                    f"speed={8 * MiB}")
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert any(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("BLOCK_JOB_COMPLETED "), lines


def test_job_wait_draws_a_bar_on_a_terminal(launcher, tmp_path):
    """Under script(1) (a pty): the bar is redrawn in place with carriage returns."""
    if not shutil.which("script"):
        require("script")
    daemon = start(launcher, "blockd", tmp_path)
    with daemon.qmp() as qmp:
        qmp.execute("blockdev-backup", {"job-id": "b1", "device": "src", "target": "dst", "sync": "full",
                                        "speed": 8 * MiB})
        command = f"{blockctl_binary()} --socket {daemon.qmp_path} job-wait b1"
        done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, timeout=60)
    output = done.stdout.decode()  # bytes: text mode would turn the carriage returns into newlines
    assert done.returncode == 0, done
    assert "\r\x1b[K" in output and re.search(r"b1 \[#*\.*\] \d+\.\d% running", output), output
    assert "BLOCK_JOB_COMPLETED" in output
