"""blockdev-create (issue #11: what qemu-storage-daemon's users see): the same QMP sequence run
against blockd and qemu-storage-daemon 7.2 gives the same replies, the same JOB_STATUS_CHANGE
sequences, the same query-jobs entries (with the same errors), and images that qemu-img reads the
same way."""
import json
import time

from client_helpers import run
from conftest import require
from qmp_client import launcher  # noqa: F401

MiB = 1 << 20


def settle(q, job_id: str, timeout: float = 10) -> list[str]:
    """The statuses of `job_id` up to concluded, from its JOB_STATUS_CHANGE events."""
    statuses = []
    deadline = time.monotonic() + timeout
    while "concluded" not in statuses:
        assert time.monotonic() < deadline, statuses
        event = q.event("JOB_STATUS_CHANGE", timeout=max(0.1, deadline - time.monotonic()))
        assert event["data"]["id"] == job_id, event
        statuses.append(event["data"]["status"])
    return statuses


def scenario(q, work) -> list:
    """Runs the sequence on one daemon; returns everything it answered, paths made relative."""
    seen = []

    def create(job_id, options):
        reply = q.cmd("blockdev-create", {"job-id": job_id, "options": options})
        seen.append(("create", job_id, reply))
        if "error" in reply:
            return
        seen.append(("statuses", job_id, settle(q, job_id)))
        jobs = [job for job in q.execute("query-jobs") if job["id"] == job_id]
        seen.append(("query-jobs", job_id, jobs))
        seen.append(("query-block-jobs", q.execute("query-block-jobs")))
        seen.append(("dismiss", job_id, q.cmd("job-dismiss", id=job_id)))
        q.event("JOB_STATUS_CHANGE")  # null

    create("c1", {"driver": "file", "filename": str(work / "a.img"), "size": 4 * MiB})
    seen.append(("add", q.cmd("blockdev-add", driver="file", filename=str(work / "a.img"), **{"node-name": "f"})))
    create("c2", {"driver": "qcow2", "file": "f", "size": 8 * MiB, "cluster-size": 65536})
    create("c3", {"driver": "raw", "file": "f", "size": MiB})
    create("c4", {"driver": "qcow2", "file": "nope", "size": MiB})
    create("c5", {"driver": "qcow2", "file": "f", "size": 1000})
    create("c6", {"driver": "file", "filename": str(work / "absent" / "x.img"), "size": MiB})
    create("c7", {"driver": "qcow2", "file": "f", "size": MiB, "cluster-size": 1000})
    create("c8", {"driver": "file", "filename": str(work / "b.img"), "size": MiB, "preallocation": "full"})
    create("c9", {"driver": "nosuch", "size": MiB})
    seen.append(("missing-id", q.cmd("blockdev-create", options={"driver": "file", "filename": str(work / "c.img"), "size": MiB})))
    seen.append(("add-qcow2", q.cmd("blockdev-add", driver="qcow2", file="f", **{"node-name": "q"})))
    create("c10", {"driver": "qcow2", "file": "f", "size": MiB})
    create("c11", {"driver": "file", "filename": str(work / "v2.img"), "size": 4 * MiB})
    seen.append(("add-v2", q.cmd("blockdev-add", driver="file", filename=str(work / "v2.img"), **{"node-name": "f2"})))
    create("c12", {"driver": "qcow2", "file": "f2", "size": 2 * MiB, "version": "v2", "backing-file": "base.img",
                   "backing-fmt": "raw"})
    text = json.dumps(seen).replace(str(work), "WORK")
    return json.loads(text)


def test_blockdev_create_matches_qsd(launcher, tmp_path):
    require("qemu-img")
    answers, images = {}, {}
    for program in ("blockd", "qsd"):
        work = tmp_path / program
        work.mkdir()
        (work / "base.img").write_bytes(bytes(2 * MiB))
        start = launcher.blockd if program == "blockd" else launcher.qsd
        daemon = start(name=f"create-{program}")
        answers[program] = scenario(daemon.qmp(), work)
        images[program] = work
    assert answers["blockd"] == answers["qsd"]
    launcher.stop_all()
    # The images: the same qemu-img view, clean checks.
    for name in ("a.img", "v2.img"):
        infos = []
        for program in ("blockd", "qsd"):
            info = json.loads(run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(images[program] / name)]).stdout)
            for key in ("filename", "actual-size", "full-backing-filename"):
                info.pop(key, None)
            infos.append(info)
            run(["qemu-img", "check", "-f", "qcow2", str(images[program] / name)])
        assert infos[0] == infos[1], infos
    assert (images["blockd"] / "b.img").stat().st_size == MiB
    assert (images["blockd"] / "b.img").stat().st_blocks * 512 >= MiB
