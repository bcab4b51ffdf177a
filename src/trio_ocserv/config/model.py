"""The typed, immutable result of parsing ocserv.conf.

`Settings` holds one field per ocserv option (the option name with `-` turned into `_`), with
ocserv's *code* defaults for absent keys (not the sample config's values: see protocol.md 8.4).
`ServerConfig` is the whole file: the global settings, the virtual hosts (each complete on its
own) and where every value came from. `PerUserConfig` is a per-user or per-group
file: only the keys such files allow, each None/empty when the file does not set it.

Nothing here reads files or parses text; `loader` builds these objects through cattrs.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network

import attrs

from trio_ocserv.config.auth_methods import AuthMethod
from trio_ocserv.config.errors import ConfigWarning, SourceLocation
from trio_ocserv.config.values import GroupChoice, IpAddress, KkdcpEndpoint, NetPriority, Route


@attrs.frozen
class Settings:
    """Effective settings of the default server or of one virtual host."""

    # authentication and accounting
    auth: tuple[AuthMethod, ...] = ()
    enable_auth: tuple[AuthMethod, ...] = ()
    acct: AuthMethod | None = None
    # listening
    listen_host: tuple[str, ...] = ()
    udp_listen_host: tuple[str, ...] = ()
    listen_host_is_dyndns: bool = False
    listen_netns: str | None = None
    tcp_port: int | None = None
    udp_port: int | None = None  # None: no DTLS
    listen_proxy_proto: bool = False
    # process
    run_as_user: str | None = None
    run_as_group: str | None = None
    occtl_socket_file: str = "/var/run/occtl.socket"
    socket_file: str | None = None
    chroot_dir: str | None = None
    sec_mod_scale: int | None = None
    isolate_workers: bool = False
    use_occtl: bool = False
    use_utmp: bool = False
    pid_file: str | None = None
    log_level: int = 0
    # trio-ocserv extension: HOST:PORT of the Prometheus/OpenMetrics endpoint (None: off)
    metrics_listen: str | None = None
    # TLS
    server_cert: tuple[str, ...] = ()
    server_key: tuple[str, ...] = ()
    dh_params: str | None = None
    pin_file: str | None = None
    srk_pin_file: str | None = None
    key_pin: str | None = None
    srk_pin: str | None = None
    ca_cert: str | None = None
    crl: str | None = None
    ocsp_response: str | None = None
    cert_user_oid: str | None = None
    cert_group_oid: str | None = None
    tls_priorities: str = "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0"
    match_tls_dtls_ciphers: bool = False
    # client-facing texts
    banner: str | None = None
    pre_login_banner: str | None = None
    user_profile: str | None = None
    custom_header: tuple[str, ...] = ()
    included_http_headers: tuple[str, ...] = ()
    # limits, bans
    max_clients: int = 0  # 0: no limit
    max_same_clients: int = 0  # 0: no limit
    rate_limit_ms: int = 0
    min_reauth_time: int = 300
    max_ban_score: int = 80
    ban_reset_time: int = 300
    ban_points_wrong_password: int = 10
    ban_points_connection: int = 1
    ban_points_kkdcp: int = 1
    # timers (seconds; None: disabled)
    stats_report_time: int = 0
    server_stats_reset_time: int = 0
    keepalive: int = 3600
    dpd: int = 60
    mobile_dpd: int | None = None  # None: same as dpd
    switch_to_tcp_timeout: int = 0
    try_mtu_discovery: bool = False
    server_drain_ms: int = 0
    auth_timeout: int = 1800
    idle_timeout: int | None = None
    session_timeout: int | None = None
    mobile_idle_timeout: int | None = None
    cookie_timeout: int = 120
    persistent_cookies: bool = False
    deny_roaming: bool = False
    rekey_time: int = 86400
    rekey_method: str = "new-tunnel"
    # compression
    compression: bool = False
    no_compress_limit: int = 256
    compression_algo_priority: str | None = None  # None: oc-lz4 90, lzs 80
    # scripts
    connect_script: str | None = None
    disconnect_script: str | None = None
    host_update_script: str | None = None
    route_add_cmd: str | None = None
    route_del_cmd: str | None = None
    # per-packet behaviour
    net_priority: NetPriority | None = None
    cgroup: str | None = None
    mtu: int | None = None  # None: the tun device default
    rx_data_per_sec: int = 0
    tx_data_per_sec: int = 0
    output_buffer: int = 0
    # network
    device: str = "vpns"
    predictable_ips: bool = True
    default_domain: str | None = None
    ipv4_network: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_prefix: int = 128
    tunnel_all_dns: bool = False
    dns: tuple[IpAddress, ...] = ()
    nbns: tuple[IpAddress, ...] = ()
    split_dns: tuple[str, ...] = ()
    ping_leases: bool = False
    route: tuple[Route, ...] = ()
    no_route: tuple[Route, ...] = ()
    restrict_user_to_routes: bool = False
    restrict_user_to_ports: str | None = None
    expose_iroutes: bool = False
    append_routes: bool = False  # add the global routes/no-routes to per-user ones
    # groups and per-user files
    select_group: tuple[GroupChoice, ...] = ()
    default_select_group: str | None = None
    auto_select_group: bool = False
    config_per_user: str | None = None
    config_per_group: str | None = None
    default_user_config: str | None = None
    default_group_config: str | None = None
    # other
    proxy_url: str | None = None
    kkdcp: tuple[KkdcpEndpoint, ...] = ()
    cisco_client_compat: bool = False
    dtls_psk: bool = True
    dtls_legacy: bool = True
    client_bypass_protocol: bool = False

    @property
    def effective_mobile_dpd(self) -> int:
        return self.dpd if self.mobile_dpd is None else self.mobile_dpd

    @property
    def certificate_pairs(self) -> tuple[tuple[str, str], ...]:
        """server-cert/server-key lines paired in order (the loader checks the counts match)."""
        return tuple(zip(self.server_cert, self.server_key, strict=False))

    @property
    def auth_method_names(self) -> frozenset[str]:
        return frozenset(method.name for method in (*self.auth, *self.enable_auth))


@attrs.frozen
class ValueSources:
    """Where each option was set: key -> the location of every line that set it, in file order."""

    by_key: Mapping[str, tuple[SourceLocation, ...]] = attrs.field(factory=dict)

    def first(self, key: str) -> SourceLocation | None:
        found = self.by_key.get(key, ())
        return found[0] if found else None

    def last(self, key: str) -> SourceLocation | None:
        found = self.by_key.get(key, ())
        return found[-1] if found else None

    def all(self, key: str) -> tuple[SourceLocation, ...]:
        return self.by_key.get(key, ())


@attrs.frozen
class VirtualHost:
    """A `[vhost:NAME]` section: its own keys over the code defaults (as in ocserv 1.1.6, global
    values are not inherited, except the process-wide ones such as tcp-port and run-as-user)."""

    name: str
    location: SourceLocation
    settings: Settings
    sources: ValueSources = attrs.field(repr=False)


@attrs.frozen
class ServerConfig:
    """A whole ocserv.conf: the default server's settings and its virtual hosts."""

    path: str
    settings: Settings
    sources: ValueSources = attrs.field(repr=False)
    vhosts: tuple[VirtualHost, ...] = ()
    warnings: tuple[ConfigWarning, ...] = ()

    def vhost(self, name: str) -> VirtualHost | None:
        """The virtual host for a TLS SNI name (any case), or None for the default server."""
        wanted = name.lower()
        return next((v for v in self.vhosts if v.name.lower() == wanted), None)

    def settings_for(self, server_name: str | None) -> Settings:
        vhost = self.vhost(server_name) if server_name else None
        return self.settings if vhost is None else vhost.settings


