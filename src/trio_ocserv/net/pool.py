"""IP lease pools: the VPN addresses each client gets, and the address of the server's tun side.

Owns: the IPv4 pool (`ipv4-network`/`ipv4-netmask`), the IPv6 pool (`ipv6-network` split into
client prefixes of `ipv6-subnet-prefix` bits), the server's local point-to-point address (the
first host address of the pool, as ocserv does), `predictable-ips`, per-user explicit addresses,
and leases held under a lease id so a reconnecting cookie gets the same addresses back.

Must not: read clocks, touch interfaces or routes (see `net.link`), or know about sessions. One pool
object serves one network pair (the global one, or a group's own networks).

Allocation is O(1) amortised whatever the pool size and occupancy: a lazily advancing "never used"
frontier plus a FIFO of released slots, so memory grows with the addresses actually handed out,
never with the size of the network (a /8 or an IPv6 /48 split in /128s cost nothing up front).
ocserv picks with random probes and can fail when the pool is nearly full; we never do.
"""

from __future__ import annotations

import hashlib
from collections import deque
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_network,
)

import attrs

__all__ = [
    "AddressInUse",
    "IpLease",
    "IpLeasePool",
    "Ipv4Assignment",
    "Ipv6Assignment",
    "LeaseError",
    "PoolConfigError",
    "PoolExhausted",
    "PoolStatistics",
    "parse_ipv4_network",
    "parse_ipv6_network",
]


class LeaseError(Exception):
    """An address could not be leased."""


class PoolExhausted(LeaseError):
    """Every client address of a pool is leased."""


class AddressInUse(LeaseError):
    """An explicitly requested address is leased to someone else or is reserved."""


class PoolConfigError(ValueError):
    """A pool setting is not a usable network; the message names the bad value."""


def parse_ipv4_network(network: str, netmask: str | None = None) -> IPv4Network:
    """`ipv4-network` as `a.b.c.d` plus `ipv4-netmask`, or as `a.b.c.d/len` (host bits masked)."""
    text = network.strip()
    if netmask is not None and "/" not in text:
        text = f"{text}/{netmask.strip()}"
    if "/" not in text:
        raise PoolConfigError(f"ipv4-network: {network!r} has no prefix and no ipv4-netmask is set")
    try:
        parsed = ip_network(text, strict=False)
    except ValueError as exc:
        raise PoolConfigError(f"ipv4-network: {text!r} is not a network") from exc
    if not isinstance(parsed, IPv4Network):
        raise PoolConfigError(f"ipv4-network: {text!r} is not an IPv4 network")
    if parsed.prefixlen > 30:
        raise PoolConfigError(
            f"ipv4-network: {text!r} is too small (needs network, server and a client address)"
        )
    return parsed


def parse_ipv6_network(network: str, subnet_prefix: int | None = None) -> tuple[IPv6Network, int]:
    """`ipv6-network` and the client prefix length; host bits are masked.

    ocserv accepts `fd99:4efe:7e3b:3ea::/48` and uses `fd99:4efe:7e3b::/48`.

    `subnet_prefix` is `ipv6-subnet-prefix`; unset means 128 (one address per client).
    """
    try:
        parsed = ip_network(network.strip(), strict=False)
    except ValueError as exc:
        raise PoolConfigError(f"ipv6-network: {network!r} is not a network") from exc
    if not isinstance(parsed, IPv6Network):
        raise PoolConfigError(f"ipv6-network: {network!r} is not an IPv6 network")
    prefix = 128 if subnet_prefix is None else subnet_prefix
    if not parsed.prefixlen < prefix <= 128:
        raise PoolConfigError(
            f"ipv6-subnet-prefix: {prefix} must be longer than the /{parsed.prefixlen} of "
            f"ipv6-network and at most 128"
        )
    # Need room for the slot holding the server address plus one client slot.
    if _ipv6_first_client_slot(prefix) >= 1 << (prefix - parsed.prefixlen):
        raise PoolConfigError(
            f"ipv6-network: {network!r} split in /{prefix} leaves no prefix for clients"
        )
    return parsed, prefix


