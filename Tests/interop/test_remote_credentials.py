"""Credentials of remote nodes (issues #14, #15): the `nbd` driver over TLS (x509 and PSK) to a
blockd or qemu-storage-daemon server, `secret` objects, and the curl drivers' password-secret.

qemu-storage-daemon is the reference twice: as the TLS server blockd connects to, and for the
messages of refused credentials and malformed secret objects."""
import os
import subprocess
import time

import pytest

from client_helpers import run
from conftest import free_port, import_or_skip, make_image, require
from qmp_client import MiB, launcher  # noqa: F401
from tls_helpers import CA, psk_file

nbd = import_or_skip("nbd")
SIZE = 8 * MiB


@pytest.fixture
def pki(tmp_path):
    ca = CA(tmp_path / "pki")
    rogue = CA(tmp_path / "pki", "rogue")
    return {
        "server": ca.issue(tmp_path / "server", "server", "Example", "localhost"),
        "client": ca.issue(tmp_path / "client", "client", "Example", "proxy.example.com"),
        # Trusts another CA: the server's certificate must be refused.
        "untrusting": ca.issue(tmp_path / "untrusting", "client", "Example", "proxy.example.com", trust=rogue),
    }


def wait_port(port: int, daemon) -> None:
    import socket
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log_text()
            time.sleep(0.02)


def tls_server(launcher, tmp_path, program: str, creds: str) -> tuple[object, int, bytes]:
    """`program` (blockd or qsd) exporting a random-filled image as 'disk0' over TCP with TLS."""
    image = make_image(tmp_path / f"{program}-disk.img", SIZE, b"random")
    port = free_port()
    start = launcher.blockd if program == "blockd" else launcher.qsd
    daemon = start("--object", creds,
                   "--blockdev", f"driver=file,node-name=disk0,filename={image}",
                   "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=tls0",
                   "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on", name=f"{program}-tls-{port}")
    wait_port(port, daemon)
    return daemon, port, image


def proxy(launcher, tmp_path, client_creds: str, port: int, name: str):
    """blockd with an `nbd` node over TLS to 127.0.0.1:port, re-exported in plaintext on a unix socket."""
    sock = tmp_path / f"{name}-nbd.sock"
    launcher.blockd("--object", client_creds,
                    "--blockdev", f"driver=nbd,node-name=remote,server.type=inet,server.host=127.0.0.1,"
                                  f"server.port={port},export=disk0,tls-creds=c0",
                    "--nbd-server", f"addr.type=unix,addr.path={sock}",
                    "--export", "type=nbd,id=p0,node-name=remote,name=disk0,writable=on", name=name)
    return f"nbd+unix:///disk0?socket={sock}"


def check_through(uri: str, image) -> None:
    """Reads and writes through the proxy; the bytes land in the server's image."""
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.get_size() == SIZE
    assert h.pread(65536, 0) == image.read_bytes()[:65536]
    payload = os.urandom(128 * 1024)
    h.pwrite(payload, 3 * MiB, nbd.CMD_FLAG_FUA)
    h.flush()
    h.shutdown()
    with open(image, "rb") as f:
        f.seek(3 * MiB)
        assert f.read(len(payload)) == payload


@pytest.mark.parametrize("program", ["blockd", "qsd"])
def test_nbd_node_over_x509(launcher, tmp_path, pki, program):
    """blockd's nbd node reaches a TLS-only server with x509 client credentials; qemu-img compares
    the plaintext re-export with the image."""
    require("qemu-img")
    daemon, port, image = tls_server(launcher, tmp_path, program,
                                     f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server,verify-peer=on")
    uri = proxy(launcher, tmp_path, f"tls-creds-x509,id=c0,dir={pki['client']},endpoint=client", port, f"proxy-{program}")
    check_through(uri, image)
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, str(image)])


@pytest.mark.parametrize("program", ["blockd", "qsd"])
def test_nbd_node_over_psk(launcher, tmp_path, program):
    """PSK credentials with a username; a wrong key cannot connect."""
    keys = psk_file(tmp_path / "psk-server", "proxy-1")
    daemon, port, image = tls_server(launcher, tmp_path, program, f"tls-creds-psk,id=tls0,dir={keys.parent},endpoint=server")
    uri = proxy(launcher, tmp_path, f"tls-creds-psk,id=c0,dir={keys.parent},endpoint=client,username=proxy-1",
                port, f"psk-{program}")
    check_through(uri, image)
    wrong = psk_file(tmp_path / "psk-wrong", "proxy-1")
    refused = launcher.blockd("--object", f"tls-creds-psk,id=c0,dir={wrong.parent},endpoint=client,username=proxy-1",
                              name=f"psk-wrong-{program}")
    error = refused.qmp().error("blockdev-add", driver="nbd", **{"node-name": "r", "tls-creds": "c0"},
                                server={"type": "inet", "host": "127.0.0.1", "port": str(port)}, export="disk0")
    assert error["class"] == "GenericError" and error["desc"], error