@attrs.frozen
class PerUserConfig:
    """A `config-per-user` / `config-per-group` / default user or group file.

    None or () means "not set here: use the global value". Repeated keys (route, dns...) set here
    replace the global list rather than extending it, as ocserv does.
    """

    path: str
    sources: ValueSources = attrs.field(factory=ValueSources, repr=False)
    dns: tuple[IpAddress, ...] = ()
    nbns: tuple[IpAddress, ...] = ()
    split_dns: tuple[str, ...] = ()
    ipv4_network: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_prefix: int | None = None
    rx_data_per_sec: int | None = None
    tx_data_per_sec: int | None = None
    route: tuple[Route, ...] = ()
    no_route: tuple[Route, ...] = ()
    iroute: tuple[Route, ...] = ()
    explicit_ipv4: IPv4Address | None = None
    explicit_ipv6: IPv6Interface | None = None
    net_priority: NetPriority | None = None
    deny_roaming: bool | None = None
    no_udp: bool | None = None
    keepalive: int | None = None
    dpd: int | None = None
    mobile_dpd: int | None = None
    max_same_clients: int | None = None
    tunnel_all_dns: bool | None = None
    restrict_user_to_routes: bool | None = None
    restrict_user_to_ports: str | None = None
    cgroup: str | None = None
    stats_report_time: int | None = None
    mtu: int | None = None
    idle_timeout: int | None = None
    mobile_idle_timeout: int | None = None
    session_timeout: int | None = None
    hostname: str | None = None
    warnings: tuple[ConfigWarning, ...] = ()
