"""Ban scores: client addresses that misbehave collect points and are refused for a while.

Owns: the point system of ocserv (`max-ban-score`, `ban-reset-time`, `ban-points-wrong-password`,
`ban-points-connection`, `ban-points-kkdcp`, and the ban length `min-reauth-time`, called
`ban-time` in newer ocserv), unbanning, and the listings behind `ctl show ip bans` and
`ctl show ip ban points`.

Rules:
- Points of an address add up within a window of `ban-reset-time` from its first point; after
  that the score starts again from zero.
- Reaching `max-ban-score` bans the address for the ban time; when the ban ends its score is zero.
- `max-ban-score = 0` disables banning (nothing is recorded).
- Loopback and the server's own local subnets are never banned (ocserv-behaviour.md).
- IPv4-mapped IPv6 counts as IPv4. IPv6 is scored per /64 (our choice: one host holds a whole
  /64, so per-address scores would let it rotate around a ban).
- Memory is bounded: `expire` drops idle entries (call it periodically), and past `max_entries`
  the least recently scored entry is dropped.

Must not: read clocks (every call takes `now`) or do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import attrs

__all__ = ["BanEntry", "BanSettings", "BanTable", "ban_key"]

BanKey = IPv4Address | IPv6Network

_IPV6_BAN_PREFIX = 64


@attrs.frozen
class BanSettings:
    """Defaults are ocserv's code defaults."""

    max_ban_score: int = 80
    ban_reset_time: float = 1200.0
    # min-reauth-time / ban-time
    ban_time: float = 300.0
    points_wrong_password: int = 10
    points_connection: int = 1
    points_kkdcp: int = 1
    max_entries: int = 65536


@attrs.frozen
class BanEntry:
    """One scored address (an IPv4 address or an IPv6 /64) as shown by ctl."""

    address: BanKey
    score: int
    # Set while banned.
    banned_until: float | None
    last_seen: float


@attrs.define
class _Score:
    score: int
    window_start: float
    last_seen: float
    banned_until: float | None = None


def ban_key(address: str | IPv4Address | IPv6Address) -> BanKey:
    """What a score is kept under: an IPv4 address, or the /64 of an IPv6 one."""
    parsed = ip_address(address) if isinstance(address, str) else address
    if isinstance(parsed, IPv6Address):
        if parsed.ipv4_mapped is not None:
            return parsed.ipv4_mapped
        return IPv6Network((parsed, _IPV6_BAN_PREFIX), strict=False)
    return parsed


class BanTable:
    """Scores and bans per client address."""

    def __init__(
        self,
        settings: BanSettings | None = None,
        exempt_networks: Iterable[IPv4Network | IPv6Network] = (),
    ) -> None:
        self.settings = settings or BanSettings()
        self._exempt: tuple[IPv4Network | IPv6Network, ...] = tuple(exempt_networks)
        # Insertion order = least recently scored first, for eviction.
        self._scores: dict[BanKey, _Score] = {}

    def update_settings(self, settings: BanSettings) -> None:
        """On reload: new limits apply from the next event; scores are kept."""
        self.settings = settings
        if not settings.max_ban_score:
            self._scores.clear()

    def set_exempt_networks(self, networks: Iterable[IPv4Network | IPv6Network]) -> None:
        """The server's local subnets (see `net.link.local_networks`); loopback is always exempt."""
        self._exempt = tuple(networks)

    def is_exempt(self, address: str | IPv4Address | IPv6Address) -> bool:
        parsed = ip_address(address) if isinstance(address, str) else address
        if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        if parsed.is_loopback or parsed.is_unspecified:
            return True
        return any(
            parsed in network for network in self._exempt if network.version == parsed.version
        )

    def __len__(self) -> int:
        return len(self._scores)

    def add_points(self, address: str | IPv4Address | IPv6Address, points: int, now: float) -> bool:
        """Score `points` against `address`; True if it is banned afterwards."""
        settings = self.settings
        if not settings.max_ban_score or points <= 0 or self.is_exempt(address):
            return False
        key = ban_key(address)
        entry = self._scores.pop(key, None)
        if entry is None:
            self._make_room()
            entry = _Score(score=0, window_start=now, last_seen=now)
        self._scores[key] = entry  # re-inserted: now the most recently scored
        self._end_finished_ban(entry, now)
        if entry.banned_until is None and now - entry.window_start >= settings.ban_reset_time:
            entry.score = 0
            entry.window_start = now
        entry.score += points
        entry.last_seen = now
        if entry.banned_until is None and entry.score >= settings.max_ban_score:
            entry.banned_until = now + settings.ban_time
        return entry.banned_until is not None

    def wrong_password(self, address: str | IPv4Address | IPv6Address, now: float) -> bool:
        return self.add_points(address, self.settings.points_wrong_password, now)

    def connection(self, address: str | IPv4Address | IPv6Address, now: float) -> bool:
        return self.add_points(address, self.settings.points_connection, now)

    def kkdcp(self, address: str | IPv4Address | IPv6Address, now: float) -> bool:
        return self.add_points(address, self.settings.points_kkdcp, now)

    def is_banned(self, address: str | IPv4Address | IPv6Address, now: float) -> bool:
        if not self.settings.max_ban_score or self.is_exempt(address):
            return False
        entry = self._scores.get(ban_key(address))
        return entry is not None and entry.banned_until is not None and now < entry.banned_until

    def unban(self, address: str | IPv4Address | IPv6Address) -> bool:
        """Forget an address's score and ban (`ctl unban ip`); False if it had none."""
        return self._scores.pop(ban_key(address), None) is not None

    def bans(self, now: float) -> list[BanEntry]:
        """Addresses banned at `now` (`ctl show ip bans`)."""
        return [e for e in self._entries(now) if e.banned_until is not None]

    def points(self, now: float) -> list[BanEntry]:
        """Every address with a score at `now` (`ctl show ip ban points`)."""
        return [e for e in self._entries(now) if e.score > 0]

    def expire(self, now: float) -> int:
        """Drop entries whose ban ended and whose window passed; returns how many."""
        stale = [key for key, entry in self._scores.items() if self._stale(entry, now)]
        for key in stale:
            del self._scores[key]
        return len(stale)

    def _entries(self, now: float) -> list[BanEntry]:
        entries = []
        for key, entry in self._scores.items():
            if self._stale(entry, now):
                continue
            banned = entry.banned_until is not None and now < entry.banned_until
            entries.append(BanEntry(
                address=key,
                score=entry.score,
                banned_until=entry.banned_until if banned else None,
                last_seen=entry.last_seen,
            ))
        return entries

    def _ban_over(self, entry: _Score, now: float) -> bool:
        return entry.banned_until is not None and now >= entry.banned_until

    def _end_finished_ban(self, entry: _Score, now: float) -> None:
        if self._ban_over(entry, now):
            entry.banned_until = None
            entry.score = 0
            entry.window_start = now

    def _stale(self, entry: _Score, now: float) -> bool:
        if entry.banned_until is not None:
            return now >= entry.banned_until
        return now - entry.window_start >= self.settings.ban_reset_time

    def _make_room(self) -> None:
        # O(1): drop the least recently scored; a full scan here would let a flood of new
        # addresses cost O(n) each. Stale entries go in the caller's periodic expire().
        while len(self._scores) >= self.settings.max_entries:
            del self._scores[next(iter(self._scores))]
