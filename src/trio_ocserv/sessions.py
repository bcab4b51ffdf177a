"""The session table: who is logged in, their cookies, and which tunnel currently uses each one.

Owns: issuing the `webvpn` cookie after authentication (32 random bytes, sent as 44 characters of
standard base64, protocol.md 4.1), finding a session by cookie without timing leaks, the cookie
lifetime rules of protocol.md 4.4 (`cookie-timeout`, `persistent-cookies`, logout), the
`session-timeout` deadline that reconnects cannot push back, `max-clients`, `max-same-clients`,
`deny-roaming`, and the take-over of a session by a reconnect with the same cookie.

Rules, in the order `attach` (CONNECT) applies them:
1. The cookie decodes to 32 bytes and names a session whose cookie has not expired.
2. The session-timeout, counted from the first tunnel of the session, has not passed.
3. With deny-roaming the client comes from the address it authenticated from.
4. If a tunnel already uses the cookie, the new one takes over: the caller cancels the old tunnel
   (`Attachment.replaced_tunnel_id`) and the session keeps its IP lease.
5. Otherwise max-clients (all tunnels) and max-same-clients (this user's tunnels) must allow it.
A session whose tunnel is up never expires; when it goes down the reason decides (`detach`).

Must not: read clocks (every call takes `now`, seconds on any monotonic scale), do I/O, or touch
IP pools and tunnels: it returns what the caller has to release or cancel.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import heapq
import hmac
import itertools
import secrets
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import attrs

__all__ = [
    "COOKIE_BYTES",
    "Attachment",
    "CookieRejected",
    "DisconnectReason",
    "NewSession",
    "RoamingDenied",
    "Session",
    "SessionRefused",
    "SessionSettings",
    "SessionStatistics",
    "SessionTable",
    "SessionTimedOut",
    "TooManyClients",
    "TooManySameClients",
    "decode_cookie",
    "encode_cookie",
    "normalize_address",
]

COOKIE_BYTES = 32
# base64 of 32 bytes is 44 characters; anything much longer is not worth decoding.
_MAX_COOKIE_TEXT = 64

IpAddress = IPv4Address | IPv6Address


class SessionRefused(Exception):
    """A login or CONNECT is refused; `str()` is safe to log and to show the client."""


class CookieRejected(SessionRefused):
    """Unknown, malformed or expired cookie (ocserv answers 401 "Cookie is not acceptable")."""


class SessionTimedOut(CookieRejected):
    """The session-timeout has passed; the user has to authenticate again."""


class RoamingDenied(CookieRejected):
    """deny-roaming: the cookie is used from another address than the one that authenticated."""


class TooManyClients(SessionRefused):
    """max-clients reached."""


class TooManySameClients(SessionRefused):
    """max-same-clients reached for this user."""


class DisconnectReason(enum.Enum):
    """Why a tunnel ended; decides what happens to its cookie (protocol.md 4.4, 8.6)."""

    # CSTP DISCONNECT with payload 0xB0 ("Aborted by caller").
    USER_LOGOUT = "user-logout"
    # Admin disconnect (ctl) or server shutdown.
    SERVER_DISCONNECT = "server-disconnect"
    SESSION_TIMEOUT = "session-timeout"
    # TCP/TLS loss, DPD timeout, empty DISCONNECT, idle timeout, rekey by new tunnel, errors.
    CONNECTION_LOST = "connection-lost"


def encode_cookie(raw: bytes) -> str:
    """The cookie as the client sees it (`Set-Cookie: webvpn=<this>`)."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def decode_cookie(text: str) -> bytes | None:
    """The 32 cookie bytes, or None for anything else (the peer is unauthenticated: never raise)."""
    text = text.rstrip(" ")
    if not text or len(text) > _MAX_COOKIE_TEXT or not text.isascii():
        return None
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except binascii.Error:
        return None
    return raw if len(raw) == COOKIE_BYTES else None


def normalize_address(address: str | IpAddress) -> IpAddress:
    """A client address as compared by deny-roaming: IPv4-mapped IPv6 becomes IPv4."""
    parsed = ip_address(address) if isinstance(address, str) else address
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@attrs.frozen
class SessionSettings:
    """The global settings; per-user/group overrides are passed to `SessionTable.create`."""

    cookie_timeout: float = 120.0
    # None (or 0) = no session timeout.
    session_timeout: float | None = None
    persistent_cookies: bool = False
    # 0 = unlimited.
    max_clients: int = 0
    max_same_clients: int = 0
    deny_roaming: bool = False
    # ocserv adds 15 s of slack to every cookie expiry; we are exact unless told otherwise.
    cookie_slack: float = 0.0


