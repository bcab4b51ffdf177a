"""What the control socket reports: plain, frozen records of users, sessions, bans and events.

These are the figures `ctl` shows, as the server side collects them (`state_view.py`) and as they
travel over the socket (`protocol.py`). Times are wall-clock seconds since the epoch, so both ends
of the socket agree on them; byte counters are IP packet bytes.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "BanRecord",
    "EventKind",
    "ServerStatus",
    "SessionRecord",
    "TunnelEvent",
    "UserRecord",
]


@attrs.frozen(kw_only=True)
class UserRecord:
    """One connected tunnel (occtl's "user"); `id` is the tunnel id, ocserv's worker PID."""

    id: int
    username: str
    # "(none)" when the user has no group.
    groupname: str
    vhost: str = "default"
    state: str = "connected"
    device: str
    mtu: int | None = None
    remote_ip: str
    local_device_ip: str = ""
    ipv4: str | None = None
    ptp_ipv4: str | None = None
    ipv6: str | None = None
    ptp_ipv6: str | None = None
    user_agent: str = ""
    hostname: str = ""
    # rx: client -> server, tx: server -> client.
    rx: int = 0
    tx: int = 0
    dpd: int = 0
    keepalive: int = 0
    connected_at: float
    # The session's public id (not its cookie); occtl shows its first 6 characters.
    session: str
    tls_ciphersuite: str = ""
    # "" while no DTLS channel is established.
    dtls_cipher: str = ""
    dns: tuple[str, ...] = ()
    nbns: tuple[str, ...] = ()
    split_dns_domains: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    no_routes: tuple[str, ...] = ()
    iroutes: tuple[str, ...] = ()
    restricted_to_routes: bool = False


@attrs.frozen(kw_only=True)
class SessionRecord:
    """One login (cookie), with or without a tunnel."""

    session: str
    created: float
    state: str = "authenticated"
    username: str
    groupname: str
    vhost: str = "default"
    user_agent: str = ""
    remote_ip: str
    in_use: bool
    certificate_auth: bool = False
    # The cookie still opens a tunnel (`show sessions valid`).
    valid: bool = True


@attrs.frozen(kw_only=True)
class BanRecord:
    """A scored address (an IPv4 address or an IPv6 /64); `banned_until` is set while banned."""

    address: str
    score: int
    banned_until: float | None = None


@attrs.frozen(kw_only=True)
class ServerStatus:
    """`show status`. Figures the server does not keep are 0."""

    pid: int
    started_at: float
    active_sessions: int
    total_sessions: int
    ips_banned: int
    stats_reset_at: float
    auth_failures: int = 0
    sessions_handled: int = 0
    timed_out_sessions: int = 0
    timed_out_idle_sessions: int = 0
    closed_error_sessions: int = 0
    avg_auth_time: int = 0
    max_auth_time: int = 0
    avg_session_time: int = 0
    max_session_time: int = 0
    rx: int = 0
    tx: int = 0


class EventKind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@attrs.frozen(kw_only=True)
class TunnelEvent:
    """A tunnel came up or went down (`show events`)."""

    kind: EventKind
    id: int
    username: str
    vhost: str = "default"
    remote_ip: str
    ip: str = ""
    # Disconnects only: why (occtl's wording) and how long the tunnel lasted, in seconds.
    reason: str = ""
    duration: float = 0.0
    rx: int = 0
    tx: int = 0
