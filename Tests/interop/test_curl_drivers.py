"""The read-only curl drivers: http and https (self-signed certificate, sslverify=off) served by a
real nginx on 127.0.0.1 started with its own configuration; qcow2 over http exported by blockd and
compared with qemu-img; a server without byte ranges (Python's http.server) refused at open."""
import http.server
import shutil
import socketserver
import subprocess
import threading
import time

import pytest

from client_helpers import run
from conftest import free_port, require
from qmp_client import MiB, launcher  # noqa: F401


class Nginx:
    """nginx in the foreground, serving `root` over http and https on loopback ports."""

    def __init__(self, workdir, root):
        require("nginx", "openssl")
        self.dir = workdir / "nginx"
        (self.dir / "tmp").mkdir(parents=True)
        self.port, self.ssl_port = free_port(), free_port()
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        temp = self.dir / "tmp"
        hashed = subprocess.run(["openssl", "passwd", "-apr1", "s3cret"], capture_output=True, text=True, check=True).stdout.strip()
        (self.dir / "htpasswd").write_text(f"backup:{hashed}\n")
        (self.dir / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    server {{ listen 127.0.0.1:{self.port}; root {root};
             location /private/ {{ auth_basic "blockd"; auth_basic_user_file {self.dir}/htpasswd; }} }}
    server {{ listen 127.0.0.1:{self.ssl_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; root {root}; }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e",
                                      str(self.dir / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (self.dir / "nginx.pid").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.dir / "error.log").read_text()
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class NoRanges(http.server.SimpleHTTPRequestHandler):
    """Python's file server, which answers every GET with the whole file and says nothing of ranges."""

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    require("qemu-img", "qemu-io")
    root = tmp_path / "www"
    root.mkdir()
    image = root / "disk.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", image, "16M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", "-c", "write -P 0x33 9M 64k", image])
    server = Nginx(tmp_path, root)
    yield server, image
    server.stop()


def test_qcow2_over_http_and_https(served, launcher, tmp_path):
    server, image = served
    sock = tmp_path / "curl-nbd.sock"
    launcher.blockd(
        "--blockdev", f"driver=http,node-name=web,url=http://127.0.0.1:{server.port}/disk.qcow2,read-only=on,readahead=64k",
        "--blockdev", "driver=qcow2,node-name=disk0,file=web,read-only=on",
        "--blockdev", f"driver=https,node-name=tls,url=https://127.0.0.1:{server.ssl_port}/disk.qcow2,read-only=on,sslverify=off",
        "--blockdev", "driver=qcow2,node-name=disk1,file=tls,read-only=on",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0",
        "--export", "type=nbd,id=e1,node-name=disk1,name=disk1", name="curl")
    for name in ("disk0", "disk1"):
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", f"nbd+unix:///{name}?socket={sock}", image])
    log = (server.dir / "access.log").read_text()
    assert " 206 " in log, log


def test_refusals(served, launcher, tmp_path):
    server, image = served
    daemon = launcher.blockd(name="refuse")
    q = daemon.qmp()
    # A self-signed certificate is refused while sslverify is on.
    error = q.error("blockdev-add", driver="https", **{"node-name": "t", "read-only": True},
                    url=f"https://127.0.0.1:{server.ssl_port}/disk.qcow2")
    assert "CURL" in error["desc"], error
    error = q.error("blockdev-add", driver="http", **{"node-name": "t", "read-only": True},
                    url=f"http://127.0.0.1:{server.port}/missing.qcow2")
    assert "CURL" in error["desc"], error
    # A server that does not serve byte ranges.
    handler = lambda *args: NoRanges(*args, directory=str(image.parent))  # noqa: E731
    plain = socketserver.TCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        error = q.error("blockdev-add", driver="http", **{"node-name": "t", "read-only": True},
                        url=f"http://127.0.0.1:{plain.server_address[1]}/disk.qcow2")
        assert error["desc"] == "Server does not support 'range' (byte ranges).", error
    finally:
        plain.shutdown()
        plain.server_close()
    names = [n["node-name"] for n in q.execute("query-named-block-nodes")]
    assert "t" not in names
    q.close()


def test_password_secret(served, launcher, tmp_path):
    """username and password-secret (a `secret` object, here read from a base64 file) reach a
    server behind basic authentication; without the password the open is refused."""
    server, image = served
    private = image.parent / "private"
    private.mkdir()
    (private / "disk.qcow2").write_bytes(image.read_bytes())
    secret_file = tmp_path / "password.b64"
    secret_file.write_text("czNjcmV0")  # base64 of s3cret
    url = f"http://127.0.0.1:{server.port}/private/disk.qcow2"
    sock = tmp_path / "auth-nbd.sock"
    daemon = launcher.blockd(
        "--object", f"secret,id=pw,file={secret_file},format=base64",
        "--blockdev", f"driver=http,node-name=web,url={url},read-only=on,username=backup,password-secret=pw",
        "--blockdev", "driver=qcow2,node-name=disk0,file=web,read-only=on",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0", name="auth")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", f"nbd+unix:///disk0?socket={sock}", image])
    q = daemon.qmp()
    refused = q.error("blockdev-add", driver="http", **{"node-name": "anon", "read-only": True}, url=url)
    assert "401" in refused["desc"] or "CURL" in refused["desc"], refused
    missing = q.error("blockdev-add", driver="http", **{"node-name": "nope", "read-only": True, "password-secret": "absent"},
                      url=url, username="backup")
    assert missing["desc"] == "No secret with id 'absent'", missing
