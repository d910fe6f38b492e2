"""The `nbd` client driver: blockd in front of a remote NBD server (nbdkit, qemu-storage-daemon,
another blockd), checked with real clients (libnbd, qemu-img, nbdinfo, nbdcopy): bytes through the
chain, flags reaching the remote (nbdkit's log filter), sparseness end to end, multi-conn, the
server going away (reconnect-delay 0 and N), and refusals compared with qemu-storage-daemon."""
import json
import os
import re
import threading
import time

import pytest

from client_helpers import output, run
from conftest import import_or_skip, require
from qmp_client import MiB, launcher  # noqa: F401
from remote_helpers import Nbdkit, SilentServer, wait_until

nbd = import_or_skip("nbd")


def export_args(sock, node="disk0", name="disk0", writable=True):
    return ["--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", f"type=nbd,id=e-{name},node-name={node},name={name},writable={'on' if writable else 'off'}"]


def connect(uri: str):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h


@pytest.fixture
def nbdkit_memory(tmp_path):
    servers = []

    def start(size="64M", filters=None, extra=None, name="nbdkit", plugin=None):
        server = Nbdkit(tmp_path, plugin or ["memory", size], filters=filters, extra=extra, name=name)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def blockd_over(launcher, tmp_path, remote_opts: str, extra_nodes=(), name="qmp"):
    sock = tmp_path / f"{name}-export.sock"
    daemon = launcher.blockd("--blockdev", remote_opts, *extra_nodes,
                             *export_args(sock, node="disk0"), name=name)
    return daemon, f"nbd+unix:///disk0?socket={sock}"


def test_raw_over_nbdkit_bytes_and_compare(nbdkit_memory, launcher, tmp_path):
    """Writes through blockd (raw over nbd over nbdkit memory) land on nbdkit byte for byte."""
    require("qemu-img")
    remote = nbdkit_memory("64M")
    _, uri = blockd_over(launcher, tmp_path, remote.blockdev("remote"),
                         ["--blockdev", "driver=raw,node-name=disk0,file=remote"])
    h = connect(uri)
    assert h.get_size() == 64 * MiB
    data = os.urandom(1 * MiB)
    h.pwrite(data, 3 * MiB)
    h.pwrite(b"\xab" * 4096, 40 * MiB + 512, nbd.CMD_FLAG_FUA)
    h.flush()
    assert h.pread(1 * MiB, 3 * MiB) == data
    direct = connect(remote.uri())
    assert direct.pread(1 * MiB, 3 * MiB) == data
    assert direct.pread(4096, 40 * MiB + 512) == b"\xab" * 4096
    # Many requests in flight from one client: issued together, answered out of order.
    buffers = [(off, nbd.Buffer(4096)) for off in range(3 * MiB, 4 * MiB, 4096)]
    cookies = [h.aio_pread(buf, off) for off, buf in buffers]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie in cookies:
        assert h.aio_command_completed(cookie)
    for off, buf in buffers:
        assert buf.to_bytearray() == data[off - 3 * MiB:off - 3 * MiB + 4096]
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, remote.uri()])
    h.shutdown()
    direct.shutdown()


def test_flags_reach_the_remote(nbdkit_memory, launcher, tmp_path):
    """FUA, flush, trim, write-zeroes with NO_HOLE off and fast-zero arrive at nbdkit as sent."""
    remote = nbdkit_memory("64M", filters=["log"], extra=[f"logfile={tmp_path / 'requests.log'}"])
    _, uri = blockd_over(launcher, tmp_path, remote.blockdev("disk0", ",discard=unmap"))
    h = connect(uri)
    assert h.can_fast_zero() and h.can_fua() and h.can_trim()
    h.pwrite(b"x" * 4096, 0, nbd.CMD_FLAG_FUA)
    h.zero(65536, 1 * MiB, nbd.CMD_FLAG_FAST_ZERO)
    h.trim(65536, 2 * MiB)
    h.flush()
    h.shutdown()
    log = (tmp_path / "requests.log").read_text()
    assert re.search(r"Write id=\d+ offset=0x0 count=0x1000 fua=1", log), log
    assert re.search(r"Zero id=\d+ offset=0x100000 count=0x10000 trim=1 fua=0 fast=1", log), log
    assert re.search(r"Trim id=\d+ offset=0x200000 count=0x10000", log), log
    assert re.search(r"Flush id=\d+", log), log


def test_sparseness_survives_the_chain(nbdkit_memory, launcher, tmp_path):
    """nbdinfo --map through blockd equals nbdinfo --map on nbdkit's sparse memory plugin."""
    require("nbdinfo")
    remote = nbdkit_memory("64M")
    direct = connect(remote.uri())
    direct.pwrite(os.urandom(128 * 1024), 1 * MiB)
    direct.pwrite(os.urandom(64 * 1024), 20 * MiB)
    direct.shutdown()
    _, uri = blockd_over(launcher, tmp_path, remote.blockdev("remote"),
                         ["--blockdev", "driver=raw,node-name=disk0,file=remote"])
    ours = json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)
    theirs = json.loads(run(["nbdinfo", "--map", "--json", remote.uri()]).stdout)
    assert ours == theirs
    assert any(e["type"] & 1 for e in ours) and any(not e["type"] & 1 for e in ours)


