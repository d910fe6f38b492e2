"""Mirror options of issue #13 with real clients: copy-mode write-blocking (QEMU's active mirror)
converging while fio writes flat out, `replaces`, `filter-node-name` and `unmap`, each checked
against qemu-storage-daemon and byte for byte with qemu-img compare."""
import json
import signal
import subprocess
import time

import pytest

from conftest import require, import_or_skip
from qmp_client import launcher  # noqa: F401 (fixture)
from test_jobs import MiB, SIZE, job_trace, run, start

nbd = import_or_skip("nbd")
require("qemu-img", "qemu-io")


def flat_out_fio(uri: str, seconds: int) -> subprocess.Popen:
    """fio (nbd engine) writing 4 KiB random blocks at QD8 with no rate limit for `seconds`."""
    require("fio")
    return subprocess.Popen(["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
                             "--iodepth=8", f"--size={SIZE}", "--time_based", f"--runtime={seconds}",
                             "--norandommap", "--randrepeat=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_write_blocking_mirror_converges_under_a_flat_out_writer(launcher, tmp_path):
    """A write-blocking mirror reaches ready while fio writes flat out, stays in sync under the
    load, and completes; the target then equals the source byte for byte."""
    daemon = start(launcher, "blockd", tmp_path)
    uri = f"nbd+unix:///src?socket={tmp_path / 'nbd.sock'}"
    fio = flat_out_fio(uri, 20)
    try:
        time.sleep(0.5)
        with daemon.qmp() as qmp:
            qmp.execute("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                            "copy-mode": "write-blocking", "speed": 16 * MiB})
            ready = qmp.event("BLOCK_JOB_READY", timeout=15)
            assert fio.poll() is None, "fio ended before the mirror was ready: the load was not there"
            assert ready["data"]["len"] == ready["data"]["offset"] == SIZE, ready
            # In sync and staying so: a second of flat-out writes dirties nothing.
            time.sleep(1.0)
            jobs = qmp.execute("query-block-jobs")
            assert jobs[0]["ready"] and jobs[0]["offset"] == jobs[0]["len"] == SIZE, jobs
            assert fio.poll() is None
            fio.send_signal(signal.SIGINT)
            output, _ = fio.communicate(timeout=30)
            # fio ends with status 128 when interrupted; its writes must all have succeeded.
            assert fio.returncode in (0, 128) and "err= 0" in output, output
            qmp.execute("block-job-complete", device="m1")
            completed = qmp.event("BLOCK_JOB_COMPLETED", timeout=15)
            assert "error" not in completed["data"], completed
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    launcher.stop_all()
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / "src.raw"), str(tmp_path / "dst.qcow2"))
    run("qemu-img", "check", str(tmp_path / "dst.qcow2"))


def test_background_mirror_stays_the_default(launcher, tmp_path):
    """Without copy-mode a mirror is a background mirror: a client write after ready makes the job
    copy again (its len grows), where a write-blocking mirror's does not."""
    daemon = start(launcher, "blockd", tmp_path)
    uri = f"nbd+unix:///src?socket={tmp_path / 'nbd.sock'}"
    lens = {}
    with daemon.qmp() as qmp:
        for job, mode in (("m1", None), ("m2", "write-blocking")):
            arguments = {"job-id": job, "device": "src", "target": "dst", "sync": "full"}
            if mode:
                arguments["copy-mode"] = mode
            qmp.execute("blockdev-mirror", arguments)
            qmp.event("BLOCK_JOB_READY", timeout=15)
            before = qmp.execute("query-block-jobs")[0]["len"]
            h = nbd.NBD()
            h.connect_uri(uri)
            for i in range(8):
                h.pwrite(bytes([0x40 + i]) * 4096, i * MiB)
            h.flush()
            h.shutdown()
            time.sleep(0.3)
            lens[job] = qmp.execute("query-block-jobs")[0]["len"] - before
            qmp.execute("block-job-cancel", device=job)
            qmp.event("BLOCK_JOB_COMPLETED", timeout=15)
    assert lens["m1"] >= 8 * 4096 and lens["m2"] == 0, lens
    launcher.stop_all()
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / "src.raw"), str(tmp_path / "dst.qcow2"))


