"""The control socket's view of a running server, read from `ServerState` (server/state.py).

`make_server_view(state)` and `make_server_actions(view, reload=..., stop=...)` adapt the
server's shared state to the interfaces of view.py. The state is read duck-typed (attributes
`tunnels`, `sessions`, `bans`, `pool`, `settings`, `clock`, `wall_clock`, optionally
`login_counts`), so this module does not import the server package. Optional per-tunnel
details are read from the tunnel handle when present: `user_agent`, `hostname`, `mtu`,
`local_address`, `iroutes`.

The view also keeps the statistics of `show status` and publishes `show events`: the server calls
`tunnel_up()` when a tunnel starts and `tunnel_down()` when it ended.

Sessions are shown under a public id, an HMAC of the session number under a per-process key:
the cookie itself is never stored, and the id reveals nothing about it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import attrs
import trio

from trio_ocserv.ctl.event_feed import EventFeed
from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)
from trio_ocserv.server.tunnel import live_counters

__all__ = [
    "StateActions",
    "StateView",
    "describe_dtls_suite",
    "describe_tls",
    "disconnect_reason_text",
    "make_server_actions",
    "make_server_view",
]

_SESSION_ID_BYTES = 20
# How long a disconnect waits for the tunnel's cleanup before answering.
_CLOSE_WAIT = 5.0
_NO_GROUP = "(none)"

# occtl's wording for why a tunnel ended, by `TunnelEnd` name (server/tunnel.py).
_REASON_TEXT = {
    "USER_LOGOUT": "user disconnected",
    "CLIENT_DISCONNECT": "temporary disconnect",
    "CONNECTION_LOST": "unspecified",
    "PROTOCOL_ERROR": "error",
    "DPD_TIMEOUT": "DPD timeout",
    "IDLE_TIMEOUT": "idle timeout",
    "SESSION_TIMEOUT": "session timeout",
    "SERVER_DISCONNECT": "server disconnected",
    "TAKEN_OVER": "reconnected",
    "TUN_GONE": "error",
}
_TIMED_OUT = frozenset({"SESSION_TIMEOUT", "DPD_TIMEOUT"})
_ERRORS = frozenset({"PROTOCOL_ERROR", "TUN_GONE"})


def disconnect_reason_text(end: object) -> str:
    return _REASON_TEXT.get(str(getattr(end, "name", "")), "unspecified")


def describe_dtls_suite(suite_name: str) -> str:
    """`TLS_PSK_WITH_AES_256_GCM_SHA384` -> `(DTLS1.2)-(PSK)-(AES-256-GCM)`, as ocserv shows it."""
    if not suite_name:
        return ""
    key_exchange, _, cipher = suite_name.removeprefix("TLS_").partition("_WITH_")
    words = cipher.split("_")
    mac = ""
    if words and words[-1].startswith("SHA"):
        # A separate MAC only for CBC suites; AEAD suites name their PRF hash there.
        if "CBC" in words:
            mac = "-(SHA1)" if words[-1] == "SHA" else f"-({words[-1]})"
        words = words[:-1]
    if words[:2] == ["3DES", "EDE"]:
        words = ["3DES", *words[2:]]
    legacy_cbc = key_exchange == "RSA" and "CBC" in words
    version = "DTLS0.9" if legacy_cbc else "DTLS1.2"
    return f"({version})-({key_exchange.replace('_', '-')})-({'-'.join(words)}){mac}"


def describe_tls(version: object, cipher: object) -> str:
    """`(TLS1.3)-(TLS_AES_256_GCM_SHA384)` from pyOpenSSL's version and cipher names."""
    if not version and not cipher:
        return ""
    return f"({str(version or '').replace('TLSv', 'TLS')})-({cipher or ''})"


def _route_text(route: object) -> str:
    if isinstance(route, IPv4Network):
        return f"{route.network_address}/{route.netmask}"
    if isinstance(route, IPv6Network):
        return str(route)
    return str(route)


