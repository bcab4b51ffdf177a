"""The real system: Debian's shipped /etc/ocserv/ocserv.conf, and `serve -t` against `ocserv -t`.

Needs the ocserv package (for its config file and its binary); fails, never skips, without it.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import require_root_tools
from trio_ocserv.config import check_ready_to_serve, load_config

DEBIAN_CONFIG = "/etc/ocserv/ocserv.conf"
pytestmark = pytest.mark.e2e


def test_debian_shipped_config_loads() -> None:
    require_root_tools("ocserv")
    config = load_config(DEBIAN_CONFIG)
    assert config.settings.auth
    assert all(w.problem == "not implemented yet; ignored" for w in config.warnings)
    # It names no server certificate, so it loads but is not ready to serve (ocserv -t agrees).
    assert "server-cert" in {p.key for p in check_ready_to_serve(config)}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("cert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpn.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _base(cert: Path, key: Path) -> str:
    # socket-file and device are mandatory for ocserv (we have defaults for both).
    return (
        'auth = "plain[passwd=/etc/ocserv/ocpasswd]"\n'
        f"tcp-port = 443\nudp-port = 443\nserver-cert = {cert}\nserver-key = {key}\n"
        "ipv4-network = 10.147.93.0/24\nrun-as-user = root\n"
        "socket-file = /run/trio-ocserv-test-socket\ndevice = vpns\n"
    )


def _vhost(cert: Path, key: Path) -> str:
    return (
        f'[vhost:a.example]\nauth = "plain[passwd=/x]"\nserver-cert = {cert}\n'
        f"server-key = {key}\nipv4-network = 10.1.0.0/24\n"
    )


AGREED = [
    ("", True),
    ("frobnicate = 1", True),
    ('auth = "ldap"', False),
    ('auth = "certificate"', False),
    ('auth = "pam"', False),
    ("tcp-port = abc", False),
    ("ipv6-network = fd00::/64\nipv6-subnet-prefix = 48", False),
    ("ipv6-network = fd00::/64\nipv6-subnet-prefix = 200", False),
    ("ipv4-network = 10.0.0.0/33", False),
    ("run-as-user = no-such-user-x9", False),
    ("run-as-group = no-such-group-x9", False),
    ("dpd 90", False),
    ("route = 10.0.0.0/40", False),
    ("rekey-method = tls", False),
    ("ipv4-network = 10.0.0.0\nipv4-netmask = 255.255.255.0", True),
    ("[vhost:a.example]\ndpd = 5", False),
    ("VHOST", True),
    ("VHOST\nauth = certificate", False),
    ("server-cert = /nonexistent/cert.pem", False),
]


def _exit_codes(config: Path) -> tuple[int, int]:
    ocserv = subprocess.run(
        ["ocserv", "-t", "-c", str(config)], capture_output=True, timeout=60, check=False
    )
    ours = subprocess.run(
        [sys.executable, "-m", "trio_ocserv", "serve", "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in ours.stderr
    return ocserv.returncode, ours.returncode


@pytest.mark.parametrize(("added", "valid"), AGREED)
def test_serve_t_agrees_with_ocserv_t(
    certificate: tuple[Path, Path], tmp_path: Path, added: str, valid: bool
) -> None:
    require_root_tools("ocserv")
    config = tmp_path / "t.conf"
    config.write_text(_base(*certificate) + added.replace("VHOST", _vhost(*certificate)) + "\n")
    ocserv_code, our_code = _exit_codes(config)
    assert (ocserv_code == 0, our_code == 0) == (valid, valid)


def test_serve_t_agrees_with_ocserv_t_on_debian_config() -> None:
    require_root_tools("ocserv")
    ocserv_code, our_code = _exit_codes(Path(DEBIAN_CONFIG))
    assert ocserv_code != 0
    assert our_code == 1


@pytest.mark.parametrize(
    "added",
    ["idle-timeout = -5", "compression = maybe", 'banner = "abc', "[vhost:]", "udp-port = 70000"],
)
def test_where_ocserv_accepts_nonsense_we_refuse(
    certificate: tuple[Path, Path], tmp_path: Path, added: str
) -> None:
    require_root_tools("ocserv")
    config = tmp_path / "t.conf"
    config.write_text(_base(*certificate) + added + "\n")
    assert _exit_codes(config) == (0, 1)