def quorum_script(qmp, work) -> list:
    """A quorum of three raw images exported; a mirror of the quorum replacing its child img1 with
    a new image, then a write through the export: it reaches the new image, not img1."""
    for i in range(3):
        run("qemu-img", "create", "-f", "raw", str(work / f"img{i}.raw"), str(SIZE))
        run("qemu-io", "-f", "raw", "-c", f"write -P 0x5{i} 0 {SIZE}", str(work / f"img{i}.raw"))
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x50 0 {SIZE}", str(work / "img1.raw"))
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x50 0 {SIZE}", str(work / "img2.raw"))
    run("qemu-img", "create", "-f", "raw", str(work / "new.raw"), str(SIZE))
    run("qemu-img", "create", "-f", "raw", str(work / "half.raw"), str(SIZE // 2))
    for i in range(3):
        qmp.execute("blockdev-add", {"driver": "raw", "node-name": f"img{i}",
                                     "file": {"driver": "file", "filename": str(work / f"img{i}.raw")}})
    qmp.execute("blockdev-add", {"driver": "quorum", "node-name": "q", "vote-threshold": 2,
                                 "children": ["img0", "img1", "img2"]})
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": "new",
                                 "file": {"driver": "file", "filename": str(work / "new.raw")}})
    qmp.execute("blockdev-add", {"driver": "raw", "node-name": "half",
                                 "file": {"driver": "file", "filename": str(work / "half.raw")}})
    results = []
    for bad in ({"replaces": "nope"}, {"replaces": "src"}, {"replaces": "half"}, {"target": "half", "replaces": "img1"}):
        arguments = {"job-id": "m0", "device": "q", "target": "new", "sync": "full", **bad}
        results.append(qmp.cmd("blockdev-mirror", arguments))
        if "return" in results[-1]:  # a job that fails once it runs
            results.append(job_trace(qmp, "status:null"))
    results.append(qmp.cmd("drive-mirror", {"job-id": "m2", "device": "q", "target": str(work / "x.raw"),
                                            "format": "raw", "sync": "full", "replaces": "img1"}))
    results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "q", "target": "new", "sync": "full",
                                               "replaces": "img1"}))
    results.append(job_trace(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-complete", device="m1"))
    results.append(job_trace(qmp, "status:null"))
    results.append(qmp.cmd("block-export-add", {"type": "nbd", "id": "eq", "node-name": "q", "name": "q",
                                                "writable": True}))
    return results


def test_mirror_replaces_a_quorum_child_like_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = quorum_script(reference, tmp_path / "qsd")
        got = quorum_script(mine, tmp_path / "blockd")
        expected = json.loads(json.dumps(expected).replace(str(tmp_path / "qsd"), "$WORK"))
        got = json.loads(json.dumps(got).replace(str(tmp_path / "blockd"), "$WORK"))
        assert got == expected
        for work in ("qsd", "blockd"):
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///q?socket={tmp_path / work / 'nbd.sock'}")
            h.pwrite(b"\x99" * 65536, MiB)
            h.flush()
            assert h.pread(65536, 0) == b"\x50" * 65536
            h.shutdown()
    launcher.stop_all()
    for work in ("qsd", "blockd"):
        new = (tmp_path / work / "new.raw").read_bytes()
        old = (tmp_path / work / "img1.raw").read_bytes()
        assert new[MiB:MiB + 65536] == b"\x99" * 65536, work  # the new child got the write
        assert old[MiB:MiB + 65536] == b"\x50" * 65536, work  # the replaced one did not
        assert new[:MiB] == b"\x50" * MiB, work  # and the mirror copied the quorum's data


NODE_KEYS = ("node-name", "drv", "ro", "file", "backing_file_depth")


def filter_script(qmp, work) -> list:
    results = []
    for name in ("1bad", "dst", "src", ""):
        results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                                   "filter-node-name": name}))
    results.append(qmp.cmd("blockdev-mirror", {"job-id": "m1", "device": "src", "target": "dst", "sync": "full",
                                               "filter-node-name": "mt", "speed": 1024 * 1024}))
    nodes = {node["node-name"]: node for node in qmp.execute("query-named-block-nodes")}
    results.append({key: nodes["mt"].get(key) for key in NODE_KEYS})
    results.append({key: nodes["mt"]["image"].get(key) for key in ("format", "virtual-size", "filename")})
    results.append(qmp.cmd("blockdev-del", {"node-name": "mt"}))
    results.append(qmp.cmd("block-job-set-speed", device="m1", speed=0))
    results.append(job_trace(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-complete", device="m1"))
    results.append(job_trace(qmp, "status:null"))
    names = {node["node-name"] for node in qmp.execute("query-named-block-nodes")}
    results.append(sorted(names & {"mt", "src", "dst"}))
    return results


def test_mirror_filter_node_name_like_qemu_storage_daemon(launcher, tmp_path):
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = filter_script(reference, tmp_path / "qsd")
        got = filter_script(mine, tmp_path / "blockd")
    expected = json.loads(json.dumps(expected).replace(str(tmp_path / "qsd"), "$WORK"))
    got = json.loads(json.dumps(got).replace(str(tmp_path / "blockd"), "$WORK"))
    assert got == expected


def unmap_script(qmp, work, unmap: bool) -> list:
    """drive-mirror (mode existing) of a source with a hole onto a qcow2 full of data."""
    run("qemu-img", "create", "-f", "qcow2", str(work / "full.qcow2"), str(SIZE))
    run("qemu-io", "-f", "qcow2", "-c", f"write -P 0x66 0 {SIZE}", str(work / "full.qcow2"))
    results = [qmp.cmd("drive-mirror", {"job-id": "m1", "device": "src", "target": str(work / "full.qcow2"),
                                        "format": "qcow2", "mode": "existing", "sync": "full", "unmap": unmap})]
    results.append(job_trace(qmp, "BLOCK_JOB_READY"))
    results.append(qmp.cmd("block-job-cancel", device="m1"))
    results.append(job_trace(qmp, "status:null"))
    return results


def target_map(image) -> list:
    """qemu-img map of the target: which ranges hold data and which read as zeroes."""
    entries = json.loads(run("qemu-img", "map", "-U", "--output=json", str(image)).stdout)
    return [(e["start"], e["length"], e["data"], e["zero"]) for e in entries]


@pytest.mark.parametrize("unmap", [True, False])
def test_mirror_unmap_like_qemu_storage_daemon(launcher, tmp_path, unmap):
    """unmap true: the source's zero half becomes zero clusters without data on the target; false:
    it is written as zeroes. The same map and contents as qemu-storage-daemon leaves."""
    require("qemu-storage-daemon")
    qsd = start(launcher, "qsd", tmp_path / "qsd")
    ours = start(launcher, "blockd", tmp_path / "blockd")
    with qsd.qmp() as reference, ours.qmp() as mine:
        expected = unmap_script(reference, tmp_path / "qsd", unmap)
        got = unmap_script(mine, tmp_path / "blockd", unmap)
    expected = json.loads(json.dumps(expected).replace(str(tmp_path / "qsd"), "$WORK"))
    got = json.loads(json.dumps(got).replace(str(tmp_path / "blockd"), "$WORK"))
    assert got == expected
    launcher.stop_all()
    for work in ("qsd", "blockd"):
        run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(tmp_path / work / "src.raw"),
            str(tmp_path / work / "full.qcow2"))
    assert target_map(tmp_path / "blockd" / "full.qcow2") == target_map(tmp_path / "qsd" / "full.qcow2")
