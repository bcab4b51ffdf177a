"""The built-in default config and its state directory."""

from __future__ import annotations

from ipaddress import IPv4Network

from trio_ocserv.config import AuthMethod, check_ready_to_serve
from trio_ocserv.config.default_config import (
    BUILT_IN_CONFIG_NAME,
    DEFAULT_STATE_DIR,
    default_config_text,
    load_default_config,
    state_dir,
)


def test_state_dir_comes_from_the_environment() -> None:
    assert state_dir({}) == DEFAULT_STATE_DIR == "/var/lib/trio-ocserv"
    assert state_dir({"TRIO_OCSERV_STATE_DIR": "/srv/vpn"}) == "/srv/vpn"
    assert state_dir({"TRIO_OCSERV_STATE_DIR": ""}) == DEFAULT_STATE_DIR


def test_default_config_uses_the_state_dir() -> None:
    config = load_default_config("/srv/vpn state")
    s = config.settings
    assert config.path == BUILT_IN_CONFIG_NAME
    assert config.warnings == ()
    assert s.auth == (AuthMethod("plain", (("passwd", "/srv/vpn state/ocpasswd"),)),)
    assert s.certificate_pairs == (
        ("/srv/vpn state/server-cert.pem", "/srv/vpn state/server-key.pem"),
    )
    assert (s.tcp_port, s.udp_port) == (443, 443)
    assert s.ipv4_network == IPv4Network("10.147.93.0/24")
    assert s.ipv4_network.is_private
    assert (s.dtls_psk, s.dtls_legacy, s.dpd, s.cookie_timeout) == (True, True, 90, 300)
    assert s.occtl_socket_file == "/srv/vpn state/occtl.socket"
    assert "@STATE_DIR@" not in default_config_text("/x")


def test_default_config_needs_only_the_generated_files() -> None:
    problems = check_ready_to_serve(load_default_config("/nonexistent-state"))
    assert {p.key for p in problems} == {"server-cert", "server-key"}
