"""occtl's plain-text output, column for column (samples in tests/ctl/data).

Pure functions from records (records.py) and the current wall time to the text occtl prints.
Known occtl quirks kept on purpose, since admins parse this text: table headers are one column
wider than some rows (`since` in `show users`, `session` in `show sessions`).
"""

from __future__ import annotations

from collections.abc import Sequence

from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)
from trio_ocserv.ctl.value_format import format_bytes, format_date, format_duration, format_rate

__all__ = [
    "SHORT_SESSION_LENGTH",
    "ban_points_table",
    "bans_table",
    "dtls_cipher_column",
    "event_line",
    "iroutes_table",
    "session_details",
    "sessions_table",
    "status_text",
    "user_details",
    "users_table",
]

SHORT_SESSION_LENGTH = 6
_USER_AGENT_COLUMN = 24
_NO_DTLS = "(no-dtls)"
_STATUS_NOTE = (
    "Note: the printed statistics are not real-time; session time\n"
    "as well as RX and TX data are updated on user disconnect\n"
)


def _vpn_ip(user: UserRecord) -> str:
    return user.ipv4 or user.ipv6 or ""


def dtls_cipher_column(description: str) -> str:
    """`(DTLS1.2)-(PSK)-(AES-256-GCM)` -> `(AES-256-GCM)`: the cipher part, as in `show users`."""
    if not description:
        return _NO_DTLS
    parts = description.split("-(")
    return "(" + parts[2] if len(parts) >= 3 else description


def users_table(users: Sequence[UserRecord], now: float) -> str:
    if not users:
        return ""
    header = (
        f"{'id':>8} {'user':>8} {'vhost':>8} {'ip':>14} {'vpn-ip':>14} {'device':>6} "
        f"{'since':>7} {'dtls-cipher':>14} {'status':>9}"
    )
    rows = [
        f"{u.id:>8} {u.username:>8} {u.vhost:>8} {u.remote_ip:>14} {_vpn_ip(u):>14} "
        f"{u.device:>6} {format_duration(now - u.connected_at)} "
        f"{dtls_cipher_column(u.dtls_cipher):>14} {u.state:>9}"
        for u in users
    ]
    return "\n".join([header, *rows]) + "\n"


def user_details(users: Sequence[UserRecord], now: float) -> str:
    """`show user NAME` / `show id ID`: one block a tunnel."""
    blocks = []
    for u in users:
        elapsed = now - u.connected_at
        lines = [
            f"ID: {u.id}",
            f"Username: {u.username}   Groupname: {u.groupname}",
            f"State: {u.state}",
            f"vhost: {u.vhost}",
            f"Device: {u.device}" + (f"   MTU: {u.mtu}" if u.mtu is not None else ""),
            f"Remote IP: {u.remote_ip}   Location: unknown",
        ]
        if u.local_device_ip:
            lines.append(f"Local Device IP: {u.local_device_ip}")
        if u.ipv4:
            lines.append(f"IPv4: {u.ipv4}   P-t-P IPv4: {u.ptp_ipv4 or ''}")
        if u.ipv6:
            lines.append(f"IPv6: {u.ipv6}   P-t-P IPv6: {u.ptp_ipv6 or ''}")
        if u.user_agent:
            lines.append(f"User-Agent: {u.user_agent}")
        lines += [
            f"RX: {u.rx} ({format_bytes(u.rx)})   TX: {u.tx} ({format_bytes(u.tx)})",
            f"Average bandwidth RX: {format_rate(u.rx, elapsed)}  "
            f"TX: {format_rate(u.tx, elapsed)}",
            f"DPD: {u.dpd}   KeepAlive: {u.keepalive}",
        ]
        if u.hostname:
            lines.append(f"Hostname: {u.hostname}")
        lines += [
            f"Connected at: {format_date(u.connected_at)} ({format_duration(elapsed)})",
            f"Session: {u.session[:SHORT_SESSION_LENGTH]}",
        ]
        if u.tls_ciphersuite:
            lines.append(f"TLS ciphersuite: {u.tls_ciphersuite}")
        if u.dtls_cipher:
            lines.append(f"DTLS cipher: {u.dtls_cipher}")
        lines.append("")
        for label, values in (
            ("DNS", u.dns),
            ("NBNS", u.nbns),
            ("Split-DNS-Domains", u.split_dns_domains),
            ("Routes", u.routes),
            ("No-routes", u.no_routes),
            ("iRoutes", u.iroutes),
        ):
            if values:
                lines.append(f"{label}: {', '.join(values)}")
        lines.append(f"Restricted to routes: {u.restricted_to_routes}")
        blocks.append("".join(f"\t{line}\n" if line else "\n" for line in lines) + "\n")
    return "".join(blocks)