def test_untrusted_server_certificate_is_refused(launcher, tmp_path, pki):
    """A client that does not trust the server's CA is refused at open with a TLS message, and a
    plaintext nbd node to a TLS-only server is told TLS is required."""
    daemon, port, image = tls_server(launcher, tmp_path, "blockd",
                                     f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server,verify-peer=on")
    client = launcher.blockd("--object", f"tls-creds-x509,id=c0,dir={pki['untrusting']},endpoint=client", name="untrusting")
    q = client.qmp()
    server = {"type": "inet", "host": "127.0.0.1", "port": str(port)}
    error = q.error("blockdev-add", driver="nbd", **{"node-name": "r", "tls-creds": "c0"}, server=server, export="disk0")
    assert "certificate" in error["desc"].lower() or "tls" in error["desc"].lower(), error
    plain = q.error("blockdev-add", driver="nbd", **{"node-name": "r"}, server=server, export="disk0")
    assert "TLS" in plain["desc"], plain
    assert "r" not in [n["node-name"] for n in q.execute("query-named-block-nodes")]


def test_credential_refusals_match_qsd(launcher, tmp_path, pki):
    """A missing tls-creds object, server-endpoint credentials and a missing secret: the same
    error class and message as qemu-storage-daemon, nothing added."""
    port = free_port()
    objects = ["--object", f"tls-creds-x509,id=srv,dir={pki['server']},endpoint=server",
               "--object", "secret,id=pw,data=letmein"]
    server = {"type": "inet", "host": "127.0.0.1", "port": str(port)}
    answers = {}
    for program in ("blockd", "qsd"):
        start = launcher.blockd if program == "blockd" else launcher.qsd
        q = start(*objects, name=f"refusals-{program}").qmp()
        answers[program] = [
            q.error("blockdev-add", driver="nbd", **{"node-name": "r", "tls-creds": "nope"}, server=server),
            q.error("blockdev-add", driver="nbd", **{"node-name": "r", "tls-creds": "srv"}, server=server),
            q.error("object-add", **{"qom-type": "secret", "id": "s1"}),
            q.error("object-add", **{"qom-type": "secret", "id": "s1", "data": "a", "file": "/etc/hostname"}),
            q.error("object-add", **{"qom-type": "secret", "id": "s1", "data": "@@", "format": "base64"}),
        ]
    assert answers["blockd"] == answers["qsd"]
    assert answers["blockd"][0]["desc"] == "No TLS credentials with id 'nope'"


def test_secret_objects_on_the_command_line_match_qsd(tmp_path):
    """`--object secret` refusals at start, word for word as qemu-storage-daemon prints them."""
    require("qemu-storage-daemon")
    from conftest import blockd_binary
    cases = ["secret,id=s0", "secret,id=s0,data=a,file=/etc/hostname", f"secret,id=s0,file={tmp_path}/absent",
             "secret,id=s0,data=@@@,format=base64", "secret,id=s0,data=abc,keyid=s1"]
    for case in cases:
        lines = []
        for program in (blockd_binary(), "qemu-storage-daemon"):
            done = subprocess.run([program, "--object", case], capture_output=True, text=True, timeout=10)
            assert done.returncode == 1, (program, case, done.stderr)
            lines.append(done.stderr.strip())
        # qemu-storage-daemon: "--object CASE: MESSAGE"; blockd: "error: MESSAGE" (its own prefix).
        message = lines[1].split(f"--object {case}: ", 1)[1]
        assert lines[0].endswith(": " + message), (case, lines)


@pytest.mark.parametrize("program", ["blockd-nbd", "qemu-nbd"])
def test_blockd_nbd_serves_over_tls_like_qemu_nbd(tmp_path, pki, program):
    """`blockd-nbd --object tls-creds-x509,... --tls-creds ID --tls-authz ID FILE` serves as qemu-nbd
    does: a client with a certificate the authz allows reads the image, a plaintext client is told
    TLS is required, a client the authz does not name is refused."""
    require("nbdinfo", "nbdcopy", "qemu-nbd")
    from test_qemu_nbd_differential import blockd_nbd
    image = make_image(tmp_path / "disk.img", SIZE, b"random")
    port = free_port()
    executable = "qemu-nbd" if program == "qemu-nbd" else blockd_nbd()
    allowed = "O=Example,,CN=proxy.example.com"
    process = subprocess.Popen(
        [executable, "--object", f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server,verify-peer=on",
         "--object", f"authz-simple,id=auth0,identity={allowed}", "--tls-creds", "tls0", "--tls-authz", "auth0",
         "-b", "127.0.0.1", "-p", str(port), "-x", "disk0", "-f", "raw", "-t", str(image)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import socket
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() is not None else "no listener"
                time.sleep(0.05)
        uri = f"nbds://127.0.0.1:{port}/disk0?tls-certificates={pki['client']}"
        copy = tmp_path / "copy.img"
        subprocess.run(["nbdcopy", uri, str(copy)], check=True, timeout=60)
        assert copy.read_bytes() == image.read_bytes()
        plain = subprocess.run(["nbdinfo", "--size", f"nbd://127.0.0.1:{port}/disk0"], capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0 and "TLS" in plain.stderr, plain.stderr
        stranger = CA(tmp_path / "pki2", "other-ca")
        strange = stranger.issue(tmp_path / "strange", "client", "Elsewhere", "x.example.com", trust=None)
        (strange / "ca-cert.pem").write_bytes((pki["client"] / "ca-cert.pem").read_bytes())
        refused = subprocess.run(["nbdinfo", "--size", f"nbds://127.0.0.1:{port}/disk0?tls-certificates={strange}"],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0, refused.stdout
    finally:
        process.terminate()
        process.wait(10)
