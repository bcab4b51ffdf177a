"""The table of ocserv.conf options: how each value is parsed and where the option may appear.

One row per option. The loader is generic and driven only by this table, so supporting a new option
means adding a row here and a field in `model.Settings` (or `model.PerUserConfig`).

Columns:
- `parse`: value parser from `values` / `auth_methods` (text -> typed value, or `ValueProblem`);
- `repeated`: every line adds to a tuple (route, dns, auth...); otherwise the last line wins;
- `reloadable`: applied on SIGHUP; sample.config lists the options above its
  "reloaded on a SIGHUP" line as fixed for the life of the process;
- `scope`: the global section, `[vhost:NAME]` sections, and/or per-user/per-group files
  (sample.config lists the per-user keys; `hostname`, `iroute`, `explicit-ipv4/6`, `no-udp` exist
  only there);
- `support`: IMPLEMENTED, PLANNED (accepted with a "not implemented yet" warning) or NO_EFFECT
  (details of ocserv's multi-process design with no meaning here: accepted silently);
- `field`: the model field it fills (the key with `-` -> `_`), None when the value is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

import attrs

from trio_ocserv.config import auth_methods
from trio_ocserv.config import values as v


class Scope(enum.Flag):
    GLOBAL = enum.auto()
    VHOST = enum.auto()
    PER_USER = enum.auto()


class Support(enum.Enum):
    IMPLEMENTED = "implemented"
    PLANNED = "not implemented yet"
    NO_EFFECT = "has no effect in trio-ocserv"


MAIN = Scope.GLOBAL | Scope.VHOST
EVERYWHERE = MAIN | Scope.PER_USER
PROCESS = Scope.GLOBAL  # one value per process: listening sockets, privileges, files


@attrs.frozen
class KeySpec:
    key: str
    parse: Callable[[str], object]
    repeated: bool = False
    reloadable: bool = True
    scope: Scope = MAIN
    support: Support = Support.IMPLEMENTED
    field: str | None = attrs.field()

    @field.default
    def _field_from_key(self) -> str | None:
        return self.key.replace("-", "_")


def _fixed(*specs: KeySpec) -> Iterable[KeySpec]:
    """Options sample.config lists before its "reloaded on a SIGHUP" line."""
    return (attrs.evolve(spec, reloadable=False) for spec in specs)


_PLANNED = Support.PLANNED
_NO_EFFECT = Support.NO_EFFECT

_SPECS: tuple[KeySpec, ...] = (
    *_fixed(
        KeySpec("auth", auth_methods.auth_method, repeated=True),
        KeySpec("enable-auth", auth_methods.auth_method, repeated=True),
        KeySpec("acct", auth_methods.acct_method, support=_PLANNED),
        KeySpec("listen-host", v.text, repeated=True, scope=PROCESS),
        KeySpec("udp-listen-host", v.text, repeated=True, scope=PROCESS),
        KeySpec("listen-host-is-dyndns", v.boolean, support=_PLANNED),
        KeySpec("listen-netns", v.name, scope=PROCESS, support=_PLANNED),
        KeySpec("tcp-port", v.port, scope=PROCESS),
        KeySpec("udp-port", v.port, scope=PROCESS),
        KeySpec("run-as-user", v.name, scope=PROCESS),
        KeySpec("run-as-group", v.name, scope=PROCESS),
        KeySpec("occtl-socket-file", v.path, scope=PROCESS),
        KeySpec("socket-file", v.path, scope=PROCESS, support=_NO_EFFECT),
        KeySpec("chroot-dir", v.path, scope=PROCESS, support=_NO_EFFECT),
        KeySpec("server-cert", v.path, repeated=True),
        KeySpec("server-key", v.path, repeated=True),
        KeySpec("dh-params", v.path),
        KeySpec("pin-file", v.path, support=_PLANNED),
        KeySpec("srk-pin-file", v.path, support=_PLANNED),
        KeySpec("key-pin", v.text, support=_PLANNED),
        KeySpec("srk-pin", v.text, support=_PLANNED),
        KeySpec("ca-cert", v.path),
        KeySpec("sec-mod-scale", v.count, scope=PROCESS, support=_NO_EFFECT),
    ),
    KeySpec("isolate-workers", v.boolean, scope=PROCESS, support=_NO_EFFECT),
    KeySpec("banner", v.text),
    KeySpec("pre-login-banner", v.text),
    KeySpec("max-clients", v.count, scope=PROCESS),
    KeySpec("max-same-clients", v.count, scope=EVERYWHERE),
    KeySpec("listen-proxy-proto", v.boolean, scope=PROCESS),
    KeySpec("rate-limit-ms", v.count, scope=PROCESS),
    KeySpec("stats-report-time", v.seconds, scope=EVERYWHERE),
    KeySpec("server-stats-reset-time", v.seconds, scope=PROCESS, support=_PLANNED),
    KeySpec("keepalive", v.seconds, scope=EVERYWHERE),
    KeySpec("dpd", v.seconds, scope=EVERYWHERE),
    KeySpec("mobile-dpd", v.seconds, scope=EVERYWHERE),
    KeySpec("switch-to-tcp-timeout", v.seconds),
    KeySpec("try-mtu-discovery", v.boolean, support=_PLANNED),
    KeySpec("server-drain-ms", v.count, scope=PROCESS),
    KeySpec("ocsp-response", v.path, support=_PLANNED),
    KeySpec("cert-user-oid", v.certificate_oid),
    KeySpec("cert-group-oid", v.certificate_oid),
    KeySpec("crl", v.path),
    KeySpec("compression", v.boolean),
    KeySpec("no-compress-limit", v.at_least(64)),
    KeySpec("compression-algo-priority", v.compression_priorities),
    KeySpec("tls-priorities", v.text),
    KeySpec("match-tls-dtls-ciphers", v.boolean, support=_PLANNED),
    KeySpec("auth-timeout", v.seconds),
    KeySpec("idle-timeout", v.seconds, scope=EVERYWHERE),
    KeySpec("session-timeout", v.seconds, scope=EVERYWHERE),
    KeySpec("mobile-idle-timeout", v.seconds, scope=EVERYWHERE),
    KeySpec("min-reauth-time", v.seconds),
    KeySpec("max-ban-score", v.count),
    KeySpec("ban-reset-time", v.seconds),
    KeySpec("ban-points-wrong-password", v.count),
    KeySpec("ban-points-connection", v.count),
    KeySpec("ban-points-kkdcp", v.count),
    KeySpec("cookie-timeout", v.seconds),
    KeySpec("persistent-cookies", v.boolean),
    KeySpec("deny-roaming", v.boolean, scope=EVERYWHERE),
    KeySpec("rekey-time", v.seconds),
    KeySpec("rekey-method", v.choice("ssl", "new-tunnel")),
    # ocserv 1.1.6 runs scripts and route commands from the global section only (vhosts: ignored).
    KeySpec("connect-script", v.path, scope=PROCESS),
    KeySpec("disconnect-script", v.path, scope=PROCESS),
    KeySpec("host-update-script", v.path, scope=PROCESS, support=_PLANNED),
    KeySpec("use-utmp", v.boolean, scope=PROCESS, support=_PLANNED),
    KeySpec("use-occtl", v.boolean, scope=PROCESS),
    KeySpec("pid-file", v.path, scope=PROCESS),
    KeySpec("log-level", v.ranged(0, 9999), scope=PROCESS),
    KeySpec("net-priority", v.net_priority, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("cgroup", v.text, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("device", v.name),
    KeySpec("predictable-ips", v.boolean),
    KeySpec("default-domain", v.domain_list),
    KeySpec("ipv4-network", v.ipv4_network, scope=EVERYWHERE),
    # Combined with ipv4-network by the loader; not a model field of its own.
    KeySpec("ipv4-netmask", v.ipv4_netmask, scope=EVERYWHERE),
    KeySpec("ipv6-network", v.ipv6_network, scope=EVERYWHERE),
    KeySpec("ipv6-subnet-prefix", v.ranged(1, 128), scope=EVERYWHERE),
    KeySpec("tunnel-all-dns", v.boolean, scope=EVERYWHERE),
    KeySpec("dns", v.ip_address, repeated=True, scope=EVERYWHERE),
    KeySpec("nbns", v.ip_address, repeated=True, scope=EVERYWHERE),
    KeySpec("split-dns", v.domain, repeated=True, scope=EVERYWHERE),
    KeySpec("ping-leases", v.boolean),
    KeySpec("mtu", v.ranged(0, 65535), scope=EVERYWHERE),
    KeySpec("rx-data-per-sec", v.count, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("tx-data-per-sec", v.count, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("output-buffer", v.count, support=_NO_EFFECT),
    KeySpec("route", v.route, repeated=True, scope=EVERYWHERE),
    KeySpec("no-route", v.route, repeated=True, scope=EVERYWHERE),
    KeySpec("restrict-user-to-routes", v.boolean, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("restrict-user-to-ports", v.port_restrictions, scope=EVERYWHERE, support=_PLANNED),
    KeySpec("expose-iroutes", v.boolean),
    # Not in sample.config but read by ocserv 1.1.6: global routes are added to per-user ones.
    KeySpec("append-routes", v.boolean),
    KeySpec("select-group", v.group_choice, repeated=True),
    KeySpec("default-select-group", v.text),
    KeySpec("auto-select-group", v.boolean),
    KeySpec("config-per-user", v.path),
    KeySpec("config-per-group", v.path),
    KeySpec("default-user-config", v.path),
    KeySpec("default-group-config", v.path),
    KeySpec("route-add-cmd", v.text, scope=PROCESS),
    KeySpec("route-del-cmd", v.text, scope=PROCESS),
    KeySpec("proxy-url", v.text, support=_PLANNED),
    KeySpec("kkdcp", v.kkdcp_endpoint, repeated=True, support=_PLANNED),
    KeySpec("user-profile", v.path),
    KeySpec("cisco-client-compat", v.boolean),
    KeySpec("dtls-psk", v.boolean),
    KeySpec("dtls-legacy", v.boolean),
    KeySpec("client-bypass-protocol", v.boolean),
    KeySpec("custom-header", v.http_header, repeated=True),
    # In the config printed in ocserv 1.1.6's man page (extra headers on every HTTP response).
    KeySpec("included-http-headers", v.http_header, repeated=True, support=_PLANNED),
    # Only in per-user / per-group files.
    KeySpec("iroute", v.route, repeated=True, scope=Scope.PER_USER),
    KeySpec("explicit-ipv4", v.ipv4_address, scope=Scope.PER_USER),
    KeySpec("explicit-ipv6", v.ipv6_interface, scope=Scope.PER_USER),
    KeySpec("no-udp", v.boolean, scope=Scope.PER_USER),
    KeySpec("hostname", v.name, scope=Scope.PER_USER),
    # Other names ocserv accepts for the options above.
    KeySpec("always-require-cert", v.boolean, field="cisco_client_compat"),
    KeySpec("ipv4-dns", v.ip_address, repeated=True, scope=EVERYWHERE, field="dns"),
    KeySpec("ipv6-dns", v.ip_address, repeated=True, scope=EVERYWHERE, field="dns"),
    KeySpec("ipv4-nbns", v.ip_address, repeated=True, scope=EVERYWHERE, field="nbns"),
    KeySpec("ipv6-nbns", v.ip_address, repeated=True, scope=EVERYWHERE, field="nbns"),
    KeySpec("use-seccomp", v.boolean, scope=PROCESS, support=_NO_EFFECT, field=None),
    KeySpec("ban-time", v.seconds, field="min_reauth_time"),
    # trio-ocserv extensions (ocserv has no such option).
    KeySpec("metrics-listen", v.host_port, scope=PROCESS, reloadable=False),
    # ocserv 1.1.6 (or later) options trio-ocserv does not offer yet; their values are dropped.
    KeySpec("listen-clear-file", v.path, scope=PROCESS, support=_PLANNED, field=None),
    KeySpec("use-dbus", v.boolean, scope=PROCESS, support=_NO_EFFECT, field=None),
    KeySpec("session-control", v.boolean, support=_NO_EFFECT, field=None),
    KeySpec("debug-no-secmod-stats", v.boolean, scope=PROCESS, support=_NO_EFFECT, field=None),
    KeySpec("camouflage", v.boolean, support=_PLANNED, field=None),
    KeySpec("camouflage_secret", v.text, support=_PLANNED, field=None),
    KeySpec("camouflage_realm", v.text, support=_PLANNED, field=None),
)

KEY_SPECS: Mapping[str, KeySpec] = {spec.key: spec for spec in _SPECS}

RELOADABLE_KEYS: frozenset[str] = frozenset(s.key for s in _SPECS if s.reloadable)
"""Options a SIGHUP applies; the rest keep their start-up value until a restart."""

PER_USER_KEYS: frozenset[str] = frozenset(s.key for s in _SPECS if Scope.PER_USER in s.scope)
