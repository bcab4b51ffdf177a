"""First start on the built-in config: make the state directory, a self-signed certificate and
a first user, so `trio-ocserv serve` works on a fresh machine with nothing configured.

Only files that are missing are created; an admin's own certificate or password file is never
touched. The generated password is printed once and never stored in clear.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import attrs

from trio_ocserv import certgen
from trio_ocserv.auth.passwd_file import DEFAULT_HASHER, PasswdFile, write_passwd_file_atomically

FIRST_USER = "vpnuser"
CERT_NAME = "server-cert.pem"
KEY_NAME = "server-key.pem"
PASSWD_NAME = "ocpasswd"


@attrs.frozen
class FirstStart:
    """What was created (None: it existed already)."""

    state_dir: Path
    certificate_pin: str | None
    username: str | None
    password: str | None = attrs.field(repr=False)

    def message(self) -> str:
        lines = [f"trio-ocserv: first start: state in {self.state_dir}"]
        if self.certificate_pin is not None:
            lines.append(
                f"  created a self-signed server certificate; clients pin it with\n"
                f"    openconnect --servercert {self.certificate_pin} https://<this host>/"
            )
        if self.username is not None:
            lines.append(
                f"  created the user {self.username!r} with the password {self.password!r}\n"
                f"  (shown only now; change it with: trio-ocserv passwd -c "
                f"{self.state_dir / PASSWD_NAME} {self.username})"
            )
        return "\n".join(lines) + "\n"

    @property
    def created_anything(self) -> bool:
        return self.certificate_pin is not None or self.username is not None


def ensure_default_state(state_dir: str | Path) -> FirstStart:
    """Create the state directory (0700), certificate and key, and the first user, if missing."""
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pin = None
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if not cert_path.exists() or not key_path.exists():
        hostname = socket.gethostname() or "trio-ocserv"
        pair = certgen.self_signed_server(hostname, [hostname, "localhost"])
        pair.write(cert_path, key_path)
        pin = certgen.pin_sha256(pair.cert)
    username = password = None
    passwd_path = directory / PASSWD_NAME
    if not passwd_path.exists():
        username, password = FIRST_USER, secrets.token_urlsafe(12)
        users = PasswdFile.parse("", str(passwd_path))
        users = users.with_user(username, "*", DEFAULT_HASHER.hash(password))
        write_passwd_file_atomically(str(passwd_path), users.render())
    os.chmod(directory, 0o700)
    return FirstStart(directory, pin, username, password)
