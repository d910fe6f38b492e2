"""blockd's command line and process behaviour: --help, --version, option errors, --pidfile,
--daemonize, and SIGTERM with clients connected."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import blockd_binary, free_port, make_image, require, import_or_skip
from client_helpers import MiB, nbdinfo_json, output, qemu_img_info, qemu_io, read_file, run


def test_help_mentions_the_options():
    proc = run([blockd_binary(), "--help"], timeout=10)
    text = output(proc)
    for option in ("--blockdev", "--nbd-server", "--export", "--pidfile", "--daemonize"):
        assert option in text, option


def test_version():
    proc = run([blockd_binary(), "--version"], timeout=10)
    assert re.search(r"\d+\.\d+", output(proc)), output(proc)


# Each: (arguments, words the error message must contain).  Every case also gets a unix --nbd-server,
# which must never be created.
BAD_OPTIONS = {
    "unknown-key-no-filename": (["--blockdev", "driver=file,node-name=f0,filenme={img}"], ["filenme"]),
    "unknown-key": (["--blockdev", "driver=file,node-name=f0,filename={img},cache.dirct=on",
                     "--export", "type=nbd,id=e0,node-name=f0"], ["cache.dirct"]),
    "unknown-driver": (["--blockdev", "driver=bogus,node-name=b0"], ["bogus"]),
    "export-missing-node": (["--blockdev", "driver=null-co,node-name=n0,size=1M",
                             "--export", "type=nbd,id=e0,node-name=nope"], ["nope"]),
    "bad-size": (["--blockdev", "driver=null-co,node-name=n0,size=abc",
                  "--export", "type=nbd,id=e0,node-name=n0"], ["size", "abc"]),
    "bad-size-json": (["--blockdev", '{"driver": "null-co", "node-name": "n0", "size": "1.5 bananas"}',
                       "--export", "type=nbd,id=e0,node-name=n0"], ["size"]),
    "writable-over-read-only": (["--blockdev", "driver=file,node-name=f0,filename={img},read-only=on",
                                 "--blockdev", "driver=raw,node-name=r0,file=f0,read-only=on",
                                 "--export", "type=nbd,id=e0,node-name=r0,writable=on"], ["read-only"]),
    "nonexistent-file": (["--blockdev", "driver=file,node-name=f0,filename={tmp}/no/such.img",
                          "--blockdev", "driver=raw,node-name=r0,file=f0",
                          "--export", "type=nbd,id=e0,node-name=r0"], ["no/such.img", "No such file"]),
    "bad-writable": (["--blockdev", "driver=null-co,node-name=n0",
                      "--export", "type=nbd,id=e0,node-name=n0,writable=maybe"], ["writable"]),
    "duplicate-node": (["--blockdev", "driver=null-co,node-name=n0",
                        "--blockdev", "driver=null-co,node-name=n0"], ["n0"]),
    "bad-json": (["--blockdev", '{"driver": "null-co",'], ["JSON"]),
    "port-out-of-range": (["--blockdev", "driver=null-co,node-name=n0",
                           "--export", "type=nbd,id=e0,node-name=n0",
                           "--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=99999"], ["99999"]),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_fails_before_listening(tmp_path, case):
    args, words = BAD_OPTIONS[case]
    img = make_image(tmp_path / "disk.img", MiB)
    sock = tmp_path / "nbd.sock"
    args = [a.replace("{img}", str(img)).replace("{tmp}", str(tmp_path)) for a in args]
    cmd = [blockd_binary(), *args, "--nbd-server", f"addr.type=unix,addr.path={sock}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=10)
        pytest.fail(f"blockd accepted {args} and kept running (socket exists: {sock.exists()}):\n{text}")
    assert proc.returncode != 0, f"blockd accepted {args}:\n{text}"
    for word in words:
        assert word in text, f"error message does not mention {word!r}:\n{text}"
    assert not sock.exists(), "a socket was left behind"
    assert not re.search(r"\bready\b|listening on", text), text


def test_listen_failure_removes_earlier_listeners(tmp_path):
    """The second listener cannot bind (port taken): blockd exits non-zero and the first socket is gone."""
    sock = tmp_path / "nbd.sock"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([blockd_binary(), "--blockdev", "driver=null-co,node-name=n0",
                               "--export", "type=nbd,id=e0,node-name=n0",
                               "--nbd-server", f"addr.type=unix,addr.path={sock}",
                               "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port}"],
                              capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0, output(proc)
    assert str(port) in output(proc), output(proc)
    assert not sock.exists(), "the unix socket of the first --nbd-server was left behind"


def test_json_options_accepted(start_blockd):
    require("qemu-img", "nbdinfo")
    d = start_blockd(export="n0", args=[
        "--blockdev", '{"driver":"null-co","node-name":"n0","size":1048576}',
        "--export", '{"type":"nbd","id":"e0","node-name":"n0","description":"json, with comma"}',
    ])
    assert qemu_img_info(d.uri())["virtual-size"] == 1048576
    assert nbdinfo_json(d.uri())["exports"][0]["description"] == "json, with comma"


def test_pidfile(start_blockd, tmp_path):
    pidfile = tmp_path / "blockd.pid"
    d = start_blockd(image=None, extra=["--pidfile", str(pidfile)])
    # Written just after the listeners are up, which is when start_blockd returns: wait a moment for it.
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
        assert time.monotonic() < deadline and d.proc.poll() is None, "no pidfile"
        time.sleep(0.01)
    assert pidfile.read_text().strip() == str(d.proc.pid)
    assert d.stop() == 0
    assert not pidfile.exists(), "the pidfile outlived the daemon"


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_daemonize(tmp_path):
    require("qemu-io")
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    sock = tmp_path / "nbd.sock"
    pidfile = tmp_path / "blockd.pid"
    port = free_port()
    cmd = [blockd_binary(), "--blockdev", f"driver=file,node-name=f0,filename={image}",
           "--blockdev", "driver=raw,node-name=disk0,file=f0",
           "--export", "type=nbd,id=e0,node-name=disk0,writable=on",
           "--nbd-server", f"addr.type=unix,addr.path={sock}",
           "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
           "--daemonize", "--pidfile", str(pidfile)]
    pid = None
    try:
        # With pipes on stdout/stderr: the daemon must not keep them open, or this would hang.
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        finally:
            pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
        assert proc.returncode == 0, output(proc)
        assert pid is not None and _pid_running(pid)
        # Listening already when the parent returned: no waiting here.
        assert sock.exists()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        qemu_io(f"nbd+unix:///disk0?socket={sock}", "write -P 0x3c 1M 64k")
        qemu_io(f"nbd://127.0.0.1:{port}/disk0", "read -P 0x3c 1M 64k")
        assert read_file(image, MiB, 65536) == b"\x3c" * 65536
        # The daemon is in its own session, detached from ours.
        assert os.getsid(pid) == pid
    finally:
        if pid is not None and _pid_running(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_running(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not _pid_running(pid), "daemon did not exit on SIGTERM"
    assert not pidfile.exists()


def test_daemonize_reports_start_up_failure(tmp_path):
    """A failure after the fork (cannot listen) is still reported by the parent, which exits non-zero."""
    proc = subprocess.run([blockd_binary(), "--blockdev", "driver=null-co,node-name=n0",
                           "--export", "type=nbd,id=e0,node-name=n0",
                           "--nbd-server", f"addr.type=unix,addr.path={tmp_path}/missing/dir/nbd.sock",
                           "--daemonize", "--pidfile", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0
    assert "missing/dir/nbd.sock" in output(proc), output(proc)
    assert not (tmp_path / "p").exists()


def test_sigterm_with_idle_client_connected(start_blockd, tmp_path):
    nbd = import_or_skip("nbd")
    image = make_image(tmp_path / "disk.img", 4 * MiB)
    d = start_blockd(image=image)
    h = nbd.NBD()
    h.connect_uri(d.uri())
    h.pwrite(b"\x5e" * 4096, 8192)  # acknowledged before the signal: must be in the file afterwards
    start = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        status = d.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blockd did not exit within 10 s of SIGTERM with a client connected:\n{d.log_text()}")
    assert status == 0, d.log_text()
    assert time.monotonic() - start < 10
    assert read_file(image, 8192, 4096) == b"\x5e" * 4096
    assert not d.sock.exists()
    # The client finds the connection gone, rather than hanging.
    with pytest.raises(nbd.Error):
        h.pread(512, 0)
    del h