def test_multi_conn_opens_several_connections(nbdkit_memory, launcher, tmp_path):
    """nbdkit's memory plugin advertises multi-conn: blockd opens several connections and spreads requests."""
    remote = nbdkit_memory("64M", filters=["log"], extra=[f"logfile={tmp_path / 'conn.log'}"])
    _, uri = blockd_over(launcher, tmp_path, remote.blockdev("disk0"))
    h = connect(uri)
    for off in range(0, 4 * MiB, 64 * 1024):
        h.pwrite(b"m" * 4096, off)
    h.shutdown()
    log = (tmp_path / "conn.log").read_text()
    connections = set(re.findall(r"connection=(\d+) Connect", log))
    writers = set(re.findall(r"connection=(\d+) Write", log))
    assert len(connections) >= 2, log
    assert len(writers) >= 2, log


def test_blockd_to_blockd_and_qsd_chains(launcher, tmp_path):
    """blockd → blockd and blockd → qemu-storage-daemon: writes land in the last server's file."""
    require("qemu-img", "qemu-storage-daemon")
    for kind in ("blockd", "qsd"):
        image = tmp_path / f"{kind}.img"
        run(["qemu-img", "create", "-f", "raw", image, "32M"])
        rsock = tmp_path / f"{kind}-nbd.sock"
        args = ["--blockdev", f"driver=file,node-name=f,filename={image}",
                "--nbd-server", f"addr.type=unix,addr.path={rsock}",
                "--export", "type=nbd,id=e0,node-name=f,name=base,writable=on"]
        (launcher.blockd if kind == "blockd" else launcher.qsd)(*args, name=f"{kind}-remote")
        _, uri = blockd_over(launcher, tmp_path, f"driver=nbd,node-name=disk0,server.type=unix,server.path={rsock},export=base",
                             name=f"front-{kind}")
        h = connect(uri)
        data = os.urandom(512 * 1024)
        h.pwrite(data, 5 * MiB)
        h.flush()
        h.shutdown()
        with open(image, "rb") as f:
            f.seek(5 * MiB)
            assert f.read(len(data)) == data, kind


def test_qcow2_and_throttle_over_nbd(nbdkit_memory, launcher, tmp_path):
    """qcow2 over nbd over nbdkit's file plugin, and throttle over nbd: data checked against qemu-img."""
    require("qemu-img")
    image = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", image, "32M"])
    # An NBD export has a fixed size: the qcow2 file is made large enough for what the test allocates.
    os.truncate(image, 16 * MiB)
    remote = nbdkit_memory(plugin=["file", str(image)], name="nbdkit-file")
    sock = tmp_path / "q.sock"
    daemon = launcher.blockd("--blockdev", remote.blockdev("remote"),
                             "--blockdev", "driver=qcow2,node-name=disk0,file=remote",
                             "--object", "throttle-group,id=tg,x-bps-total=104857600",
                             "--blockdev", "driver=throttle,node-name=thr,throttle-group=tg,file=disk0",
                             *export_args(sock, node="thr", name="disk0"), name="qcow2nbd")
    uri = f"nbd+unix:///disk0?socket={sock}"
    h = connect(uri)
    data = os.urandom(256 * 1024)
    h.pwrite(data, 7 * MiB + 4096)
    h.flush()
    assert h.pread(len(data), 7 * MiB + 4096) == data
    h.shutdown()
    # qemu-img reads the same qcow2 over nbdkit: the image blockd wrote through the remote.
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, remote.uri()])
    daemon.stop()
    remote.stop()
    run(["qemu-img", "check", image])


def test_server_gone_without_reconnect_delay(nbdkit_memory, launcher, tmp_path):
    """reconnect-delay 0: requests fail with EIO at once, the client's connection stays up, another
    export is unaffected; once the server is back, requests succeed again."""
    remote = nbdkit_memory(plugin=["file", str(tmp_path / "gone.img")], name="gone") if False else None
    image = tmp_path / "gone.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    remote = nbdkit_memory(plugin=["file", str(image)], name="gone")
    sock = tmp_path / "front.sock"
    launcher.blockd("--blockdev", remote.blockdev("disk0"),
                    "--blockdev", "driver=null-co,node-name=other,size=16M,read-zeroes=on",
                    *export_args(sock, node="disk0", name="disk0"),
                    "--export", "type=nbd,id=e-other,node-name=other,name=other", name="gone0")
    h = connect(f"nbd+unix:///disk0?socket={sock}")
    h.pwrite(b"a" * 4096, 0)
    remote.kill()
    started = time.monotonic()
    with pytest.raises(nbd.Error) as failure:
        h.pread(4096, 0)
    assert failure.value.errno == nbd.EIO if hasattr(nbd, "EIO") else failure.value.errnum == 5
    assert time.monotonic() - started < 5
    other = connect(f"nbd+unix:///other?socket={sock}")
    assert other.pread(4096, 0) == b"\0" * 4096
    remote.start()
    assert wait_until(lambda: _reads(h), timeout=10)
    assert h.pread(4096, 0) == b"a" * 4096
    h.shutdown()
    other.shutdown()