def status_text(status: ServerStatus, now: float) -> str:
    up = format_duration(now - status.started_at)
    reset = format_duration(now - status.stats_reset_at)
    general = [
        "Status: online",
        f"Server PID: {status.pid}",
        f"Sec-mod PID: {status.pid}",
        "Sec-mod instance count: 1",
        f"Up since: {format_date(status.started_at)} ({up})",
        f"Active sessions: {status.active_sessions}",
        f"Total sessions: {status.total_sessions}",
        f"Total authentication failures: {status.auth_failures}",
        f"IPs in ban list: {status.ips_banned}",
        "Median latency: <1ms",
        "STDEV latency: <1ms",
    ]
    period = [
        f"Last stats reset: {format_date(status.stats_reset_at)} ({reset})",
        f"Sessions handled: {status.sessions_handled}",
        f"Timed out sessions: {status.timed_out_sessions}",
        f"Timed out (idle) sessions: {status.timed_out_idle_sessions}",
        f"Closed due to error sessions: {status.closed_error_sessions}",
        f"Authentication failures: {status.auth_failures}",
        f"Average auth time: {format_duration(status.avg_auth_time)}",
        f"Max auth time: {format_duration(status.max_auth_time)}",
        f"Average session time: {format_duration(status.avg_session_time)}",
        f"Max session time: {format_duration(status.max_session_time)}",
        f"RX: {format_bytes(status.rx)}",
        f"TX: {format_bytes(status.tx)}",
    ]
    return (
        _STATUS_NOTE
        + "\nGeneral info:\n"
        + "".join(f"\t{line}\n" for line in general)
        + "\nCurrent stats period:\n"
        + "".join(f"\t{line}\n" for line in period)
    )


def sessions_table(sessions: Sequence[SessionRecord], now: float) -> str:
    if not sessions:
        return ""
    header = (
        f"{'session':>6} {'user':>8} {'vhost':>8} {'ip':>14} {'user agent':>24} "
        f"{'created':>8} {'status':>8}"
    )
    ua = _USER_AGENT_COLUMN
    rows = [
        f"{s.session[:SHORT_SESSION_LENGTH]:>6} {s.username:>8} {s.vhost:>8} {s.remote_ip:>14} "
        f"{s.user_agent[:ua]:>{ua}} {format_duration(now - s.created):>8} {s.state}"
        for s in sessions
    ]
    return "\n".join([header, *rows]) + "\n"


def session_details(sessions: Sequence[SessionRecord]) -> str:
    blocks = []
    for s in sessions:
        lines = [
            f"Session: {s.session[:SHORT_SESSION_LENGTH]}",
            f"Full session ID: {s.session}",
            f"Created: {format_date(s.created)}",
            f"State: {s.state}",
            f"Username: {s.username}   Groupname: {s.groupname}",
            f"vhost: {s.vhost}   User-Agent: {s.user_agent}",
            f"Remote IP: {s.remote_ip}   Location: unknown",
            f"In use: {s.in_use}   Activated: True",
            f"Certificate auth: {s.certificate_auth}",
        ]
        blocks.append("".join(f"\t{line}\n" for line in lines))
    return "\n".join(blocks)


def bans_table(bans: Sequence[BanRecord], now: float) -> str:
    if not bans:
        return ""
    rows = [f"{'IP':>14} {'score':>14} {'expires':>30}"]
    for ban in bans:
        until = ban.banned_until if ban.banned_until is not None else now
        rows.append(
            f"{ban.address:>14} {ban.score:>14} {format_date(until):>30} "
            f"({format_duration(until - now)})"
        )
    return "\n".join(rows) + "\n"


def ban_points_table(entries: Sequence[BanRecord]) -> str:
    if not entries:
        return ""
    rows = [f"{'IP':>14} {'score':>14}"]
    rows += [f"{entry.address:>14} {entry.score:>14}" for entry in entries]
    return "\n".join(rows) + "\n"


def iroutes_table(users: Sequence[UserRecord]) -> str:
    """Only users that provide routes get a row; the header is always printed."""
    rows = [f"{'id':>6} {'user':>8} {'vhost':>8} {'device':>6} {'vpn-ip':>16} {'iroute':>28}"]
    rows += [
        f"{u.id:>6} {u.username:>8} {u.vhost:>8} {u.device:>6} {_vpn_ip(u):>16} "
        f"{', '.join(u.iroutes):>28}"
        for u in users
        if u.iroutes
    ]
    return "\n".join(rows) + "\n"


def event_line(event: TunnelEvent) -> str:
    connected = event.kind is EventKind.CONNECTED
    line = (
        f"{event.vhost}: {'connected' if connected else 'disconnect'} user '{event.username}' "
        f"({event.id}) from {event.remote_ip} with IP {event.ip or '(none)'}"
    )
    if not connected:
        line += f" (reason: {event.reason}, time: {format_duration(event.duration)})"
    return line + "\n"