def _ipv6_first_client_slot(subnet_prefix: int) -> int:
    # Slot 0 holds the network address (subnet-router anycast); the server takes network+1.
    # With /128 slots that is slot 1, so clients start at 2; with shorter slots both sit in slot 0.
    return 2 if subnet_prefix == 128 else 1


@attrs.frozen
class Ipv4Assignment:
    """A client's IPv4 address, its pool (the netmask sent to the client) and the server side."""

    address: IPv4Address
    network: IPv4Network
    local: IPv4Address


@attrs.frozen
class Ipv6Assignment:
    """A client's IPv6 address inside its own prefix, the pool, and the server side."""

    address: IPv6Address
    prefix: IPv6Network
    network: IPv6Network
    local: IPv6Address


@attrs.frozen
class IpLease:
    """What one lease id holds; either family may be absent."""

    lease_id: str
    ipv4: Ipv4Assignment | None
    ipv6: Ipv6Assignment | None


@attrs.frozen
class PoolStatistics:
    ipv4_leased: int
    ipv4_capacity: int
    ipv6_leased: int
    ipv6_capacity: int


class _SlotAllocator:
    """Hands out integer slots 0..capacity-1 once each.

    `_fresh` is the lowest slot never handed out by the fresh path; slots past it may still be taken
    out of order (predictable or explicit picks), so the fresh path skips those, each at most once.
    Released slots queue FIFO, which spreads reuse over the whole pool like a rotating cursor.
    """

    __slots__ = ("_fresh", "_released", "_released_set", "capacity", "owners")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.owners: dict[int, str] = {}
        self._fresh = 0
        self._released: deque[int] = deque()
        self._released_set: set[int] = set()

    def take(self, slot: int, owner: str) -> bool:
        if slot in self.owners:
            return False
        self.owners[slot] = owner
        return True

    def take_any(self, owner: str) -> int | None:
        while self._fresh < self.capacity:
            slot = self._fresh
            self._fresh += 1
            if self.take(slot, owner):
                return slot
        while self._released:
            slot = self._released.popleft()
            self._released_set.discard(slot)
            if self.take(slot, owner):
                return slot
        return None

    def release(self, slot: int) -> None:
        self.owners.pop(slot, None)
        # Slots past the frontier come back through the fresh path; queue only the others, once.
        if slot < self._fresh and slot not in self._released_set:
            self._released.append(slot)
            self._released_set.add(slot)


def _username_slot(username: str, capacity: int, family: bytes) -> int:
    # A stable hash (not Python's salted hash()) so the address survives server restarts.
    digest = hashlib.sha256(family + b"\0" + username.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:16], "big") % capacity


class _Ipv4Range:
    def __init__(self, network: IPv4Network) -> None:
        self.network = network
        self.local = network.network_address + 1
        # Clients: network+2 .. broadcast-1.
        self._base = int(network.network_address) + 2
        self.slots = _SlotAllocator(network.num_addresses - 3)

    def address(self, slot: int) -> IPv4Address:
        return IPv4Address(self._base + slot)

    def slot_of(self, address: IPv4Address) -> int | None:
        slot = int(address) - self._base
        return slot if 0 <= slot < self.slots.capacity else None

    def assignment(self, address: IPv4Address) -> Ipv4Assignment:
        return Ipv4Assignment(address=address, network=self.network, local=self.local)


class _Ipv6Range:
    def __init__(self, network: IPv6Network, subnet_prefix: int) -> None:
        self.network = network
        self.subnet_prefix = subnet_prefix
        self.local = network.network_address + 1
        self._host_bits = 128 - subnet_prefix
        self._first = _ipv6_first_client_slot(subnet_prefix)
        self.slots = _SlotAllocator((1 << (subnet_prefix - network.prefixlen)) - self._first)

    def prefix(self, slot: int) -> IPv6Network:
        base = int(self.network.network_address) + ((slot + self._first) << self._host_bits)
        return IPv6Network((base, self.subnet_prefix))

    def slot_of(self, address: IPv6Address) -> int | None:
        if address not in self.network:
            return None
        slot = ((int(address) - int(self.network.network_address)) >> self._host_bits) - self._first
        return slot if 0 <= slot < self.slots.capacity else None

    def assignment(self, prefix: IPv6Network, address: IPv6Address | None = None) -> Ipv6Assignment:
        if address is None:
            # /128: the prefix is the address; otherwise the first host of the client's prefix.
            address = prefix.network_address + (0 if self.subnet_prefix >= 127 else 1)
        return Ipv6Assignment(
            address=address, prefix=prefix, network=self.network, local=self.local
        )