def _texts(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def _groupname(session: Any) -> str:
    group = session.group or (session.groups[0] if session.groups else None)
    return str(group) if group else _NO_GROUP


@attrs.define
class _Statistics:
    sessions_handled: int = 0
    timed_out: int = 0
    timed_out_idle: int = 0
    closed_error: int = 0
    rx: int = 0
    tx: int = 0
    session_time_total: float = 0.0
    session_time_max: float = 0.0


class StateView:
    """Implements `ServerView` on a `ServerState`; see the module docstring."""

    def __init__(self, state: Any, *, events: EventFeed | None = None) -> None:
        self.state = state
        self.events = events or EventFeed()
        self.pid = os.getpid()
        self.started_at = self.wall_time()
        self._key = secrets.token_bytes(32)
        self._stats = _Statistics()

    # -- clocks and ids

    def wall_time(self) -> float:
        return float(self.state.wall_clock())

    def _wall(self, monotonic: float | None) -> float:
        """A time on the state's monotonic clock, as wall time."""
        now = self.wall_time()
        if monotonic is None:
            return now
        return now - (float(self.state.clock()) - monotonic)

    def public_session_id(self, session_id: int) -> str:
        digest = hmac.new(self._key, session_id.to_bytes(8, "big"), hashlib.sha256).digest()
        return base64.b64encode(digest[:_SESSION_ID_BYTES]).decode("ascii")

    def session_by_public_id(self, public_id: str) -> Any:
        for session in self.state.sessions:
            if self.public_session_id(session.session_id) == public_id:
                return session
        return None

    # -- ServerView

    def status(self) -> ServerStatus:
        stats = self._stats
        now = float(self.state.clock())
        handled = stats.sessions_handled
        live = [live_counters(h.tunnel) for h in self.state.tunnels.values()]
        rx = stats.rx + sum(c.bytes_in for c in live)
        tx = stats.tx + sum(c.bytes_out for c in live)
        return ServerStatus(
            pid=self.pid,
            started_at=self.started_at,
            active_sessions=len(self.state.tunnels),
            total_sessions=len(self.state.sessions),
            ips_banned=len(self.state.bans.bans(now)),
            stats_reset_at=self.started_at,
            sessions_handled=handled,
            timed_out_sessions=stats.timed_out,
            timed_out_idle_sessions=stats.timed_out_idle,
            closed_error_sessions=stats.closed_error,
            avg_session_time=int(stats.session_time_total / handled) if handled else 0,
            max_session_time=int(stats.session_time_max),
            rx=rx,
            tx=tx,
            auth_failures=int(getattr(getattr(self.state, "login_counts", None), "failed", 0)),
        )

    def users(self) -> list[UserRecord]:
        return [self._user(tunnel_id, handle) for tunnel_id, handle in self.state.tunnels.items()]

    def _user(self, tunnel_id: int, handle: Any) -> UserRecord:
        state, session, tunnel = self.state, handle.session, handle.tunnel
        settings = state.settings
        lease = state.pool.lease(session.lease_id)
        ipv4 = lease.ipv4 if lease is not None else None
        ipv6 = lease.ipv6 if lease is not None else None
        dtls = tunnel.dtls
        stream = tunnel.stream
        counters = live_counters(tunnel)
        mtu = getattr(handle, "mtu", None)
        return UserRecord(
            id=tunnel_id,
            username=str(session.username),
            groupname=_groupname(session),
            device=str(handle.device),
            mtu=int(mtu) if mtu is not None else None,
            remote_ip=str(session.real_address),
            local_device_ip=str(getattr(handle, "local_address", "") or ""),
            ipv4=str(ipv4.address) if ipv4 is not None else None,
            ptp_ipv4=str(ipv4.local) if ipv4 is not None else None,
            ipv6=str(ipv6.address) if ipv6 is not None else None,
            ptp_ipv6=str(ipv6.local) if ipv6 is not None else None,
            user_agent=str(getattr(handle, "user_agent", "") or ""),
            hostname=str(getattr(handle, "hostname", "") or ""),
            rx=int(counters.bytes_in),
            tx=int(counters.bytes_out),
            dpd=int(settings.dpd),
            keepalive=int(settings.keepalive),
            connected_at=self._wall(session.tunnel_started),
            session=self.public_session_id(session.session_id),
            tls_ciphersuite=describe_tls(
                getattr(stream, "tls_version", None), getattr(stream, "cipher", None)
            ),
            dtls_cipher=describe_dtls_suite(getattr(dtls, "cipher_name", "") if dtls else ""),
            dns=_texts(settings.dns),
            nbns=_texts(settings.nbns),
            split_dns_domains=_texts(settings.split_dns),
            routes=tuple(_route_text(r) for r in settings.route),
            no_routes=tuple(_route_text(r) for r in settings.no_route),
            iroutes=tuple(_route_text(r) for r in getattr(handle, "iroutes", ())),
            restricted_to_routes=bool(settings.restrict_user_to_routes),
        )

    def sessions(self) -> list[SessionRecord]:
        state = self.state
        now = float(state.clock())
        handles = {tunnel_id: handle for tunnel_id, handle in state.tunnels.items()}
        records = []
        for session in state.sessions:
            handle = handles.get(session.tunnel_id)
            records.append(SessionRecord(
                session=self.public_session_id(session.session_id),
                created=self._wall(session.created),
                username=str(session.username),
                groupname=_groupname(session),
                user_agent=str(getattr(handle, "user_agent", "") or ""),
                remote_ip=str(session.real_address),
                in_use=session.tunnel_id is not None,
                valid=session.expires is None or now < session.expires,
            ))
        return records

    def _ban_records(self, entries: Iterable[Any]) -> list[BanRecord]:
        return [
            BanRecord(
                address=str(entry.address).removesuffix("/32"),
                score=int(entry.score),
                banned_until=(
                    self._wall(entry.banned_until) if entry.banned_until is not None else None
                ),
            )
            for entry in entries
        ]

    def bans(self) -> list[BanRecord]:
        return self._ban_records(self.state.bans.bans(float(self.state.clock())))

    def ban_points(self) -> list[BanRecord]:
        return self._ban_records(self.state.bans.points(float(self.state.clock())))

    # -- hooks the server calls

    def _event(self, kind: EventKind, tunnel_id: int, handle: Any, **extra: Any) -> TunnelEvent:
        session = handle.session
        lease = self.state.pool.lease(session.lease_id)
        ip = ""
        if lease is not None:
            assignment = lease.ipv4 or lease.ipv6
            ip = str(assignment.address) if assignment is not None else ""
        return TunnelEvent(
            kind=kind,
            id=tunnel_id,
            username=str(session.username),
            remote_ip=str(session.real_address),
            ip=ip,
            **extra,
        )

    def tunnel_up(self, tunnel_id: int, handle: Any) -> None:
        """A tunnel started (its handle is in `state.tunnels`)."""
        self.events.publish(self._event(EventKind.CONNECTED, tunnel_id, handle))

    def tunnel_down(self, tunnel_id: int, handle: Any, end: object) -> None:
        """A tunnel ended; `end` is its `TunnelEnd`. Call before its lease is released."""
        counters = handle.tunnel.counters
        started = handle.session.tunnel_started
        duration = max(0.0, float(self.state.clock()) - started) if started is not None else 0.0
        stats, name = self._stats, str(getattr(end, "name", ""))
        stats.sessions_handled += 1
        stats.rx += int(counters.bytes_in)
        stats.tx += int(counters.bytes_out)
        stats.session_time_total += duration
        stats.session_time_max = max(stats.session_time_max, duration)
        stats.timed_out += name in _TIMED_OUT
        stats.timed_out_idle += name == "IDLE_TIMEOUT"
        stats.closed_error += name in _ERRORS
        self.events.publish(self._event(
            EventKind.DISCONNECTED,
            tunnel_id,
            handle,
            reason=disconnect_reason_text(end),
            duration=duration,
            rx=int(counters.bytes_in),
            tx=int(counters.bytes_out),
        ))


def make_server_view(state: Any, *, events: EventFeed | None = None) -> StateView:
    return StateView(state, events=events)


class StateActions:
    """Implements `ServerActions` on the state behind a `StateView`."""

    def __init__(
        self, view: StateView, *, reload: Callable[[], None], stop: Callable[[], None]
    ) -> None:
        self.view = view
        self.state = view.state
        self._reload = reload
        self._stop = stop

    async def _end_tunnels(self, handles: list[Any]) -> bool:
        """Stop the tunnels (server disconnect) and wait for their cleanup; False on timeout."""
        for handle in handles:
            handle.tunnel.stop()
        with trio.move_on_after(_CLOSE_WAIT):
            for handle in handles:
                await handle.closed.wait()
            return True
        return False

    def _handles(self, match: Callable[[int, Any], bool]) -> list[Any]:
        return [h for tunnel_id, h in self.state.tunnels.items() if match(tunnel_id, h)]

    def _forget(self, sessions: list[Any]) -> None:
        """Invalidate sessions whose tunnels are down: the cookie stops working, the lease ends."""
        for session in sessions:
            gone = self.state.sessions.remove(session.session_id)
            if gone is not None:
                self.state.pool.release(gone.lease_id)

    async def disconnect_user(self, username: str) -> bool:
        handles = self._handles(lambda _, h: h.session.username == username)
        return bool(handles) and await self._end_tunnels(handles)

    async def disconnect_id(self, tunnel_id: int) -> bool:
        handles = self._handles(lambda i, _: i == tunnel_id)
        return bool(handles) and await self._end_tunnels(handles)

    async def _terminate(self, sessions: list[Any]) -> bool:
        if not sessions:
            return False
        active = {s.tunnel_id for s in sessions if s.tunnel_id is not None}
        handles = self._handles(lambda i, _: i in active)
        if handles and not await self._end_tunnels(handles):
            return False
        self._forget(sessions)
        return True

    async def terminate_user(self, username: str) -> bool:
        return await self._terminate(list(self.state.sessions.sessions_of(username)))

    async def terminate_id(self, tunnel_id: int) -> bool:
        handles = self._handles(lambda i, _: i == tunnel_id)
        return bool(handles) and await self._terminate([handles[0].session])

    async def terminate_session(self, session: str) -> bool:
        found = self.view.session_by_public_id(session)
        return found is not None and await self._terminate([found])

    def unban_ip(self, address: str) -> bool:
        return bool(self.state.bans.unban(address))

    def reload(self) -> None:
        self._reload()

    def stop(self) -> None:
        self._stop()


def make_server_actions(
    view: StateView, *, reload: Callable[[], None], stop: Callable[[], None]
) -> StateActions:
    return StateActions(view, reload=reload, stop=stop)
