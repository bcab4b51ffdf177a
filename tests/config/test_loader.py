"""load_config, parse_config_text, parse_per_user_config: values, vhosts, warnings, errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.config import (
    KEY_SPECS,
    RELOADABLE_KEYS,
    AuthMethod,
    ConfigError,
    ServerConfig,
    SourceLocation,
    check_ready_to_serve,
    load_config,
    parse_config_text,
    parse_per_user_config,
    parse_per_user_text,
)
from trio_ocserv.config.values import GroupChoice, KkdcpEndpoint, NetPriority

DATA = Path(__file__).parent / "data"
SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "sample.config"
EVERY_KEY = DATA / "every-key.conf"
MINIMAL = 'auth = "plain[passwd=/etc/ocserv/ocpasswd]"\n'
NEEDS_OID = "certificate authentication needs cert-user-oid (e.g. 2.5.4.3 for the CN)"


def test_sample_config_loads() -> None:
    config = load_config(str(SAMPLE))
    s = config.settings
    assert s.auth == (AuthMethod("plain", (("passwd", "/etc/ocserv/passwd"),)),)
    assert (s.tcp_port, s.udp_port, s.run_as_user, s.run_as_group) == (443, 443, "ocserv", "ocserv")
    assert s.ipv4_network == IPv4Network("192.168.1.0/24")
    assert s.route == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("172.16.0.0/12"),
        IPv4Network("192.168.0.0/16"),
    )
    assert (s.dns, s.max_clients, s.max_same_clients) == ((IPv4Address("192.168.1.1"),), 16, 2)
    assert (s.keepalive, s.dpd, s.mobile_dpd, s.cookie_timeout) == (32400, 90, 1800, 300)
    assert s.server_cert == ()
    assert config.vhosts == ()
    assert {w.key for w in config.warnings} == {"server-stats-reset-time", "try-mtu-discovery"}


@pytest.fixture(scope="module")
def every_key() -> ServerConfig:
    return load_config(str(EVERY_KEY))


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (
            "auth",
            (
                AuthMethod(
                    "plain", (("passwd", "/etc/ocserv/ocpasswd"), ("otp", "/etc/ocserv/users.otp"))
                ),
                AuthMethod("certificate"),
            ),
        ),
        (
            "enable_auth",
            (
                AuthMethod(
                    "gssapi",
                    (
                        ("keytab", "/etc/key.tab"),
                        ("require-local-user-map", False),
                        ("tgt-freshness-time", 900),
                        ("gid-min", 500),
                    ),
                ),
                AuthMethod("oidc", (("config", "/etc/ocserv/oidc.json"),)),
            ),
        ),
        (
            "acct",
            AuthMethod(
                "radius",
                (("config", "/etc/radiusclient/radiusclient.conf"), ("nas-identifier", "vpn1")),
            ),
        ),
        ("listen_host", ("192.0.2.10", "2001:db8::10")),
        ("udp_listen_host", ("192.0.2.11",)),
        ("listen_host_is_dyndns", True),
        ("listen_netns", "vpnns"),
        ("tcp_port", 4443),
        ("udp_port", 4444),
        ("run_as_user", "nobody"),
        ("run_as_group", "nogroup"),
        ("occtl_socket_file", "/run/test-occtl.socket"),
        ("socket_file", "/run/test-ocserv-socket"),
        ("chroot_dir", "/var/lib/test-ocserv"),
        ("server_cert", ("/etc/ocserv/rsa-cert.pem", "/etc/ocserv/ec-cert.pem")),
        ("server_key", ("/etc/ocserv/rsa-key.pem", "pkcs11:object=my-vpn-key;object-type=private")),
        ("dh_params", "/etc/ocserv/dh.pem"),
        ("pin_file", "/etc/ocserv/pin.txt"),
        ("srk_pin_file", "/etc/ocserv/srkpin.txt"),
        ("key_pin", "1234"),
        ("srk_pin", "5678"),
        ("ca_cert", "/etc/ocserv/ca.pem"),
        ("sec_mod_scale", 4),
        ("isolate_workers", True),
        ("banner", "Welcome, # not a comment"),
        ("pre_login_banner", "  Authorised users only  "),
        ("max_clients", 1024),
        ("max_same_clients", 3),
        ("listen_proxy_proto", True),
        ("rate_limit_ms", 250),
        ("stats_report_time", 360),
        ("server_stats_reset_time", 86400),
        ("keepalive", 32400),
        ("dpd", 90),
        ("mobile_dpd", 1800),
        ("switch_to_tcp_timeout", 25),
        ("try_mtu_discovery", True),
        ("server_drain_ms", 15000),
        ("ocsp_response", "/etc/ocserv/ocsp.der"),
        ("cert_user_oid", "2.5.4.3"),
        ("cert_group_oid", "2.5.4.11"),
        ("crl", "/etc/ocserv/crl.pem"),
        ("compression", True),
        ("no_compress_limit", 512),
        ("tls_priorities", "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0"),
        ("match_tls_dtls_ciphers", True),
        ("auth_timeout", 240),
        ("idle_timeout", 1200),
        ("session_timeout", 86400),
        ("mobile_idle_timeout", 2400),
        ("min_reauth_time", 360),
        ("max_ban_score", 50),
        ("ban_reset_time", 1200),
        ("ban_points_wrong_password", 20),
        ("ban_points_connection", 2),
        ("ban_points_kkdcp", 3),
        ("cookie_timeout", 300),
        ("persistent_cookies", True),
        ("deny_roaming", True),
        ("rekey_time", 172800),
        ("rekey_method", "ssl"),
        ("connect_script", "/usr/bin/connect-script"),
        ("disconnect_script", "/usr/bin/disconnect-script"),
        ("host_update_script", "/usr/bin/host-update-script"),
        ("use_utmp", True),
        ("use_occtl", True),
        ("pid_file", "/run/test-ocserv.pid"),
        ("log_level", 3),
        ("net_priority", NetPriority(0x20, is_tos=True)),
        ("cgroup", "cpuset,cpu:test"),
        ("device", "vpnt"),
        ("predictable_ips", False),
        ("default_domain", "example.com one.example.com"),
        ("ipv4_network", IPv4Network("10.147.93.0/24")),
        ("ipv6_network", IPv6Network("fda9:4efe:7e3b::/48")),
        ("ipv6_subnet_prefix", 64),
        ("tunnel_all_dns", True),
        ("dns", (IPv4Address("10.147.93.1"), IPv6Address("fc00::4be0"))),
        ("nbns", (IPv4Address("10.147.93.3"),)),
        ("split_dns", ("example.com", "example.net")),
        ("ping_leases", True),
        ("mtu", 1420),
        ("rx_data_per_sec", 40000),
        ("tx_data_per_sec", 50000),
        ("output_buffer", 10),
        (
            "route",
            (
                IPv4Network("10.10.10.0/24"),
                IPv4Network("192.168.0.0/16"),
                IPv6Network("fef4:db8:1000:1001::/64"),
                "default",
            ),
        ),
        ("no_route", (IPv4Network("192.168.5.0/24"),)),
        ("restrict_user_to_routes", True),
        (
            "restrict_user_to_ports",
            "tcp(443), tcp(80), udp(443), sctp(99), tcp(583), icmp(), icmpv6()",
        ),
        ("expose_iroutes", True),
        ("select_group", (GroupChoice("group1"), GroupChoice("group2", "My special group"))),
        ("default_select_group", "DEFAULT"),
        ("auto_select_group", True),
        ("config_per_user", "/etc/ocserv/config-per-user/"),
        ("config_per_group", "/etc/ocserv/config-per-group/"),
        ("default_user_config", "/etc/ocserv/defaults/user.conf"),
        ("default_group_config", "/etc/ocserv/defaults/group.conf"),
        ("route_add_cmd", "ip route add %{R} dev %{D}"),
        ("route_del_cmd", "ip route delete %{R} dev %{D}"),
        ("proxy_url", "http://example.com/%{U}/"),
        (
            "kkdcp",
            (
                KkdcpEndpoint("/KdcProxy", "KERBEROS.REALM", "udp", "127.0.0.1", 88),
                KkdcpEndpoint("/KdcProxy", "KERBEROS.REALM", "tcp", "::1", 88),
            ),
        ),
        ("user_profile", "profile.xml"),
        ("cisco_client_compat", True),
        ("dtls_psk", False),
        ("dtls_legacy", False),
        ("client_bypass_protocol", True),
        ("custom_header", ("X-My-Header: hi there", "X-Other: %{U}")),
    ],
)
def test_every_key_value(every_key: ServerConfig, field: str, expected: object) -> None:
    assert getattr(every_key.settings, field) == expected


def test_every_key_warns_only_about_unimplemented_keys(every_key: ServerConfig) -> None:
    assert all(w.problem == "not implemented yet; ignored" for w in every_key.warnings)
    assert len({w.key for w in every_key.warnings}) == len(every_key.warnings)
    assert "kkdcp" in {w.key for w in every_key.warnings}


def test_vhost_has_its_own_settings_plus_the_process_wide_ones(every_key: ServerConfig) -> None:
    (vhost,) = every_key.vhosts
    assert vhost.name == "www.example.com"
    header_line = EVERY_KEY.read_text().split("\n").index("[vhost:www.example.com]") + 1
    assert vhost.location == SourceLocation(str(EVERY_KEY), header_line)
    v = vhost.settings
    assert v.auth == (AuthMethod("certificate"),)
    assert v.ca_cert == "/etc/ocserv/vhost-ca.pem"
    assert v.certificate_pairs == (
        ("/etc/ocserv/server-cert-secp521r1.pem", "/etc/ocserv/server-key-secp521r1.pem"),
    )
    assert v.ipv4_network == IPv4Network("192.168.2.0/24")
    assert v.cert_user_oid == "0.9.2342.19200300.100.1.1"
    # Process-wide options come from the global section...
    assert (v.tcp_port, v.udp_port, v.run_as_user) == (4443, 4444, "nobody")
    assert vhost.sources.last("tcp-port") == every_key.sources.last("tcp-port")
    # ...the rest are ocserv's defaults unless the vhost sets them (as ocserv 1.1.6 does).
    assert (v.dpd, v.route, v.dns, v.banner) == (60, (), (), None)
    assert vhost.sources.last("dpd") is None
    assert vhost.sources.last("auth") == SourceLocation(str(EVERY_KEY), header_line + 1)
    assert every_key.settings_for("WWW.Example.com") is v
    assert every_key.settings_for("other.example.com") is every_key.settings
    assert every_key.settings_for(None) is every_key.settings


def test_vhost_needs_its_own_auth() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(MINIMAL + "[vhost:a.example]\ndpd = 5\n", "m.conf")
    assert str(caught.value).startswith("m.conf:2: auth: is required")


def test_sources_name_every_line_of_a_repeated_key(every_key: ServerConfig) -> None:
    lines = [location.line or 0 for location in every_key.sources.all("route")]
    assert len(lines) == 4
    assert lines == sorted(lines)
    assert str(every_key.sources.first("route")) == f"{EVERY_KEY}:{lines[0]}"


def test_absent_keys_get_ocserv_code_defaults() -> None:
    s = parse_config_text(MINIMAL, "m.conf").settings
    assert (s.dpd, s.effective_mobile_dpd, s.keepalive) == (60, 60, 3600)
    assert (s.rekey_time, s.rekey_method, s.cookie_timeout, s.auth_timeout) == (
        86400,
        "new-tunnel",
        120,
        1800,
    )
    assert (s.switch_to_tcp_timeout, s.no_compress_limit, s.ipv6_subnet_prefix) == (0, 256, 128)
    assert (s.idle_timeout, s.session_timeout, s.udp_port, s.tcp_port) == (None, None, None, None)
    assert (s.dtls_psk, s.dtls_legacy, s.predictable_ips, s.compression) == (
        True,
        True,
        True,
        False,
    )


def test_single_keys_last_line_wins_and_keys_are_case_insensitive() -> None:
    config = parse_config_text(MINIMAL + "dpd = 10\nDPD = 20\n", "m.conf")
    assert config.settings.dpd == 20
    assert [loc.line for loc in config.sources.all("dpd")] == [2, 3]


def test_aliases_fill_the_same_field() -> None:
    text = MINIMAL + "ipv4-dns = 10.0.0.1\nipv6-dns = fd00::1\nalways-require-cert = true\n"
    s = parse_config_text(text, "m.conf").settings
    assert s.dns == (IPv4Address("10.0.0.1"), IPv6Address("fd00::1"))
    assert s.cisco_client_compat is True


def test_reloadable_keys() -> None:
    assert {"route", "dns", "banner", "max-ban-score", "dpd"} <= RELOADABLE_KEYS
    assert {"tcp-port", "udp-port", "auth", "listen-host", "run-as-user", "server-cert"}.isdisjoint(
        RELOADABLE_KEYS
    )


def test_unknown_key_is_a_warning_with_file_and_line() -> None:
    config = parse_config_text(MINIMAL + "\nfoo-bar = 1\n", "m.conf")
    assert [str(w) for w in config.warnings] == [
        "m.conf:3: warning: foo-bar: unknown option; ignored"
    ]


def test_unimplemented_key_is_warned_once() -> None:
    config = parse_config_text(MINIMAL + "kkdcp = /K R udp@h:88\nkkdcp = /K R tcp@h:88\n", "m.conf")
    assert [str(w) for w in config.warnings] == [
        "m.conf:2: warning: kkdcp: not implemented yet; ignored"
    ]
    assert len(config.settings.kkdcp) == 2


def test_keys_outside_their_scope_are_warned_and_ignored() -> None:
    text = MINIMAL + "iroute = 10.0.0.0/8\n[vhost:a.example]\ntcp-port = 8443\ndpd = 5\n" + MINIMAL
    config = parse_config_text(text, "m.conf")
    assert [str(w) for w in config.warnings] == [
        "m.conf:2: warning: iroute: only allowed in per-user/per-group files; ignored here",
        "m.conf:4: warning: tcp-port: only allowed in the global section; ignored here",
    ]
    assert (config.vhosts[0].settings.tcp_port, config.vhosts[0].settings.dpd) == (None, 5)


def test_ipv4_network_and_netmask_combine() -> None:
    text = MINIMAL + "ipv4-network = 10.7.0.9\nipv4-netmask = 255.255.0.0\n"
    assert parse_config_text(text, "m.conf").settings.ipv4_network == IPv4Network("10.7.0.0/16")
    text = MINIMAL + "ipv4-network = 10.7.0.0/16\nipv4-netmask = 255.255.0.0\n"
    assert parse_config_text(text, "m.conf").settings.ipv4_network == IPv4Network("10.7.0.0/16")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "dpd = 5\n",
            'm.conf: auth: is required, e.g. auth = "plain[passwd=/etc/ocserv/ocpasswd]"',
        ),
        (
            MINIMAL + 'auth = "pam"\n',
            "m.conf:2: auth: plain and pam both check passwords; use only one in auth",
        ),
        (
            MINIMAL + 'auth = "certificate"\n',
            f"m.conf:2: auth: {NEEDS_OID}",
        ),
        (
            MINIMAL + "dpd = 1\nenable-auth = certificate\n",
            f"m.conf:3: enable-auth: {NEEDS_OID}",
        ),
        (
            MINIMAL + "server-cert = /a\nserver-key = /b\nserver-cert = /c\n",
            "m.conf:4: server-cert: has no matching server-key line",
        ),
        (MINIMAL + "server-key = /b\n", "m.conf:2: server-key: has no matching server-cert line"),
        (
            MINIMAL + "ipv4-netmask = 255.0.0.0\n",
            "m.conf:2: ipv4-netmask: given without ipv4-network",
        ),
        (
            MINIMAL + "ipv4-network = 10.0.0.0/16\nipv4-netmask = 255.0.0.0\n",
            "m.conf:3: ipv4-netmask: /8 contradicts ipv4-network = 10.0.0.0/16",
        ),
        (
            MINIMAL + "ipv4-network = 10.0.0.0\n",
            "m.conf:2: ipv4-network: 10.0.0.0 needs a prefix (/24) or an ipv4-netmask line",
        ),
        (
            MINIMAL + "ipv4-network = 10.0.0.0/31\n",
            "m.conf:2: ipv4-network: 10.0.0.0/31 is too small for an address pool (at most /30)",
        ),
        (
            MINIMAL + "ipv6-network = fd00::/64\nipv6-subnet-prefix = 48\n",
            "m.conf:3: ipv6-subnet-prefix: /48 must be longer than the network's /64",
        ),
        (
            MINIMAL + "[vhost:a]\n" + MINIMAL + "[vhost:A]\n",
            "m.conf:4: virtual host 'A' is defined twice",
        ),
        (
            MINIMAL + '[vhost:a]\nauth = "certificate"\n',
            f"m.conf:3: auth: {NEEDS_OID}",
        ),
    ],
)
def test_rules_across_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "m.conf")
    assert str(caught.value) == message


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.conf: cannot read the file: No such file"):
        load_config(str(tmp_path / "missing.conf"))
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(MINIMAL.encode() + b"banner = caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(bad))
    assert str(caught.value) == f"{bad}:2: not valid UTF-8 text"


def test_per_user_file_values() -> None:
    config = parse_per_user_config(str(DATA / "per-user.conf"))
    assert config.dns == (IPv4Address("10.1.0.53"),)
    assert config.ipv4_network == IPv4Network("10.1.0.0/24")
    assert config.iroute == (IPv4Network("10.20.0.0/16"),)
    assert config.route == (IPv4Network("10.30.0.0/16"),)
    assert config.explicit_ipv4 == IPv4Address("10.1.0.7")
    assert config.explicit_ipv6 == IPv6Interface("fd00:1::7/64")
    assert (config.no_udp, config.deny_roaming, config.tunnel_all_dns) == (True, True, False)
    assert (config.keepalive, config.dpd, config.mobile_dpd, config.mtu) == (60, 30, 600, 1300)
    assert (config.idle_timeout, config.session_timeout, config.hostname) == (
        600,
        3600,
        "alice-laptop",
    )
    assert config.restrict_user_to_ports == "!(tcp(22), udp(53))"
    assert config.net_priority == NetPriority(3)
    assert config.sources.last("hostname") == SourceLocation(str(DATA / "per-user.conf"), 31)


def test_per_user_file_warns_about_global_only_keys_with_file_and_line() -> None:
    config = parse_per_user_config(str(DATA / "per-user.conf"))
    scope_warnings = [str(w) for w in config.warnings if "not allowed" in w.problem]
    path = DATA / "per-user.conf"
    expected = f"{path}:33: warning: tcp-port: not allowed in per-user/per-group files; ignored"
    assert scope_warnings == [expected]


def test_per_user_unset_keys_are_none() -> None:
    config = parse_per_user_text("dns = 10.0.0.1\n", "alice")
    assert (config.route, config.dpd, config.ipv4_network, config.hostname) == (
        (),
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[vhost:x]\n", "alice:1: [vhost:...] sections are not allowed here"),
        (
            "dns = 10.0.0.1\nroute = 10.0.0.0/40\n",
            "alice:2: route: '10.0.0.0/40' is not a route; expected network/prefix or 'default'",
        ),
        ("explicit-ipv4 = fd00::1\n", "alice:1: explicit-ipv4: 'fd00::1' is not an IPv4 address"),
        (
            "ipv6-network = fd00::/64\nipv6-subnet-prefix = 60\n",
            "alice:2: ipv6-subnet-prefix: /60 must be longer than the network's /64",
        ),
        ("no-udp = sometimes\n", "alice:1: no-udp: expected true or false, got 'sometimes'"),
    ],
)
def test_per_user_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_per_user_text(text, "alice")
    assert str(caught.value) == message


_KEYS = sorted(KEY_SPECS)
_VALUE_WORDS = [
    "true",
    "no",
    "0",
    "-1",
    "443",
    "10.0.0.0/8",
    "fd00::/64",
    "default",
    "plain[passwd=/x]",
    "certificate",
    "pam",
    "255.255.255.0",
    "/etc/x",
    '"quoted"',
    '"open',
    "x[y]",
    "",
]
_lines = st.one_of(
    st.builds(
        lambda k, v: f"{k} = {v}",
        st.sampled_from(_KEYS),
        st.sampled_from(_VALUE_WORDS) | st.text(max_size=12),
    ),
    st.sampled_from(["[vhost:a]", "[vhost:b]", "[bad", "# c", "", "novalue"]),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, max_size=12))
def test_arbitrary_config_text_raises_only_config_error(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        parse_per_user_text(text, "fuzz.conf")
    except ConfigError as error:
        _assert_one_line_about(error, "fuzz.conf")
    try:
        config = parse_config_text(text, "fuzz.conf")
    except ConfigError as error:
        _assert_one_line_about(error, "fuzz.conf")
        return
    for problem in check_ready_to_serve(config):
        _assert_one_line_about(problem, "fuzz.conf")


def _assert_one_line_about(error: ConfigError, path: str) -> None:
    message = str(error)
    assert message.startswith(path)
    assert "\n" not in message


def test_scripts_come_from_the_global_section_only() -> None:
    text = (
        MINIMAL
        + "connect-script = /etc/ocserv/up\nroute-add-cmd = ip route add %{R} dev %{D}\n"
        + "[vhost:a.example]\n"
        + MINIMAL
        + "connect-script = /srv/other-up\n"
    )
    config = parse_config_text(text, "m.conf")
    assert [str(w) for w in config.warnings] == [
        "m.conf:6: warning: connect-script: only allowed in the global section; ignored here"
    ]
    vhost = config.vhosts[0].settings
    assert vhost.connect_script == "/etc/ocserv/up"
    assert vhost.route_add_cmd == "ip route add %{R} dev %{D}"


def test_append_routes_is_read() -> None:
    assert parse_config_text(MINIMAL + "append-routes = true\n", "m").settings.append_routes
    assert not parse_config_text(MINIMAL, "m").settings.append_routes
