"""Credentials for the TLS tests, generated with GnuTLS's certtool and psktool into a directory."""
import subprocess
from pathlib import Path

from conftest import require


def _certtool(*args: str) -> None:
    subprocess.run(["certtool", *args], check=True, capture_output=True)


class CA:
    """A certificate authority in `root/name`: issues server and client certificate directories laid
    out as QEMU's tls-creds-x509 reads them."""

    def __init__(self, root: Path, name: str = "ca"):
        require("certtool")
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.key = self.dir / "ca-key.pem"
        self.cert = self.dir / "ca-cert.pem"
        _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(self.key))
        template = self.dir / "ca.info"
        template.write_text(f"cn = blockd test CA {name}\nca\ncert_signing_key\nexpiration_days = 2\n")
        _certtool("--generate-self-signed", "--load-privkey", str(self.key), "--template", str(template),
                  "--outfile", str(self.cert))

    def issue(self, directory: Path, role: str, organization: str, common_name: str, trust: "CA | None" = None) -> Path:
        """Writes ROLE-cert.pem / ROLE-key.pem (role 'server' or 'client') signed by this CA into
        `directory`, with ca-cert.pem of `trust` (default: this CA)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca-cert.pem").write_bytes((trust or self).cert.read_bytes())
        key = directory / f"{role}-key.pem"
        _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(key))
        key.chmod(0o600)
        usage = "tls_www_server" if role == "server" else "tls_www_client"
        names = "dns_name = localhost\nip_address = 127.0.0.1\n" if role == "server" else ""
        template = directory / f"{role}.info"
        template.write_text(f"organization = {organization}\ncn = {common_name}\n{names}{usage}\n"
                            "signing_key\nencryption_key\nexpiration_days = 2\n")
        _certtool("--generate-certificate", "--load-ca-certificate", str(self.cert), "--load-ca-privkey", str(self.key),
                  "--load-privkey", str(key), "--template", str(template), "--outfile", str(directory / f"{role}-cert.pem"))
        return directory


def psk_file(directory: Path, *users: str) -> Path:
    """A directory with keys.psk (psktool's username:hexkey lines) for `users`."""
    require("psktool")
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys.psk"
    for user in users:
        subprocess.run(["psktool", "-u", user, "-p", str(keys)], check=True, capture_output=True)
    keys.chmod(0o600)
    return keys


def single_user_psk(source: Path, user: str, directory: Path) -> Path:
    """A keys.psk in `directory` holding only `user`'s line of `source` (what a client is given)."""
    directory.mkdir(parents=True, exist_ok=True)
    line = next(l for l in source.read_text().splitlines() if l.split(":")[0] == user)
    keys = directory / "keys.psk"
    keys.write_text(line + "\n")
    keys.chmod(0o600)
    return keys
