"""The Prometheus metrics endpoint (--metrics, x-blockd-metrics-start): scraped after a known fio
workload and parsed with prometheus_client's own parser, its counters equal query-blockstats'; it
keeps serving while exports come and go; hostile scrapers block neither the daemon nor NBD clients."""
import http.client
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import blockd_binary, free_port, import_or_skip, make_image, require
from qmp_client import QMP

KINDS = ("read", "write", "flush", "discard")


def scrape_raw(port: int, path: str = "/metrics", method: str = "GET", timeout: float = 10):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request(method, path)
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response.status, response.getheader("Content-Type"), body


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample, parsed by prometheus_client."""
    parser = import_or_skip("prometheus_client.parser")
    status, content_type, body = scrape_raw(port)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in parser.text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, metric: str, /, **labels) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def start(start_blockd, tmp_path, port: int | None = None, extra: list[str] | None = None):
    image = make_image(tmp_path / "disk.img", 64 << 20)
    qmp = tmp_path / "qmp.sock"
    args = ["--chardev", f"socket,id=m,path={qmp},server=on,wait=off", "--monitor", "chardev=m"]
    if port is not None:
        args += ["--metrics", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port}"]
    daemon = start_blockd(image, extra=args + (extra or []))
    return daemon, qmp


def fio(uri: str, rw: str, size: str, extra: tuple = ()) -> None:
    run = subprocess.run(["fio", "--name=job", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k", f"--size={size}",
                          "--iodepth=8", "--norandommap", "--randrepeat=1", *extra], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_counters_equal_query_blockstats_after_fio(start_blockd, tmp_path):
    require("fio")
    port = free_port()
    daemon, qmp_path = start(start_blockd, tmp_path, port)
    fio(daemon.uri(), "randwrite", "4M", ("--end_fsync=1",))
    fio(daemon.uri(), "randread", "2M")
    samples = scrape(port)
    with QMP(qmp_path) as qmp:
        stats = next(entry for entry in qmp.execute("query-blockstats", {"x-blockd-exports": True}) if entry.get("device") == "e0")["stats"]
    export = {"export": "e0"}
    # The known workload: 4 MiB written in 4 KiB requests, 2 MiB read.
    assert value(samples, "blockd_export_written_bytes_total", **export) == 4 << 20 == stats["wr_bytes"]
    assert value(samples, "blockd_export_read_bytes_total", **export) == 2 << 20 == stats["rd_bytes"]
    assert value(samples, "blockd_export_writes_completed_total", **export) == 1024 == stats["wr_operations"]
    assert value(samples, "blockd_export_reads_completed_total", **export) == 512 == stats["rd_operations"]
    assert value(samples, "blockd_export_flush_requests_total", **export) == stats["flush_operations"] >= 1
    assert value(samples, "blockd_export_discards_completed_total", **export) == stats["unmap_operations"]
    assert value(samples, "blockd_export_discarded_bytes_total", **export) == stats["unmap_bytes"]
    for kind, short in (("read", "rd"), ("write", "wr"), ("flush", "flush"), ("discard", "unmap")):
        seconds = value(samples, f"blockd_export_{'flush_requests' if kind == 'flush' else kind}_time_seconds_total", **export)
        assert round(seconds * 1e9) == pytest.approx(stats[f"{short}_total_time_ns"], abs=2), kind
        assert value(samples, "blockd_export_failed_requests_total", op=kind, **export) == stats[f"failed_{short}_operations"]
        assert value(samples, "blockd_export_invalid_requests_total", op=kind, **export) == stats[f"invalid_{short}_operations"]
        assert value(samples, "blockd_export_requests_in_flight", op=kind, **export) == 0
    assert value(samples, "blockd_export_write_highest_offset_bytes", **export) == stats["wr_highest_offset"]
    # The latency buckets count every request once: +Inf equals the operations, and they grow with le.
    for kind, operations in (("read", 512), ("write", 1024)):
        buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                          # prometheus_client names every counter sample NAME_total in its model
                          if name == "blockd_export_request_duration_seconds_bucket_total" and dict(labels).get("op") == kind
                          and dict(labels).get("export") == "e0"))
        assert buckets[-1] == (float("inf"), operations)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert value(samples, "blockd_export_info", export="e0", name="disk0", node="disk0", writable="true") == 1
    assert value(samples, "blockd_node_size_bytes", node="disk0") == 64 << 20


def test_handshake_failures_and_clients(start_blockd, tmp_path):
    require("nbdinfo")
    port = free_port()
    daemon, _ = start(start_blockd, tmp_path, port)
    with socket.socket(socket.AF_UNIX) as s:  # closes before choosing an export
        s.connect(str(daemon.sock))
        s.recv(18)
    with socket.socket(socket.AF_UNIX) as s:  # unknown client flags
        s.connect(str(daemon.sock))
        s.recv(18)
        s.sendall(b"\xff\xff\xff\xff")
        s.recv(1)
    subprocess.run(["nbdinfo", "--list", daemon.uri()], capture_output=True, check=True, timeout=30)  # NBD_OPT_ABORT
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        samples = scrape(port)
        counts = {reason: value(samples, "blockd_nbd_handshake_failures_total", reason=reason)
                  for reason in ("closed", "protocol", "aborted")}
        if counts["closed"] >= 1 and counts["protocol"] == 1 and counts["aborted"] >= 1:
            break
        time.sleep(0.1)
    assert counts["closed"] >= 1 and counts["protocol"] == 1 and counts["aborted"] >= 1, counts
    assert value(samples, "blockd_nbd_handshake_failures_total", reason="timeout") == 0
    nbd = import_or_skip("nbd")
    handle = nbd.NBD()
    handle.connect_uri(daemon.uri())
    samples = scrape(port)
    assert value(samples, "blockd_export_clients", export="e0") == 1
    assert value(samples, "blockd_nbd_clients", server="nbd") == 1
    handle.shutdown()


def test_qmp_start_stop_query_unix_and_config_line(start_blockd, tmp_path):
    daemon, qmp_path = start(start_blockd, tmp_path)
    path = tmp_path / "metrics.sock"
    with QMP(qmp_path) as qmp:
        assert qmp.execute("query-blockd-metrics") == {"active": False, "scrapes": 0}
        qmp.execute("x-blockd-metrics-start", {"addr": {"type": "unix", "path": str(path)}})
        error = qmp.error("x-blockd-metrics-start", {"addr": {"type": "inet", "host": "127.0.0.1", "port": "0"}})
        assert error["class"] == "GenericError" and "already runs" in error["desc"]
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b"blockd_export_read_bytes_total{export=\"e0\"} 0" in reply
        info = qmp.execute("query-blockd-metrics")
        assert info == {"active": True, "address": f"unix:{path}", "scrapes": 1}
        qmp.execute("x-blockd-metrics-stop")
        assert qmp.execute("query-blockd-metrics")["active"] is False
        assert qmp.error("x-blockd-metrics-stop")["desc"] == "the metrics endpoint does not run"
        deadline = time.monotonic() + 5
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists()
        port = free_port()
        qmp.execute("x-blockd-metrics-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}})
        assert qmp.execute("query-blockd-metrics")["port"] == port
        assert scrape_raw(port, "/")[0] == 404
        assert scrape_raw(port, "/metrics", "POST")[0] == 405
        assert scrape_raw(port, "/metrics", "HEAD")[0] == 405
    # The config-file line.
    config_port = free_port()
    config = tmp_path / "blockd.conf"
    config.write_text(f"blockdev driver=null-co,node-name=n0,size=1M\nmetrics addr.type=inet,addr.host=127.0.0.1,addr.port={config_port}\n")
    start_blockd(args=["--config", str(config)])
    assert value(scrape(config_port), "blockd_node_size_bytes", node="n0") == 1 << 20
    bad = subprocess.run([blockd_binary(),
                          "--metrics", "addr.type=fd,addr.str=3"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 1 and "--metrics: addr.type must be inet or unix" in bad.stderr


def test_serves_while_exports_come_and_go(start_blockd, tmp_path):
    port = free_port()
    daemon, qmp_path = start(start_blockd, tmp_path, port)
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            try:
                samples = scrape(port)
                seen.update(dict(labels)["export"] for (name, labels) in samples if name == "blockd_export_info")
            except Exception as error:  # noqa: BLE001 - any failure of a scrape is the finding
                failures.append(repr(error))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        with QMP(qmp_path) as qmp:
            for round_ in range(30):
                qmp.execute("blockdev-add", {"driver": "null-co", "node-name": f"n{round_}", "size": 1 << 20})
                qmp.execute("block-export-add", {"type": "nbd", "id": f"x{round_}", "node-name": f"n{round_}"})
                time.sleep(0.05)
                qmp.execute("block-export-del", {"id": f"x{round_}"})
                deadline = time.monotonic() + 5
                while any(e["id"] == f"x{round_}" for e in qmp.execute("query-block-exports")) and time.monotonic() < deadline:
                    time.sleep(0.01)
                qmp.execute("blockdev-del", {"node-name": f"n{round_}"})
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert "e0" in seen and len(seen) > 1  # some of the passing exports were seen
    samples = scrape(port)
    assert {dict(labels)["export"] for (name, labels) in samples if name == "blockd_export_info"} == {"e0"}


def test_hostile_scrapers_block_neither_daemon_nor_nbd(start_blockd, tmp_path):
    nbd = import_or_skip("nbd")
    port = free_port()
    daemon, qmp_path = start(start_blockd, tmp_path, port)
    hostile: list[socket.socket] = []
    try:
        # A 1 MiB request line, sent from a thread (the server stops reading it past 8 KiB and answers 431).
        huge = socket.create_connection(("127.0.0.1", port))
        hostile.append(huge)
        huge_answer: list[bytes] = []

        def send_huge():
            try:
                huge.sendall(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n")
                huge_answer.append(huge.recv(200))
            except OSError as error:
                huge_answer.append(repr(error).encode())

        sender = threading.Thread(target=send_huge)
        sender.start()
        time.sleep(0.3)  # accepted before the drippers take the other slots
        # Slowloris: many connections dripping a header, past the client limit (the last ones get 503).
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            hostile.append(s)
        # Meanwhile the daemon answers QMP and an NBD client at once.
        started = time.monotonic()
        with QMP(qmp_path) as qmp:
            assert qmp.execute("query-blockd-metrics")["active"] is True
        handle = nbd.NBD()
        handle.connect_uri(daemon.uri())
        handle.pwrite(b"x" * 65536, 0)
        assert handle.pread(65536, 0) == b"x" * 65536
        handle.shutdown()
        assert time.monotonic() - started < 5
        sender.join(timeout=20)
        assert not sender.is_alive()
        assert huge_answer and (huge_answer[0].startswith(b"HTTP/1.1 431") or b"Error" in huge_answer[0]), huge_answer
        for s in hostile[1:6]:
            s.sendall(b"X-Drip: 1\r\n")
        # Past the header timeout the drippers are closed and a scraper is served again.
        time.sleep(5.5)
        for s in hostile[1:30]:
            s.settimeout(2)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        assert scrape_raw(port)[0] == 200
    finally:
        for s in hostile:
            s.close()
