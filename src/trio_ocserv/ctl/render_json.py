"""occtl's `-j` output: the same keys, key order, value types and layout as occtl 1.1.6.

Scripts parse `occtl -j show users`, so keys and value shapes follow the captured samples in
tests/ctl/data (numbers as JSON numbers where occtl prints numbers, as strings where occtl prints
strings, e.g. "RX": "300"). Unlike occtl, the output is always valid JSON: no trailing commas
(`show sessions`), and `show iroutes` is an array. `show events` prints one JSON object a line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)
from trio_ocserv.ctl.render_text import SHORT_SESSION_LENGTH
from trio_ocserv.ctl.value_format import format_bytes, format_date, format_duration, format_rate

__all__ = [
    "ban_points_json",
    "bans_json",
    "event_json",
    "iroutes_json",
    "sessions_json",
    "status_json",
    "users_json",
]

JsonScalar = str | int | float | bool | None
Field = tuple[str, JsonScalar | Sequence[str]]


def _value(value: JsonScalar | Sequence[str]) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return "  " + json.dumps(value, ensure_ascii=False)
    # occtl puts a tab before arrays.
    return "\t[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"


def _object(fields: Sequence[Field]) -> str:
    body = ",\n".join(f"    {json.dumps(key)}:{_value(value)}" for key, value in fields)
    return "  {\n" + body + "\n  }"


def _array(objects: Sequence[Sequence[Field]]) -> str:
    if not objects:
        return "[\n]\n"
    return "[\n" + ",\n".join(_object(fields) for fields in objects) + "\n]\n"


def _user_fields(u: UserRecord, now: float) -> list[Field]:
    elapsed = now - u.connected_at
    fields: list[Field] = [
        ("ID", u.id),
        ("Username", u.username),
        ("Groupname", u.groupname),
        ("State", u.state),
        ("vhost", u.vhost),
        ("Device", u.device),
    ]
    if u.mtu is not None:
        fields.append(("MTU", str(u.mtu)))
    fields += [("Remote IP", u.remote_ip), ("Location", "unknown")]
    if u.local_device_ip:
        fields.append(("Local Device IP", u.local_device_ip))
    if u.ipv4:
        fields += [("IPv4", u.ipv4), ("P-t-P IPv4", u.ptp_ipv4 or "")]
    if u.ipv6:
        fields += [("IPv6", u.ipv6), ("P-t-P IPv6", u.ptp_ipv6 or "")]
    fields += [
        ("User-Agent", u.user_agent),
        ("RX", str(u.rx)),
        ("TX", str(u.tx)),
        ("_RX", format_bytes(u.rx)),
        ("_TX", format_bytes(u.tx)),
        ("Average RX", format_rate(u.rx, elapsed)),
        ("Average TX", format_rate(u.tx, elapsed)),
        ("DPD", str(u.dpd)),
        ("KeepAlive", str(u.keepalive)),
    ]
    if u.hostname:
        fields.append(("Hostname", u.hostname))
    fields += [
        ("Connected at", format_date(u.connected_at)),
        ("_Connected at", format_duration(elapsed)),
        ("Full session", u.session),
        ("Session", u.session[:SHORT_SESSION_LENGTH]),
    ]
    if u.tls_ciphersuite:
        fields.append(("TLS ciphersuite", u.tls_ciphersuite))
    if u.dtls_cipher:
        fields.append(("DTLS cipher", u.dtls_cipher))
    fields += [
        ("DNS", u.dns),
        ("NBNS", u.nbns),
        ("Split-DNS-Domains", u.split_dns_domains),
        ("Routes", u.routes),
        ("No-routes", u.no_routes),
        ("iRoutes", u.iroutes),
        ("Restricted to routes", str(u.restricted_to_routes)),
        ("Restricted to ports", ()),
    ]
    return fields


def users_json(users: Sequence[UserRecord], now: float) -> str:
    """`show users`, `show user NAME`, `show id ID`."""
    return _array([_user_fields(u, now) for u in users])


def status_json(status: ServerStatus, now: float) -> str:
    up = int(now - status.started_at)
    since_reset = int(now - status.stats_reset_at)
    fields: list[Field] = [
        ("Status", "online"),
        ("Server PID", status.pid),
        ("Sec-mod PID", status.pid),
        ("Sec-mod instance count", 1),
        ("Up since", format_date(status.started_at)),
        ("_Up since", format_duration(up)),
        ("raw_up_since", int(status.started_at)),
        ("uptime", up),
        ("Active sessions", status.active_sessions),
        ("Total sessions", status.total_sessions),
        ("Total authentication failures", status.auth_failures),
        ("IPs in ban list", status.ips_banned),
        ("Median latency", "<1ms"),
        ("raw_median_latency", 0),
        ("STDEV latency", "<1ms"),
        ("raw_stdev_latency", 0),
        ("Last stats reset", format_date(status.stats_reset_at)),
        ("_Last stats reset", format_duration(since_reset)),
        ("raw_last_stats_reset", int(status.stats_reset_at)),
        ("Sessions handled", status.sessions_handled),
        ("Timed out sessions", status.timed_out_sessions),
        ("Timed out (idle) sessions", status.timed_out_idle_sessions),
        ("Closed due to error sessions", status.closed_error_sessions),
        ("Authentication failures", status.auth_failures),
        ("Average auth time", format_duration(status.avg_auth_time)),
        ("raw_avg_auth_time", status.avg_auth_time),
        ("Max auth time", format_duration(status.max_auth_time)),
        ("raw_max_auth_time", status.max_auth_time),
        ("Average session time", format_duration(status.avg_session_time)),
        ("raw_avg_session_time", status.avg_session_time),
        ("Max session time", format_duration(status.max_session_time)),
        ("raw_max_session_time", status.max_session_time),
        ("RX", format_bytes(status.rx)),
        ("raw_rx", status.rx),
        ("TX", format_bytes(status.tx)),
        ("raw_tx", status.tx),
    ]
    return _object(fields) + "\n"


def sessions_json(sessions: Sequence[SessionRecord]) -> str:
    """`show sessions all|valid`, `show session SID`."""
    return _array([
        [
            ("Session", s.session[:SHORT_SESSION_LENGTH]),
            ("Full session", s.session),
            ("Created", format_date(s.created)),
            ("State", s.state),
            ("Username", s.username),
            ("Groupname", s.groupname),
            ("vhost", s.vhost),
            ("User-Agent", s.user_agent),
            ("Remote IP", s.remote_ip),
            ("Location", "unknown"),
            ("session_is_open", 1),
            ("tls_auth_ok", int(s.certificate_auth)),
            ("in_use", int(s.in_use)),
        ]
        for s in sessions
    ])


def bans_json(bans: Sequence[BanRecord], now: float) -> str:
    objects: list[list[Field]] = []
    for ban in bans:
        until = ban.banned_until if ban.banned_until is not None else now
        objects.append([
            ("IP", ban.address),
            # occtl calls the ban's end "Since".
            ("Since", format_date(until)),
            ("_Since", format_duration(until - now)),
            ("Score", ban.score),
        ])
    return _array(objects)


def ban_points_json(entries: Sequence[BanRecord]) -> str:
    return _array([[("IP", e.address), ("Score", e.score)] for e in entries])


def iroutes_json(users: Sequence[UserRecord]) -> str:
    return _array([
        [
            ("ID", u.id),
            ("Username", u.username),
            ("vhost", u.vhost),
            ("Device", u.device),
            ("IP", u.ipv4 or u.ipv6 or ""),
            ("iRoutes", u.iroutes),
        ]
        for u in users
    ])


def event_json(event: TunnelEvent) -> str:
    """One line a event (JSON Lines), so a script can read the stream line by line."""
    fields: dict[str, object] = {
        "Event": event.kind.value,
        "ID": event.id,
        "Username": event.username,
        "vhost": event.vhost,
        "Remote IP": event.remote_ip,
        "IP": event.ip,
    }
    if event.kind is EventKind.DISCONNECTED:
        fields |= {
            "Reason": event.reason,
            "Time": int(event.duration),
            "RX": str(event.rx),
            "TX": str(event.tx),
        }
    return json.dumps(fields, ensure_ascii=False) + "\n"
