"""What the README promises about the daemon's life: a request the server has read is completed and
answered before the connection closes — at SIGTERM, at SIGINT and when its export is removed, also
when it waits for slow storage, a throttle group or a paused device; SIGINT and SIGTERM flush every
node and exit 0; the exit status of a start that fails (64: the command line does not parse, 1: an
option value is wrong, or a node or a listener cannot be set up).

The raw client (nbdwire) sends the requests, so that the test knows exactly what was sent; the
kernel's count of the bytes the server has not read yet (SIOCOUTQ) tells when the server has read
them all."""
import fcntl
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from client_helpers import MiB, output, read_file, run
from conftest import blockd_binary, import_or_skip, make_image, require
from nbdwire import CMD_READ, CMD_WRITE, Conn, connect_go
from qmp_client import launcher  # noqa: F401

nbd = import_or_skip("nbd")

READ_LENGTH = 512
SIMPLE_REPLY = 16 + READ_LENGTH  # a simple reply header and the data of one read


def unread_by_server(conn: Conn) -> int:
    """Bytes this client sent that the server has not read from its socket yet (SIOCOUTQ)."""
    answer = fcntl.ioctl(conn.sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", answer)[0]


def received_not_read(conn: Conn) -> int:
    """Bytes the server sent that this client has not read yet (FIONREAD)."""
    answer = fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", answer)[0]


def send_reads(conn: Conn, count: int) -> None:
    """Sends `count` reads of READ_LENGTH bytes in one go and waits until the server has read them
    all; asserts that they are not all answered yet (else the test would prove nothing)."""
    requests = b"".join(conn.encode_request(CMD_READ, index * READ_LENGTH, READ_LENGTH)[1] for index in range(count))
    conn.send(requests)
    deadline = time.monotonic() + 10
    while unread_by_server(conn) > 0:
        assert time.monotonic() < deadline, f"the server did not read {unread_by_server(conn)} bytes of requests"
        time.sleep(0.005)
    answered = received_not_read(conn) // SIMPLE_REPLY
    assert answered < count, f"all {count} requests were answered before the test went on: nothing was in flight"


def assert_every_read_answered(conn: Conn, count: int) -> None:
    """Each of the `count` reads gets its reply (success, zeroes), then the server closes the connection."""
    for index in range(count):
        try:
            reply = conn.read_reply()
        except Exception as error:  # noqa: BLE001 - the count of replies is the finding
            pytest.fail(f"only {index} of {count} requests the server had read were answered: {error!r}")
        assert reply.error == 0 and reply.data == bytes(READ_LENGTH), reply
    assert conn.pending == {}, conn.pending
    assert conn.read_until_closed(15) == b"", "more than one reply per request"


# Ways to keep the requests a server has read from finishing before the signal or the removal.
SLOW = "slow-storage"        # null-co with 100 ms latency: 20 reads take 2 s
THROTTLED = "throttled"      # a throttle group of 1 request/s: 30 reads would take 30 s
PAUSED = "paused"            # QMP stop: the requests wait until cont


def start(launcher, tmp_path, holdup: str):
    """blockd exporting 'disk0' (device 'e0') held up as `holdup` says; returns (daemon, count of reads)."""
    sock = tmp_path / "nbd.sock"
    if holdup == THROTTLED:
        nodes = ["--object", "throttle-group,id=tg0,limits.iops-total=1",
                 "--blockdev", "driver=null-co,node-name=data,size=64M,read-zeroes=on",
                 "--blockdev", "driver=throttle,node-name=disk0,throttle-group=tg0,file=data"]
    else:
        latency = ",latency-ns=100000000" if holdup == SLOW else ""
        nodes = ["--blockdev", f"driver=null-co,node-name=disk0,size=64M,read-zeroes=on{latency}"]
    daemon = launcher.blockd(*nodes, "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=e0,node-name=disk0,name=disk0")
    daemon.nbd_sock = sock
    if holdup == PAUSED:
        q = daemon.qmp()
        assert q.execute("stop") == {}
        q.close()
    return daemon, (30 if holdup == THROTTLED else 20)


@pytest.mark.parametrize("holdup", [SLOW, THROTTLED, PAUSED])
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_request_read_before_the_signal_is_answered(launcher, tmp_path, number, holdup):
    daemon, count = start(launcher, tmp_path, holdup)
    conn = connect_go(daemon.nbd_sock, "disk0", style="simple")
    send_reads(conn, count)
    signalled = time.monotonic()
    daemon.proc.send_signal(number)
    assert_every_read_answered(conn, count)
    assert daemon.proc.wait(30) == 0, daemon.log_text()
    if holdup != SLOW:
        # The throttle's limits and the pause are lifted at shutdown; the requests are not waited out.
        assert time.monotonic() - signalled < 15, f"shutdown waited {time.monotonic() - signalled:.1f} s"


def test_every_write_read_before_sigterm_is_answered_and_in_the_file(launcher, tmp_path):
    """Writes held by a throttle group of 1 request/s over a file: at SIGTERM each write the server
    had read gets a successful reply, and its data is in the file."""
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    sock = tmp_path / "nbd.sock"
    daemon = launcher.blockd("--object", "throttle-group,id=tg0,limits.iops-total=1",
                             "--blockdev", f"driver=file,node-name=f0,filename={image}",
                             "--blockdev", "driver=throttle,node-name=disk0,throttle-group=tg0,file=f0",
                             "--nbd-server", f"addr.type=unix,addr.path={sock}",
                             "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    conn = connect_go(sock, "disk0", style="simple")
    count, length = 20, 4096
    conn.send(b"".join(conn.encode_request(CMD_WRITE, index * length, length, 0, bytes([index + 1]) * length)[1]
                       for index in range(count)))
    deadline = time.monotonic() + 10
    while unread_by_server(conn) > 0:
        assert time.monotonic() < deadline, "the server did not read the writes"
        time.sleep(0.005)
    assert received_not_read(conn) // 16 < count, "every write was answered before the signal"
    daemon.proc.send_signal(signal.SIGTERM)
    for index in range(count):
        try:
            reply = conn.read_reply()
        except Exception as error:  # noqa: BLE001 - the count of replies is the finding
            pytest.fail(f"only {index} of {count} writes the server had read were answered: {error!r}")
        assert reply.error == 0, reply
    assert conn.read_until_closed(15) == b""
    assert daemon.proc.wait(30) == 0, daemon.log_text()
    data = read_file(image)
    for index in range(count):
        assert data[index * length:(index + 1) * length] == bytes([index + 1]) * length, f"write {index} missing"


@pytest.mark.parametrize("holdup", [SLOW, PAUSED])
def test_every_request_read_before_export_removal_is_answered(launcher, tmp_path, holdup):
    """block-export-del in hard mode disconnects the export's clients after the requests they sent."""
    daemon, count = start(launcher, tmp_path, holdup)
    conn = connect_go(daemon.nbd_sock, "disk0", style="simple")
    q = daemon.qmp()
    send_reads(conn, count)
    assert q.execute("block-export-del", id="e0", mode="hard") == {}
    if holdup == PAUSED:
        assert q.execute("cont") == {}
    assert_every_read_answered(conn, count)
    assert q.event("BLOCK_EXPORT_DELETED")["data"] == {"id": "e0"}
    q.close()


# ---------------------------------------------------------------------------------------------------
# Flushing at exit


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_sigint_exits_0_and_flushes_every_node(start_blockd, tmp_path, fmt):
    """Data written without FLUSH: at SIGINT the daemon calls fdatasync on the image (watched with
    strace) and exits 0; the data is in the file — for qcow2 with the metadata that points at it
    (blockd keeps L2 tables in memory until a flush: a SIGKILL here would lose the write)."""
    require("strace", "qemu-img", "qemu-io")
    if fmt == "raw":
        image = make_image(tmp_path / "disk.img", 4 * MiB)
    else:
        image = tmp_path / "disk.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", image, "4M"])
    daemon = start_blockd(args=["--blockdev", f"driver=file,node-name=f0,filename={image}",
                                "--blockdev", f"driver={fmt},node-name=disk0,file=f0",
                                "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"])
    h = nbd.NBD()
    h.connect_uri(daemon.uri())
    h.pwrite(b"\x6e" * 65536, 1 * MiB)  # no flush
    h.shutdown()
    image_fds = _fds_of(daemon.proc.pid, image)
    assert image_fds, "the daemon has no descriptor of the image"
    trace = tmp_path / "strace.log"
    tracer = subprocess.Popen(["strace", "-qq", "-f", "-e", "trace=fdatasync,fsync", "-o", str(trace),
                               "-p", str(daemon.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_attached(daemon.proc.pid, tracer)
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(15) == 0, daemon.log_text()
    finally:
        tracer.wait(15)
    synced = [line for line in trace.read_text().splitlines()
              if any(f"fdatasync({fd})" in line or f"fsync({fd})" in line for fd in image_fds)]
    assert synced, f"no fdatasync/fsync of the image's descriptor(s) {image_fds} at exit:\n{trace.read_text()}"
    if fmt == "raw":
        assert read_file(image, 1 * MiB, 65536) == b"\x6e" * 65536
    else:
        check = run(["qemu-img", "check", "--output=json", image], ok=False)
        assert check.returncode == 0 and '"leaks"' not in check.stdout, output(check)
        run(["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P 0x6e {MiB} 64k", image])


def _fds_of(pid: int, path: Path) -> set[int]:
    """The descriptors of process `pid` open on `path`."""
    found = set()
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(link.readlink()) == Path(path):
                found.add(int(link.name))
        except OSError:
            continue
    return found


def _wait_attached(pid: int, tracer: subprocess.Popen) -> None:
    """Waits until strace traces the process (its TracerPid is set)."""
    deadline = time.monotonic() + 10
    while True:
        status = open(f"/proc/{pid}/status").read()
        tracer_pid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("TracerPid:"))
        if tracer_pid == tracer.pid:
            return
        assert tracer.poll() is None, f"strace exited {tracer.returncode}: {tracer.stderr.read().decode()}"
        assert time.monotonic() < deadline, "strace did not attach"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------
# Exit status of a failed start


@pytest.mark.parametrize("args, words", [
    (["--frobnicate"], ["--frobnicate"]),
    (["--blockdev"], ["--blockdev"]),
    (["--export", "type=nbd,id=e0,node-name=n0", "stray-argument"], ["stray-argument"]),
], ids=["unknown-option", "missing-value", "stray-argument"])
def test_a_command_line_that_does_not_parse_exits_64(tmp_path, args, words):
    proc = run([blockd_binary(), *args, "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"], ok=False)
    assert proc.returncode == 64, output(proc)
    for word in words:
        assert word in output(proc), output(proc)
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("args", [
    ["--blockdev", '{"driver": "null-co",'],
    ["--blockdev", "driver=null-co,node-name=n0,sise=1M"],
    ["--log-level", "loud"],
], ids=["bad-json", "unknown-key", "bad-log-level"])
def test_an_option_value_that_is_wrong_exits_1(tmp_path, args):
    proc = run([blockd_binary(), *args, "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"], ok=False)
    assert proc.returncode == 1, output(proc)
    assert not (tmp_path / "s.sock").exists()


def test_a_node_that_cannot_be_opened_exits_1(tmp_path):
    proc = run([blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={tmp_path}/missing.img",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/s.sock"], ok=False)
    assert proc.returncode == 1, output(proc)
    assert "missing.img" in output(proc)
    assert not (tmp_path / "s.sock").exists()


def test_a_listener_that_cannot_be_set_up_exits_1(tmp_path):
    proc = run([blockd_binary(), "--blockdev", "driver=null-co,node-name=n0",
                "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/no/such/dir/s.sock"], ok=False)
    assert proc.returncode == 1, output(proc)
    assert "no/such/dir/s.sock" in output(proc)