@attrs.define(eq=False)
class Session:
    """One authenticated login. Read it; only the table changes it."""

    session_id: int
    username: str
    group: str | None
    groups: tuple[str, ...]
    # Where the client authenticated from (deny-roaming) and where its tunnel comes from now.
    auth_address: IpAddress
    real_address: IpAddress
    lease_id: str
    created: float
    # None while a tunnel uses the cookie: it cannot expire then.
    expires: float | None
    deny_roaming: bool
    max_same_clients: int
    session_timeout: float | None
    tunnel_id: int | None = None
    tunnel_started: float | None = None
    first_tunnel_started: float | None = None
    connects: int = 0

    @property
    def tunnel_active(self) -> bool:
        return self.tunnel_id is not None

    @property
    def deadline(self) -> float | None:
        """When session-timeout ends this session (None: no timeout or no tunnel yet)."""
        if not self.session_timeout or self.first_tunnel_started is None:
            return None
        return self.first_tunnel_started + self.session_timeout

    def time_remaining(self, now: float) -> float | None:
        """For `X-CSTP-Session-Timeout-Remaining`; None when there is no session timeout."""
        if not self.session_timeout:
            return None
        start = self.first_tunnel_started if self.first_tunnel_started is not None else now
        return max(0.0, start + self.session_timeout - now)


@attrs.frozen
class NewSession:
    session: Session
    # The text for `Set-Cookie: webvpn=...`; the table keeps only a keyed digest of it.
    cookie: str


@attrs.frozen
class Attachment:
    """A CONNECT accepted: the tunnel id to pass to `detach`, and the tunnel to cancel if any."""

    session: Session
    tunnel_id: int
    replaced_tunnel_id: int | None


@attrs.frozen
class SessionStatistics:
    sessions: int
    active_tunnels: int