class IpLeasePool:
    """Leases per lease id; `allocate` again with the same id returns the same addresses."""

    def __init__(
        self,
        ipv4_network: IPv4Network | None = None,
        ipv6_network: IPv6Network | None = None,
        ipv6_subnet_prefix: int = 128,
        *,
        predictable_ips: bool = True,
    ) -> None:
        if ipv4_network is not None and ipv4_network.prefixlen > 30:
            raise PoolConfigError(f"ipv4-network: {ipv4_network} is too small")
        if ipv6_network is not None:
            parse_ipv6_network(str(ipv6_network), ipv6_subnet_prefix)
        self._v4 = _Ipv4Range(ipv4_network) if ipv4_network is not None else None
        self._v6 = (
            _Ipv6Range(ipv6_network, ipv6_subnet_prefix) if ipv6_network is not None else None
        )
        self.predictable_ips = predictable_ips
        self._leases: dict[str, IpLease] = {}
        # Explicit addresses outside the pool still may not be handed out twice.
        self._outside_v4: dict[IPv4Address, str] = {}
        self._outside_v6: dict[IPv6Network, str] = {}

    @classmethod
    def from_config(
        cls,
        ipv4_network: str | None,
        ipv4_netmask: str | None = None,
        ipv6_network: str | None = None,
        ipv6_subnet_prefix: int | None = None,
        *,
        predictable_ips: bool = True,
    ) -> IpLeasePool:
        """Build from the ocserv.conf strings; PoolConfigError names the bad setting."""
        v4 = parse_ipv4_network(ipv4_network, ipv4_netmask) if ipv4_network else None
        if ipv6_network is None:
            return cls(v4, None, predictable_ips=predictable_ips)
        v6, prefix = parse_ipv6_network(ipv6_network, ipv6_subnet_prefix)
        return cls(v4, v6, prefix, predictable_ips=predictable_ips)

    @property
    def ipv4_network(self) -> IPv4Network | None:
        return self._v4.network if self._v4 else None

    @property
    def ipv6_network(self) -> IPv6Network | None:
        return self._v6.network if self._v6 else None

    @property
    def ipv4_local(self) -> IPv4Address | None:
        """The server's side of every tun of this pool (first host address)."""
        return self._v4.local if self._v4 else None

    @property
    def ipv6_local(self) -> IPv6Address | None:
        return self._v6.local if self._v6 else None

    def lease(self, lease_id: str) -> IpLease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[IpLease]:
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            ipv4_leased=len(self._v4.slots.owners) + len(self._outside_v4) if self._v4 else 0,
            ipv4_capacity=self._v4.slots.capacity if self._v4 else 0,
            ipv6_leased=len(self._v6.slots.owners) + len(self._outside_v6) if self._v6 else 0,
            ipv6_capacity=self._v6.slots.capacity if self._v6 else 0,
        )

    def allocate(
        self,
        lease_id: str,
        username: str,
        *,
        ipv4: bool = True,
        ipv6: bool = True,
        explicit_ipv4: IPv4Address | None = None,
        explicit_ipv6: IPv6Address | None = None,
    ) -> IpLease:
        """Lease addresses of the configured families (minus those not wanted) to `lease_id`.

        A lease id that already holds a lease gets it back unchanged (a reconnecting cookie must
        see the same addresses: openconnect aborts otherwise). All or nothing: if one family
        fails, nothing stays leased. Raises PoolExhausted or AddressInUse.
        """
        existing = self._leases.get(lease_id)
        if existing is not None:
            return existing
        if explicit_ipv4 is not None and self._v4 is None:
            raise LeaseError("explicit-ipv4 needs an ipv4-network for the server's tun address")
        if explicit_ipv6 is not None and self._v6 is None:
            raise LeaseError("explicit-ipv6 needs an ipv6-network for the server's tun address")
        v4: Ipv4Assignment | None = None
        v6: Ipv6Assignment | None = None
        try:
            if self._v4 is not None and (ipv4 or explicit_ipv4 is not None):
                v4 = self._allocate_v4(self._v4, lease_id, username, explicit_ipv4)
            if self._v6 is not None and (ipv6 or explicit_ipv6 is not None):
                v6 = self._allocate_v6(self._v6, lease_id, username, explicit_ipv6)
        except LeaseError:
            if v4 is not None:
                self._release_v4(v4)
            raise
        lease = IpLease(lease_id=lease_id, ipv4=v4, ipv6=v6)
        self._leases[lease_id] = lease
        return lease

    def release(self, lease_id: str) -> IpLease | None:
        """Give the addresses back; returns what was released (None if the id held nothing)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        if lease.ipv4 is not None:
            self._release_v4(lease.ipv4)
        if lease.ipv6 is not None:
            self._release_v6(lease.ipv6)
        return lease

    def _allocate_v4(
        self, rng: _Ipv4Range, lease_id: str, username: str, explicit: IPv4Address | None
    ) -> Ipv4Assignment:
        if explicit is not None:
            if explicit in rng.network:
                slot = rng.slot_of(explicit)
                if slot is None:
                    raise AddressInUse(
                        f"explicit-ipv4: {explicit} is the network, broadcast or server address"
                    )
                if not rng.slots.take(slot, lease_id):
                    raise AddressInUse(f"explicit-ipv4: {explicit} is already leased")
            elif self._outside_v4.setdefault(explicit, lease_id) != lease_id:
                raise AddressInUse(f"explicit-ipv4: {explicit} is already leased")
            return rng.assignment(explicit)
        slot = self._pick(rng.slots, lease_id, username, b"ipv4")
        if slot is None:
            raise PoolExhausted(f"ipv4-network {rng.network}: all addresses are leased")
        return rng.assignment(rng.address(slot))

    def _allocate_v6(
        self, rng: _Ipv6Range, lease_id: str, username: str, explicit: IPv6Address | None
    ) -> Ipv6Assignment:
        if explicit is not None:
            prefix = IPv6Network((explicit, rng.subnet_prefix), strict=False)
            if explicit in rng.network:
                slot = rng.slot_of(explicit)
                if slot is None:
                    raise AddressInUse(f"explicit-ipv6: {explicit} overlaps the server address")
                if not rng.slots.take(slot, lease_id):
                    raise AddressInUse(f"explicit-ipv6: {prefix} is already leased")
            elif self._outside_v6.setdefault(prefix, lease_id) != lease_id:
                raise AddressInUse(f"explicit-ipv6: {prefix} is already leased")
            return rng.assignment(prefix, explicit)
        slot = self._pick(rng.slots, lease_id, username, b"ipv6")
        if slot is None:
            raise PoolExhausted(f"ipv6-network {rng.network}: all prefixes are leased")
        return rng.assignment(rng.prefix(slot))

    def _pick(
        self, slots: _SlotAllocator, lease_id: str, username: str, family: bytes
    ) -> int | None:
        if self.predictable_ips and slots.capacity > 0:
            preferred = _username_slot(username, slots.capacity, family)
            if slots.take(preferred, lease_id):
                return preferred
        return slots.take_any(lease_id)

    def _release_v4(self, assignment: Ipv4Assignment) -> None:
        assert self._v4 is not None
        slot = self._v4.slot_of(assignment.address)
        if slot is not None:
            self._v4.slots.release(slot)
        else:
            self._outside_v4.pop(assignment.address, None)

    def _release_v6(self, assignment: Ipv6Assignment) -> None:
        assert self._v6 is not None
        slot = self._v6.slot_of(assignment.address)
        if slot is not None:
            self._v6.slots.release(slot)
        else:
            self._outside_v6.pop(assignment.prefix, None)

