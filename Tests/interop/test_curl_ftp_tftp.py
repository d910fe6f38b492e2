"""The curl drivers' ftp and tftp (issue #14): a qcow2 image served by a real FTP server (pyftpdlib,
with a user whose password comes from a `secret` object) and a raw image by tftpd-hpa, both on
loopback, exported by blockd and compared byte for byte with qemu-img."""
import subprocess
import threading
import time

import pytest

from client_helpers import run
from conftest import free_port, import_or_skip, require
from qmp_client import launcher  # noqa: F401


@pytest.fixture
def images(tmp_path):
    require("qemu-img", "qemu-io")
    root = tmp_path / "pub"
    root.mkdir()
    qcow2, raw = root / "disk.qcow2", root / "boot.raw"
    run(["qemu-img", "create", "-f", "qcow2", qcow2, "16M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", "-c", "write -P 0x33 9M 64k", qcow2])
    run(["qemu-img", "create", "-f", "raw", raw, "2M"])
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x7e 4k 600k", raw])
    return root, qcow2, raw


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qcow2_over_ftp_with_password_secret(images, launcher, tmp_path):
    servers = import_or_skip("pyftpdlib.servers")
    authorizers = import_or_skip("pyftpdlib.authorizers")
    handlers = import_or_skip("pyftpdlib.handlers")
    root, qcow2, _ = images
    authorizer = authorizers.DummyAuthorizer()
    authorizer.add_user("backup", "s3cret", str(root), perm="elr")
    handler = type("Handler", (handlers.FTPHandler,), {"authorizer": authorizer, "passive_ports": range(40000, 40100)})
    port = free_port()
    server = servers.FTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    try:
        sock = tmp_path / "ftp-nbd.sock"
        url = f"ftp://127.0.0.1:{port}/disk.qcow2"
        daemon = launcher.blockd(
            "--object", "secret,id=pw,data=s3cret",
            "--blockdev", f"driver=ftp,node-name=remote,url={url},read-only=on,username=backup,password-secret=pw,readahead=64k",
            "--blockdev", "driver=qcow2,node-name=disk0,file=remote,read-only=on",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0", name="ftp")
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", f"nbd+unix:///disk0?socket={sock}", qcow2])
        # Without the password the server refuses the login, and the open says so.
        error = daemon.qmp().error("blockdev-add", driver="ftp", **{"node-name": "anon", "read-only": True}, url=url)
        assert "CURL" in error["desc"], error
    finally:
        server.close_all()


def test_raw_over_tftp(images, launcher, tmp_path):
    require("in.tftpd")
    root, _, raw = images
    port = free_port()
    tftpd = subprocess.Popen(["in.tftpd", "-L", "-l", "-a", f"127.0.0.1:{port}", "-s", str(root)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        assert tftpd.poll() is None
        sock = tmp_path / "tftp-nbd.sock"
        daemon = launcher.blockd(
            "--blockdev", f"driver=tftp,node-name=boot,url=tftp://127.0.0.1:{port}/boot.raw,read-only=on",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=boot,name=boot", name="tftp")
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", f"nbd+unix:///boot?socket={sock}", raw])
        error = daemon.qmp().error("blockdev-add", driver="tftp", **{"node-name": "x", "read-only": True},
                                   url=f"tftp://127.0.0.1:{port}/absent.raw")
        assert "CURL" in error["desc"], error
    finally:
        tftpd.terminate()
        tftpd.wait(10)