class SessionTable:
    """All sessions of one server."""

    def __init__(self, settings: SessionSettings | None = None) -> None:
        self.settings = settings or SessionSettings()
        # Sessions are found by HMAC(key, cookie): the dict lookup then reveals nothing an attacker
        # could steer, since they cannot compute digests, and the cookie itself is never stored.
        self._key = secrets.token_bytes(32)
        self._by_digest: dict[bytes, int] = {}
        self._sessions: dict[int, Session] = {}
        self._digests: dict[int, bytes] = {}
        self._by_user: dict[str, set[int]] = {}
        # Authenticated but never connected: they count against the limits until they expire.
        self._pending: set[int] = set()
        self._active = 0
        self._expiry_heap: list[tuple[float, int]] = []
        self._ids = itertools.count(1)
        self._tunnel_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: int) -> Session | None:
        return self._sessions.get(session_id)

    def sessions_of(self, username: str) -> list[Session]:
        return [self._sessions[i] for i in self._by_user.get(username, ())]

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(sessions=len(self._sessions), active_tunnels=self._active)

    def create(
        self,
        username: str,
        real_address: str | IpAddress,
        now: float,
        *,
        group: str | None = None,
        groups: tuple[str, ...] = (),
        lease_id: str | None = None,
        deny_roaming: bool | None = None,
        max_same_clients: int | None = None,
        session_timeout: float | None = None,
    ) -> NewSession:
        """Record a finished authentication and issue its cookie.

        The keyword overrides are the per-user/group config values (None: the global setting).
        Raises TooManyClients / TooManySameClients; sessions that hold only a cookie for a client
        that went away do not count, tunnels and fresh logins do.
        """
        settings = self.settings
        limit_same = settings.max_same_clients if max_same_clients is None else max_same_clients
        if settings.max_clients and self._occupying(now) >= settings.max_clients:
            raise TooManyClients(f"max-clients ({settings.max_clients}) reached")
        if limit_same and self._occupying(now, username) >= limit_same:
            raise TooManySameClients(
                f"user {username!r} already has {limit_same} session(s) (max-same-clients)"
            )
        session_id = next(self._ids)
        address = normalize_address(real_address)
        raw = secrets.token_bytes(COOKIE_BYTES)
        session = Session(
            session_id=session_id,
            username=username,
            group=group,
            groups=groups,
            auth_address=address,
            real_address=address,
            lease_id=lease_id if lease_id is not None else f"session-{session_id}",
            created=now,
            expires=None,
            deny_roaming=settings.deny_roaming if deny_roaming is None else deny_roaming,
            max_same_clients=limit_same,
            session_timeout=(
                settings.session_timeout if session_timeout is None else session_timeout
            ) or None,
        )
        digest = self._digest(raw)
        self._sessions[session_id] = session
        self._digests[session_id] = digest
        self._by_digest[digest] = session_id
        self._by_user.setdefault(username, set()).add(session_id)
        self._pending.add(session_id)
        self._set_expiry(session, now + settings.cookie_timeout + settings.cookie_slack)
        return NewSession(session=session, cookie=encode_cookie(raw))

    def lookup(self, cookie: str, now: float) -> Session | None:
        """The live session of a cookie, or None."""
        raw = decode_cookie(cookie)
        if raw is None:
            return None
        session_id = self._by_digest.get(self._digest(raw))
        session = self._sessions.get(session_id) if session_id is not None else None
        if session is None or not self._live(session, now):
            return None
        return session

    def attach(self, cookie: str, real_address: str | IpAddress, now: float) -> Attachment:
        """A CONNECT with `cookie` from `real_address`: apply the rules at the top of the module."""
        session = self.lookup(cookie, now)
        if session is None:
            raise CookieRejected("cookie is not acceptable")
        deadline = session.deadline
        if deadline is not None and now >= deadline:
            if not session.tunnel_active:
                self._set_expiry(session, now)  # purged by the next expire()
            raise SessionTimedOut("session-timeout reached; authenticate again")
        address = normalize_address(real_address)
        if session.deny_roaming and address != session.auth_address:
            raise RoamingDenied(
                f"cookie of {session.username!r} used from {address}, "
                f"authenticated from {session.auth_address} (deny-roaming)"
            )
        replaced = session.tunnel_id
        if replaced is None:
            limits = self.settings
            if limits.max_clients and self._active >= limits.max_clients:
                raise TooManyClients(f"max-clients ({limits.max_clients}) reached")
            same = session.max_same_clients
            if same and self._active_of(session.username) >= same:
                raise TooManySameClients(
                    f"user {session.username!r} already has {same} tunnel(s) (max-same-clients)"
                )
            self._active += 1
            self._pending.discard(session.session_id)
        tunnel_id = next(self._tunnel_ids)
        session.tunnel_id = tunnel_id
        session.tunnel_started = now
        if session.first_tunnel_started is None:
            session.first_tunnel_started = now
        session.expires = None
        session.real_address = address
        session.connects += 1
        return Attachment(session=session, tunnel_id=tunnel_id, replaced_tunnel_id=replaced)

    def detach(
        self, session_id: int, tunnel_id: int, reason: DisconnectReason, now: float
    ) -> Session | None:
        """A tunnel ended. Returns the session if it is now gone (release its IP lease), else None.

        A tunnel that was taken over, or whose session was removed, changes nothing.
        """
        session = self._sessions.get(session_id)
        if session is None or session.tunnel_id != tunnel_id:
            return None
        session.tunnel_id = None
        self._active -= 1
        settings = self.settings
        keep_after_logout = settings.persistent_cookies and reason in (
            DisconnectReason.USER_LOGOUT,
            DisconnectReason.SERVER_DISCONNECT,
        )
        if reason is DisconnectReason.CONNECTION_LOST or keep_after_logout:
            self._set_expiry(session, now + settings.cookie_timeout + settings.cookie_slack)
            return None
        return self._remove(session)

    def remove(self, session_id: int) -> Session | None:
        """Forget a session now (admin action); the caller cancels its `tunnel_id`, if any."""
        session = self._sessions.get(session_id)
        return self._remove(session) if session is not None else None

    def expire(self, now: float) -> list[Session]:
        """Remove sessions whose cookie expired; release their IP leases."""
        removed: list[Session] = []
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires, session_id = heapq.heappop(heap)
            session = self._sessions.get(session_id)
            if session is not None and session.expires == expires and not session.tunnel_active:
                removed.append(self._remove(session))
        return removed

    def next_expiry(self) -> float | None:
        """When `expire` next has work (for the caller's timer), or None."""
        heap = self._expiry_heap
        while heap:
            expires, session_id = heap[0]
            session = self._sessions.get(session_id)
            if session is not None and session.expires == expires and not session.tunnel_active:
                return expires
            heapq.heappop(heap)
        return None

    def _digest(self, raw: bytes) -> bytes:
        return hmac.new(self._key, raw, hashlib.sha256).digest()

    def _live(self, session: Session, now: float) -> bool:
        return session.expires is None or now < session.expires

    def _set_expiry(self, session: Session, expires: float) -> None:
        session.expires = expires
        heapq.heappush(self._expiry_heap, (expires, session.session_id))

    def _occupying(self, now: float, username: str | None = None) -> int:
        """Tunnels plus live never-connected logins (of one user, or of everyone)."""
        if username is None:
            pending = self._pending
            active = self._active
        else:
            ids = self._by_user.get(username, set())
            pending = ids & self._pending
            active = self._active_of(username)
        fresh = sum(1 for i in pending if self._live(self._sessions[i], now))
        return active + fresh

    def _active_of(self, username: str) -> int:
        return sum(
            1 for i in self._by_user.get(username, ()) if self._sessions[i].tunnel_active
        )

    def _remove(self, session: Session) -> Session:
        session_id = session.session_id
        del self._sessions[session_id]
        del self._by_digest[self._digests.pop(session_id)]
        user_ids = self._by_user[session.username]
        user_ids.discard(session_id)
        if not user_ids:
            del self._by_user[session.username]
        self._pending.discard(session_id)
        if session.tunnel_active:
            self._active -= 1
        return session
