"""NBD over TLS (issue #15): x509 and PSK credentials, authz objects, real clients over 127.0.0.1.

Every credential is generated here (certtool, psktool). qemu-storage-daemon, given the same
objects, is the reference for who gets in and who does not."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, import_or_skip, make_image, require
from nbdwire import (Conn, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_LIST, OPT_STARTTLS, REP_ACK, REP_ERR_INVALID, REP_ERR_TLS_REQD,
                     info_request)
from qmp_client import launcher  # noqa: F401
from tls_helpers import CA, psk_file, single_user_psk

SIZE = 4 << 20
CLIENT_DN_ORG = "Example"
CLIENT_CN = "backup.example.com"


@pytest.fixture
def pki(tmp_path):
    """A CA with a server directory and two client directories (one allowed, one not), plus a client
    directory from another CA."""
    ca = CA(tmp_path / "pki")
    other = CA(tmp_path / "pki", "rogue-ca")
    return {
        "server": ca.issue(tmp_path / "server", "server", "Example", "localhost"),
        "client": ca.issue(tmp_path / "client", "client", CLIENT_DN_ORG, CLIENT_CN),
        "stranger": ca.issue(tmp_path / "stranger", "client", "Elsewhere", "stranger.example.com"),
        # Signed by another CA (but trusting the server's), with the DN the authz objects allow.
        "rogue": other.issue(tmp_path / "rogue", "client", CLIENT_DN_ORG, CLIENT_CN, trust=ca),
    }


def client_identity(organization: str = CLIENT_DN_ORG, common_name: str = CLIENT_CN) -> str:
    """A client certificate's distinguished name as GnuTLS's gnutls_x509_crt_get_dn prints it, the
    string QEMU's authz objects match: the certificate's order, O then CN (certtool -i shows the
    RFC 4514 reverse). qemu-storage-daemon, given the same authz object, checks it below."""
    return f"O={organization},CN={common_name}"


def comma_escaped(value: str) -> str:
    return value.replace(",", ",,")


def image_with_data(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img", SIZE, b"random")


def x509_server(launcher, tmp_path, pki, authz: list[str] | None = None, tls_authz: str | None = None, program="blockd"):
    """A daemon exporting disk.img as 'disk0' over TCP with tls-creds-x509 (verify-peer on)."""
    image = tmp_path / "disk.img"
    if not image.exists():
        image_with_data(tmp_path)
    port = free_port()
    server = f"addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=tls0" + (f",tls-authz={tls_authz}" if tls_authz else "")
    args = ["--object", f"tls-creds-x509,id=tls0,dir={pki['server']},endpoint=server,verify-peer=on",
            *[arg for spec in (authz or []) for arg in ("--object", spec)],
            "--blockdev", f"driver=file,node-name=disk0,filename={image}",
            "--nbd-server", server,
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on"]
    start = launcher.blockd if program == "blockd" else launcher.qsd
    daemon = start(*args, name=f"{program}-{port}")
    deadline = time.monotonic() + 10
    while not _port_open(port):
        assert time.monotonic() < deadline, daemon.log_text()
        time.sleep(0.02)
    daemon.port = port
    return daemon


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def nbds(port: int, query: str, user: str = "") -> str:
    return f"nbds://{user + '@' if user else ''}127.0.0.1:{port}/disk0?{query}"


def libnbd_x509(nbd, port: int, certificates: Path):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(str(certificates))
    h.set_export_name("disk0")
    h.connect_tcp("127.0.0.1", str(port))
    return h


def qemu_client_args(port: int, directory: Path, kind: str = "x509", user: str | None = None) -> list[str]:
    creds = f"tls-creds-{kind},id=t0,dir={directory},endpoint=client" + (f",username={user}" if user else "")
    return ["--object", creds, "--image-opts",
            f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk0,tls-creds=t0"]


def test_x509_clients_read_and_write_byte_for_byte(launcher, tmp_path, pki):
    """nbdinfo, nbdcopy, libnbd, qemu-img and qemu-io over x509 TLS, with an authz-simple naming the
    client's DN (QEMU's ',,' escaping); data checked against the image."""
    require("nbdinfo", "nbdcopy", "qemu-img", "qemu-io")
    nbd = import_or_skip("nbd")
    identity = client_identity()
    daemon = x509_server(launcher, tmp_path, pki, [f"authz-simple,id=auth0,identity={comma_escaped(identity)}"], "auth0")
    image = tmp_path / "disk.img"
    query = f"tls-certificates={pki['client']}"

    info = subprocess.run(["nbdinfo", "--size", nbds(daemon.port, query)], capture_output=True, text=True, timeout=30)
    assert info.returncode == 0 and int(info.stdout) == SIZE, info.stderr + daemon.log_text()

    copy = tmp_path / "copy.img"
    subprocess.run(["nbdcopy", nbds(daemon.port, query), str(copy)], check=True, timeout=60)
    assert copy.read_bytes() == image.read_bytes()

    h = libnbd_x509(nbd, daemon.port, pki["client"])
    payload = os.urandom(256 * 1024)
    h.pwrite(payload, 1 << 20)
    h.flush()
    assert h.pread(len(payload), 1 << 20) == payload
    assert h.pread(4096, 0) == image.read_bytes()[:4096]
    h.shutdown()
    with open(image, "rb") as f:
        f.seek(1 << 20)
        assert f.read(len(payload)) == payload

    out = subprocess.run(["qemu-img", "info", "--output=json", *qemu_client_args(daemon.port, pki["client"])],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["virtual-size"] == SIZE
    io = subprocess.run(["qemu-io", *qemu_client_args(daemon.port, pki["client"]),
                         "-c", "write -P 0x5a 2M 64k", "-c", "read -P 0x5a 2M 64k"], capture_output=True, text=True, timeout=30)
    assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io.stdout + io.stderr
    with open(image, "rb") as f:
        f.seek(2 << 20)
        assert f.read(65536) == b"\x5a" * 65536
    log = daemon.log_text()
    assert f"client '{identity}'" in log and "userspace TLS" in log, log


def test_plain_client_gets_tls_required_like_qemu(launcher, tmp_path, pki):
    """Before STARTTLS every option but ABORT is answered NBD_REP_ERR_TLS_REQD, as qemu-storage-daemon
    answers; NBD_OPT_EXPORT_NAME ends the connection; a plain libnbd client is refused."""
    nbd = import_or_skip("nbd")
    ours = x509_server(launcher, tmp_path, pki)
    reference = x509_server(launcher, tmp_path, pki, program="qsd")
    for daemon in (ours, reference):
        with Conn(socket.create_connection(("127.0.0.1", daemon.port), timeout=5)) as c:
            c.handshake()
            for option, data in ((OPT_LIST, b""), (OPT_GO, info_request("disk0")), (4711, b"")):
                (reply,) = c.option(option, data)
                assert reply.type == REP_ERR_TLS_REQD, (daemon.program, option, reply)
                assert reply.data == f"Option 0x{option:x} not permitted before TLS".encode(), (daemon.program, reply)
            # doc/proto.md: ABORT is served before TLS (blockd acknowledges); qemu 7.2 answers TLS_REQD.
            assert [r.type for r in c.option(OPT_ABORT)] == ([REP_ACK] if daemon.program != "qemu-storage-daemon" else [REP_ERR_TLS_REQD])
        with Conn(socket.create_connection(("127.0.0.1", daemon.port), timeout=5)) as c:
            c.handshake()
            (reply,) = c.option(OPT_STARTTLS, b"x")
            assert reply.type == REP_ERR_INVALID, (daemon.program, reply)   # qemu then closes; blockd goes on
        with Conn(socket.create_connection(("127.0.0.1", daemon.port), timeout=5)) as c:
            c.handshake()
            c.send_option(OPT_EXPORT_NAME, b"disk0")
            assert c.read_until_closed(5) == b"", daemon.program
        h = nbd.NBD()
        h.set_export_name("disk0")
        with pytest.raises(nbd.Error):
            h.connect_tcp("127.0.0.1", str(daemon.port))


def test_refusals_leave_other_clients_alone(launcher, tmp_path, pki):
    """A wrong CA, an unauthorized DN, no client certificate, garbage instead of a ClientHello and a
    client that stops mid-handshake are refused and logged, while an established client goes on;
    qemu-storage-daemon with the same objects lets in and refuses the same clients."""
    nbd = import_or_skip("nbd")
    identity = client_identity()
    authz = [f"authz-simple,id=auth0,identity={comma_escaped(identity)}"]
    ours = x509_server(launcher, tmp_path, pki, authz, "auth0")
    reference = x509_server(launcher, tmp_path, pki, authz, "auth0", program="qsd")
    established = libnbd_x509(nbd, ours.port, pki["client"])
    before = established.pread(65536, 0)
    for daemon in (ours, reference):
        for who in ("rogue", "stranger"):
            with pytest.raises(nbd.Error):
                libnbd_x509(nbd, daemon.port, pki[who]).pread(512, 0)
        libnbd_x509(nbd, daemon.port, pki["client"]).shutdown()
    # Garbage instead of a ClientHello, and a ClientHello cut short.
    for junk in (b"GET / HTTP/1.0\r\n\r\n" * 8, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
        with Conn(socket.create_connection(("127.0.0.1", ours.port), timeout=5)) as c:
            c.handshake()
            (reply,) = c.option(OPT_STARTTLS)
            assert reply.type == REP_ACK
            c.send(junk)
            if len(junk) > 20:
                assert c.read_until_closed(5) is not None
    assert established.pread(65536, 0) == before
    established.shutdown()
    log = ours.log_text()
    assert "Elsewhere" in log and "is not authorized by 'auth0'" in log, log
    assert "Certificate verification failed" in log or "certificate" in log.lower(), log


def test_psk_users_with_authz_list_globs(launcher, tmp_path):
    """PSK: keys.psk from psktool, an authz-list allowing 'backup-*' by glob and denying the rest;
    nbdinfo with tls-psk-file, libnbd with set_tls_psk_file, qemu-img with tls-creds-psk."""
    require("nbdinfo", "qemu-img")
    nbd = import_or_skip("nbd")
    keys = psk_file(tmp_path / "psk", "backup-1", "intruder")
    image = image_with_data(tmp_path)
    port = free_port()
    daemon = launcher.blockd(
        "--object", f"tls-creds-psk,id=tls0,dir={keys.parent},endpoint=server",
        "--object", "authz-list,id=auth0,policy=deny,rules.0.match=backup-*,rules.0.policy=allow,rules.0.format=glob",
        "--blockdev", f"driver=file,node-name=disk0,filename={image}",
        "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=tls0,tls-authz=auth0",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on")
    backup_keys = single_user_psk(keys, "backup-1", tmp_path / "client-backup")
    intruder_keys = single_user_psk(keys, "intruder", tmp_path / "client-intruder")
    info = subprocess.run(["nbdinfo", "--size", nbds(port, f"tls-psk-file={backup_keys}", "backup-1")],
                          capture_output=True, text=True, timeout=30)
    assert info.returncode == 0 and int(info.stdout) == SIZE, info.stderr + daemon.log_text()
    refused = subprocess.run(["nbdinfo", "--size", nbds(port, f"tls-psk-file={intruder_keys}", "intruder")],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(str(backup_keys))
    h.set_tls_username("backup-1")
    h.set_export_name("disk0")
    h.connect_tcp("127.0.0.1", str(port))
    assert h.pread(65536, 4096) == image.read_bytes()[4096:4096 + 65536]
    h.shutdown()
    out = subprocess.run(["qemu-img", "info", "--output=json", *qemu_client_args(port, backup_keys.parent, "psk", "backup-1")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["virtual-size"] == SIZE, out.stderr
    log = daemon.log_text()
    assert "TLS client 'intruder' is not authorized by 'auth0'" in log, log
    assert "client 'backup-1'" in log and "GCM" in log, log


def test_qmp_objects_and_server_start(launcher, tmp_path, pki):
    """object-add of TLS credentials and authz objects, nbd-server-start with them, object-del
    refused while the server uses them; the errors of bad references are QEMU's."""
    nbd = import_or_skip("nbd")
    image = image_with_data(tmp_path)
    identity = client_identity()
    listfile = tmp_path / "authz.json"
    listfile.write_text(json.dumps({"policy": "deny", "rules": [{"match": "*CN=nobody*", "policy": "allow", "format": "glob"}]}))
    results = {}
    for program in ("blockd", "qsd"):
        start = launcher.blockd if program == "blockd" else launcher.qsd
        daemon = start("--blockdev", f"driver=file,node-name=disk0,filename={image}", name=f"{program}-objects")
        port = free_port()
        with daemon.qmp() as qmp:
            qmp.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(pki["server"]),
                                       "endpoint": "server", "verify-peer": True})
            qmp.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tlsc", "dir": str(pki["client"]), "endpoint": "client"})
            if program == "blockd":
                qmp.execute("object-add", {"qom-type": "authz-listfile", "id": "auth0", "filename": str(listfile), "refresh": True})
            else:   # Debian's qemu-storage-daemon 7.2 has no authz-listfile: the same rules as authz-list
                qmp.execute("object-add", {"qom-type": "authz-list", "id": "auth0", "policy": "deny",
                                           "rules": [{"match": "*CN=nobody*", "policy": "allow", "format": "glob"}]})
            addr = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}
            errors = [qmp.error("nbd-server-start", addr=addr, **{"tls-creds": name})["desc"] for name in ("nope", "auth0", "tlsc")]
            qmp.execute("nbd-server-start", addr=addr, **{"tls-creds": "tls0", "tls-authz": "auth0"})
            qmp.execute("block-export-add", type="nbd", id="e0", **{"node-name": "disk0", "name": "disk0", "writable": False})
            with pytest.raises(nbd.Error):
                libnbd_x509(nbd, port, pki["client"]).pread(512, 0)
            if program == "blockd":
                # authz-listfile: a changed file is read again for the next client.
                listfile.write_text(json.dumps({"policy": "deny", "rules": [
                    {"match": f"*CN={CLIENT_CN}*", "policy": "allow", "format": "glob"}]}))
                os.utime(listfile, (time.time() + 5, time.time() + 5))
                h = libnbd_x509(nbd, port, pki["client"])
                assert h.pread(512, 0) == image.read_bytes()[:512]
                (client,) = qmp.execute("x-blockd-query-nbd-clients")
                assert client["export"] == "e0" and client["tls-identity"] == identity, client
                assert client["tls"].startswith("TLS1.") and "GCM" in client["tls"], client
                assert isinstance(client["kernel-tls"], bool), client
                h.shutdown()
            in_use = [qmp.cmd("object-del", id=name).get("error", {}).get("desc") for name in ("tls0", "auth0")]
            qmp.execute("nbd-server-stop")
            if program == "blockd":   # qemu-storage-daemon deleted them above
                qmp.execute("object-del", id="tls0")
                qmp.execute("object-del", id="auth0")
        results[program] = (errors, in_use)
    assert results["blockd"][0] == results["qsd"][0], results
    # qemu-storage-daemon lets objects in use go; blockd refuses, as the issue asks.
    assert results["blockd"][1] == ["object 'tls0' is in use, can not be deleted", "object 'auth0' is in use, can not be deleted"]