def _reads(h) -> bool:
    try:
        h.pread(4096, 0)
        return True
    except nbd.Error:
        return False


def test_reconnect_delay_hides_a_restart(nbdkit_memory, launcher, tmp_path):
    """reconnect-delay=10: a client keeps writing while the remote is killed and restarted; it sees
    no error, and every byte it wrote is on the remote afterwards."""
    image = tmp_path / "restart.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    remote = nbdkit_memory(plugin=["file", str(image)], name="restart")
    sock = tmp_path / "front.sock"
    launcher.blockd("--blockdev", remote.blockdev("disk0", ",reconnect-delay=10"),
                    *export_args(sock, node="disk0", name="disk0"), name="restart0")
    h = connect(f"nbd+unix:///disk0?socket={sock}")
    written = {}
    errors = []

    def writer():
        try:
            for i in range(200):
                block = bytes([i % 251 + 1]) * 4096
                h.pwrite(block, i * 65536)
                written[i] = block
                time.sleep(0.01)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    remote.kill()
    time.sleep(1.0)
    remote.start()
    thread.join(30)
    assert not thread.is_alive()
    assert not errors, errors
    h.flush()
    h.shutdown()
    with open(image, "rb") as f:
        for i, block in written.items():
            f.seek(i * 65536)
            assert f.read(4096) == block, i
    assert len(written) == 200


def test_refusals_name_the_remote(nbdkit_memory, launcher, tmp_path):
    """An unreachable server, an unknown export, a hung server (open-timeout), a non-numeric port and
    TLS are refused at blockdev-add with a message; nothing is left in the graph."""
    remote = nbdkit_memory("16M", filters=["exportname"], extra=["exportname=disk", "exportname-strict=true"])
    daemon = launcher.blockd(name="refuse")
    q = daemon.qmp()
    missing = tmp_path / "nothing.sock"
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "n1"},
                    server={"type": "unix", "path": str(missing)})
    assert error["class"] == "GenericError" and str(missing) in error["desc"], error
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "n1"},
                    server={"type": "inet", "host": "127.0.0.1", "port": "notaport"})
    assert "notaport" in error["desc"], error
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "n1"}, export="nosuch",
                    server={"type": "unix", "path": str(remote.sock)})
    assert str(remote.sock) in error["desc"], error
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "n1"}, **{"tls-creds": "tls0"},
                    server={"type": "unix", "path": str(remote.sock)})
    assert "TLS" in error["desc"], error
    silent = SilentServer(tmp_path / "silent.sock")
    started = time.monotonic()
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "n1", "open-timeout": 1},
                    server={"type": "unix", "path": str(silent.path)})
    assert time.monotonic() - started < 5, error
    silent.close()
    names = [n["node-name"] for n in q.execute("query-named-block-nodes")]
    assert "n1" not in names
    q.execute("blockdev-add", driver="nbd", **{"node-name": "n1"}, export="disk",
              server={"type": "unix", "path": str(remote.sock)})
    q.close()


def test_query_and_errors_match_qsd(nbdkit_memory, launcher, tmp_path):
    """query-named-block-nodes of an nbd node, and the error for an unreachable server, as qemu-storage-daemon gives them."""
    remote = nbdkit_memory("16M")
    answers = {}
    for kind in ("blockd", "qsd"):
        daemon = (launcher.blockd if kind == "blockd" else launcher.qsd)(name=f"cmp-{kind}")
        q = daemon.qmp()
        q.execute("blockdev-add", driver="nbd", **{"node-name": "r0"}, export="",
                  server={"type": "unix", "path": str(remote.sock)})
        node = next(n for n in q.execute("query-named-block-nodes") if n["node-name"] == "r0")
        missing = tmp_path / "nothing.sock"
        error = q.error("blockdev-add", driver="nbd", **{"node-name": "r1"},
                        server={"type": "unix", "path": str(missing)})
        answers[kind] = (node, error)
        q.close()
    ours, theirs = answers["blockd"], answers["qsd"]
    for key in ("drv", "file", "ro", "encrypted", "detect_zeroes"):
        assert ours[0].get(key) == theirs[0].get(key), (key, ours[0].get(key), theirs[0].get(key))
    assert ours[0]["image"]["virtual-size"] == theirs[0]["image"]["virtual-size"]
    assert ours[0]["image"]["filename"] == theirs[0]["image"]["filename"]
    assert ours[1]["class"] == theirs[1]["class"]
    assert ours[1]["desc"] == theirs[1]["desc"], (ours[1], theirs[1])
