"""check_ready_to_serve: what the server needs from the system beyond a valid text."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_ocserv.config import check_ready_to_serve, parse_config_text


@pytest.fixture
def cert_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not checked here\n")
    key.write_text("not checked here\n")
    return cert, key


def _ready_text(cert: Path, key: Path) -> str:
    return (
        'auth = "plain[passwd=/etc/ocserv/ocpasswd]"\n'
        "tcp-port = 443\n"
        f"server-cert = {cert}\nserver-key = {key}\n"
        "ipv4-network = 10.147.93.0/24\n"
    )


def test_complete_config_is_ready(cert_files: tuple[Path, Path]) -> None:
    config = parse_config_text(
        _ready_text(*cert_files) + "run-as-user = root\nrun-as-group = root\n", "r.conf"
    )
    assert check_ready_to_serve(config) == []


def test_pkcs11_key_urls_are_not_files(cert_files: tuple[Path, Path]) -> None:
    cert, _ = cert_files
    text = _ready_text(cert, Path("pkcs11:object=vpn-key;object-type=private"))
    assert check_ready_to_serve(parse_config_text(text, "r.conf")) == []


def test_missing_pieces_are_all_reported() -> None:
    config = parse_config_text('auth = "plain[passwd=/x]"\n', "r.conf")
    assert [str(p) for p in check_ready_to_serve(config)] == [
        "r.conf: tcp-port: is required (e.g. tcp-port = 443)",
        "r.conf: server-cert: is required, with a matching server-key",
        "r.conf: ipv4-network: no address pool: set ipv4-network and/or ipv6-network",
    ]


def test_missing_certificate_files_cite_their_lines(tmp_path: Path) -> None:
    text = _ready_text(tmp_path / "nope-cert.pem", tmp_path / "nope-key.pem")
    problems = [str(p) for p in check_ready_to_serve(parse_config_text(text, "r.conf"))]
    assert problems == [
        f"r.conf:3: server-cert: {tmp_path}/nope-cert.pem does not exist",
        f"r.conf:4: server-key: {tmp_path}/nope-key.pem does not exist",
    ]


def test_unknown_run_as_user_and_group(cert_files: tuple[Path, Path]) -> None:
    text = (
        _ready_text(*cert_files)
        + "run-as-user = no-such-user-x9\nrun-as-group = no-such-group-x9\n"
    )
    assert [str(p) for p in check_ready_to_serve(parse_config_text(text, "r.conf"))] == [
        "r.conf:6: run-as-user: no such user 'no-such-user-x9'",
        "r.conf:7: run-as-group: no such group 'no-such-group-x9'",
    ]


def test_vhost_needs_its_own_certificate_pool_and_ca(cert_files: tuple[Path, Path]) -> None:
    vhost = '[vhost:v.example]\nauth = "certificate"\ncert-user-oid = 2.5.4.3\n'
    text = _ready_text(*cert_files) + vhost
    assert [str(p) for p in check_ready_to_serve(parse_config_text(text, "r.conf"))] == [
        "r.conf:6: server-cert: is required for vhost v.example, with a matching server-key",
        "r.conf:6: ca-cert: certificate authentication needs ca-cert for vhost v.example",
        "r.conf:6: ipv4-network: no address pool for vhost v.example: "
        "set ipv4-network and/or ipv6-network",
    ]
    cert, key = cert_files
    text += f"ipv4-network = 10.5.0.0/24\nserver-cert = {cert}\nserver-key = {key}\n"
    problems = [str(p) for p in check_ready_to_serve(parse_config_text(text, "r.conf"))]
    assert problems == [
        "r.conf:6: ca-cert: certificate authentication needs ca-cert for vhost v.example"
    ]