def test_missing_credentials_are_refused_at_start(launcher, tmp_path, pki):
    """A tls-creds-x509 directory without the server key makes blockd refuse to start, naming the file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ca-cert.pem").write_bytes((pki["server"] / "ca-cert.pem").read_bytes())
    from conftest import blockd_binary
    result = subprocess.run([blockd_binary(), "--object", f"tls-creds-x509,id=tls0,dir={empty},endpoint=server"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert f"Unable to access credentials {empty}/server-cert.pem" in result.stderr + result.stdout


def test_sighup_rereads_psk_keys(tmp_path):
    """SIGHUP with --config: keys.psk is read again; a new user gets in, a removed one no longer does,
    and a client connected before keeps working."""
    nbd = import_or_skip("nbd")
    from conftest import blockd_binary
    keys = psk_file(tmp_path / "psk", "alice")
    alice = single_user_psk(keys, "alice", tmp_path / "client-alice")
    image = image_with_data(tmp_path)
    port = free_port()
    config = tmp_path / "blockd.conf"
    config.write_text(f"object tls-creds-psk,id=tls0,dir={keys.parent},endpoint=server\n"
                      f"blockdev driver=file,node-name=disk0,filename={image}\n"
                      f"nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=tls0\n"
                      "export type=nbd,id=e0,node-name=disk0,name=disk0\n")
    log = open(tmp_path / "blockd.log", "wb")
    proc = subprocess.Popen([blockd_binary(), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def connect(user: str, keyfile: Path):
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(str(keyfile))
        h.set_tls_username(user)
        h.set_export_name("disk0")
        h.connect_tcp("127.0.0.1", str(port))
        return h

    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "blockd.log").read_text()
            time.sleep(0.02)
        established = connect("alice", alice)
        keys.unlink()
        psk_file(keys.parent, "bob")
        bob = single_user_psk(keys, "bob", tmp_path / "client-bob")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in (tmp_path / "blockd.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "blockd.log").read_text()
            time.sleep(0.05)
        connect("bob", bob).shutdown()
        with pytest.raises(nbd.Error):
            connect("alice", alice)
        assert established.pread(4096, 0) == image.read_bytes()[:4096]
        established.shutdown()
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        log.close()
