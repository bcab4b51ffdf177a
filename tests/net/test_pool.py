"""IpLeasePool: address arithmetic, predictable and explicit addresses, reuse, exhaustion.

Pure unit tests; the state machine checks the invariants over random allocate/release sequences.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from trio_ocserv.net.pool import (
    AddressInUse,
    IpLeasePool,
    LeaseError,
    PoolConfigError,
    PoolExhausted,
    parse_ipv4_network,
    parse_ipv6_network,
)

V4 = IPv4Network("192.168.99.0/24")
V6 = IPv6Network("fd99:4efe:7e3b::/48")


def test_parse_ipv4_network_with_netmask_and_cidr() -> None:
    assert parse_ipv4_network("192.168.1.0", "255.255.255.0") == IPv4Network("192.168.1.0/24")
    assert parse_ipv4_network("192.168.1.0/24") == IPv4Network("192.168.1.0/24")
    assert parse_ipv4_network("10.1.2.3/16") == IPv4Network("10.1.0.0/16")


@pytest.mark.parametrize(
    ("network", "netmask"),
    [("192.168.1.0", None), ("192.168.1.0/33", None), ("fd00::/64", None), ("10.0.0.0/31", None),
     ("not-an-ip", "255.0.0.0"), ("10.0.0.0", "255.0.255.0")],
)
def test_parse_ipv4_network_rejects_with_the_value_named(network: str, netmask: str | None) -> None:
    with pytest.raises(PoolConfigError, match="ipv4-network"):
        parse_ipv4_network(network, netmask)


def test_parse_ipv6_network_masks_host_bits_like_ocserv() -> None:
    # The reference setup writes fd99:4efe:7e3b:3ea::/48; ocserv gave out fd99:4efe:7e3b:8e4f::/64.
    assert parse_ipv6_network("fd99:4efe:7e3b:3ea::/48", 64) == (V6, 64)
    assert parse_ipv6_network("fd99::/64") == (IPv6Network("fd99::/64"), 128)


@pytest.mark.parametrize(("network", "prefix"), [("fd99::/64", 64), ("fd99::/64", 48),
                                                 ("fd99::/64", 129), ("10.0.0.0/8", 128),
                                                 ("fd99::/127", 128), ("zz::/8", 64)])
def test_parse_ipv6_network_rejects(network: str, prefix: int) -> None:
    with pytest.raises(PoolConfigError):
        parse_ipv6_network(network, prefix)


def test_from_config_strings() -> None:
    pool = IpLeasePool.from_config("192.168.99.0", "255.255.255.0", "fd99:4efe:7e3b:3ea::/48", 64,
                                   predictable_ips=False)
    assert (pool.ipv4_network, pool.ipv6_network) == (V4, V6)
    lease = pool.allocate("a", "alice")
    assert lease.ipv6 is not None and lease.ipv6.prefix.prefixlen == 64
    only_v6 = IpLeasePool.from_config(None, None, "fd00::/120")
    assert only_v6.ipv4_network is None
    lease6 = only_v6.allocate("a", "alice").ipv6
    assert lease6 is not None and lease6.prefix.prefixlen == 128
    with pytest.raises(PoolConfigError, match="ipv6-subnet-prefix"):
        IpLeasePool.from_config(None, None, "fd00::/64", 48)


def test_first_lease_uses_addresses_after_the_server_address() -> None:
    pool = IpLeasePool(V4, V6, 64, predictable_ips=False)
    lease = pool.allocate("a", "alice")
    assert pool.ipv4_local == IPv4Address("192.168.99.1")
    assert pool.ipv6_local == IPv6Address("fd99:4efe:7e3b::1")
    assert lease.ipv4 is not None and lease.ipv6 is not None
    assert lease.ipv4.address == IPv4Address("192.168.99.2")
    assert lease.ipv4.network == V4
    assert lease.ipv4.local == IPv4Address("192.168.99.1")
    # Prefix 0 holds the server address, so the first client prefix is the second /64.
    assert lease.ipv6.prefix == IPv6Network("fd99:4efe:7e3b:1::/64")
    assert lease.ipv6.address == IPv6Address("fd99:4efe:7e3b:1::1")
    assert lease.ipv6.local == IPv6Address("fd99:4efe:7e3b::1")


def test_ipv6_single_addresses_skip_network_and_server() -> None:
    pool = IpLeasePool(None, IPv6Network("fd00::/126"), 128, predictable_ips=False)
    first = pool.allocate("a", "u")
    second = pool.allocate("b", "u")
    assert first.ipv4 is None
    assert first.ipv6 is not None and second.ipv6 is not None
    assert [first.ipv6.address, second.ipv6.address] == [IPv6Address("fd00::2"),
                                                        IPv6Address("fd00::3")]
    assert first.ipv6.prefix == IPv6Network("fd00::2/128")
    with pytest.raises(PoolExhausted, match="fd00::/126"):
        pool.allocate("c", "u")


def test_same_lease_id_gets_the_same_lease_back() -> None:
    pool = IpLeasePool(V4, V6, 64)
    first = pool.allocate("cookie-1", "alice")
    again = pool.allocate("cookie-1", "alice")
    assert again == first
    assert len(pool) == 1


def test_release_returns_the_lease_and_frees_the_address() -> None:
    pool = IpLeasePool(IPv4Network("10.0.0.0/30"), predictable_ips=False)
    lease = pool.allocate("a", "alice")
    with pytest.raises(PoolExhausted, match=r"10\.0\.0\.0/30"):
        pool.allocate("b", "bob")
    assert pool.release("a") == lease
    assert pool.release("a") is None
    assert pool.allocate("b", "bob").ipv4 == lease.ipv4


def test_released_addresses_are_reused_last_first_in_first_out() -> None:
    pool = IpLeasePool(IPv4Network("10.0.0.0/29"), predictable_ips=False)  # 5 client addresses
    leases = [pool.allocate(str(i), "u") for i in range(5)]
    pool.release("3")
    pool.release("1")
    assert pool.allocate("x", "u").ipv4 == leases[3].ipv4
    assert pool.allocate("y", "u").ipv4 == leases[1].ipv4


def test_predictable_ips_give_a_user_the_same_address_when_free() -> None:
    first = IpLeasePool(V4, V6, 64).allocate("s1", "alice")
    other_pool = IpLeasePool(V4, V6, 64)
    other_pool.allocate("s0", "bob")
    second = other_pool.allocate("s2", "alice")
    assert first.ipv4 is not None and second.ipv4 is not None
    assert first.ipv6 is not None and second.ipv6 is not None
    assert first.ipv4.address == second.ipv4.address
    assert first.ipv6.prefix == second.ipv6.prefix


def test_predictable_user_falls_back_when_their_address_is_taken() -> None:
    pool = IpLeasePool(V4)
    mine = pool.allocate("s1", "alice")
    again = pool.allocate("s2", "alice")
    assert mine.ipv4 is not None and again.ipv4 is not None
    assert mine.ipv4.address != again.ipv4.address


def test_explicit_address_inside_the_pool_is_reserved() -> None:
    pool = IpLeasePool(IPv4Network("10.0.0.0/29"), predictable_ips=False)
    explicit = pool.allocate("e", "alice", explicit_ipv4=IPv4Address("10.0.0.2"))
    assert explicit.ipv4 is not None and explicit.ipv4.address == IPv4Address("10.0.0.2")
    others = {pool.allocate(str(i), "u").ipv4 for i in range(4)}
    assert explicit.ipv4 not in others
    with pytest.raises(PoolExhausted):
        pool.allocate("full", "u")
    with pytest.raises(AddressInUse, match="already leased"):
        pool.allocate("e2", "bob", explicit_ipv4=IPv4Address("10.0.0.2"))


@pytest.mark.parametrize("address", ["10.0.0.0", "10.0.0.1", "10.0.0.7"])
def test_explicit_address_may_not_be_network_server_or_broadcast(address: str) -> None:
    pool = IpLeasePool(IPv4Network("10.0.0.0/29"))
    with pytest.raises(AddressInUse, match="network, broadcast or server"):
        pool.allocate("e", "alice", explicit_ipv4=IPv4Address(address))


def test_explicit_addresses_outside_the_pool_are_not_handed_out_twice() -> None:
    pool = IpLeasePool(V4, V6, 64)
    lease = pool.allocate("e", "alice", explicit_ipv4=IPv4Address("172.16.0.9"),
                          explicit_ipv6=IPv6Address("fd01::5"))
    assert lease.ipv4 is not None and lease.ipv4.local == IPv4Address("192.168.99.1")
    assert lease.ipv6 is not None and lease.ipv6.prefix == IPv6Network("fd01::/64")
    assert lease.ipv6.address == IPv6Address("fd01::5")
    with pytest.raises(AddressInUse):
        pool.allocate("f", "bob", explicit_ipv4=IPv4Address("172.16.0.9"))
    with pytest.raises(AddressInUse):
        pool.allocate("g", "bob", explicit_ipv6=IPv6Address("fd01::7"))
    pool.release("e")
    assert pool.allocate("f", "bob", explicit_ipv4=IPv4Address("172.16.0.9")).ipv4 is not None


def test_explicit_ipv6_inside_the_pool_reserves_its_prefix() -> None:
    pool = IpLeasePool(None, V6, 64, predictable_ips=False)
    pool.allocate("e", "alice", explicit_ipv6=IPv6Address("fd99:4efe:7e3b:1::77"))
    other = pool.allocate("o", "bob")
    assert other.ipv6 is not None and other.ipv6.prefix == IPv6Network("fd99:4efe:7e3b:2::/64")
    with pytest.raises(AddressInUse, match="server"):
        pool.allocate("s", "carol", explicit_ipv6=IPv6Address("fd99:4efe:7e3b::9"))


def test_explicit_address_without_a_pool_of_that_family_is_an_error() -> None:
    pool = IpLeasePool(None, V6, 64)
    with pytest.raises(LeaseError, match="explicit-ipv4"):
        pool.allocate("e", "alice", explicit_ipv4=IPv4Address("10.0.0.5"))
    assert len(pool) == 0


def test_failure_in_one_family_leaves_nothing_leased() -> None:
    pool = IpLeasePool(V4, IPv6Network("fd00::/126"), 128, predictable_ips=False)
    pool.allocate("a", "u")
    pool.allocate("b", "u")
    before = pool.statistics()
    with pytest.raises(PoolExhausted, match="ipv6"):
        pool.allocate("c", "u")
    assert pool.statistics() == before
    assert pool.lease("c") is None


def test_families_not_wanted_are_not_leased() -> None:
    pool = IpLeasePool(V4, V6, 64)
    lease = pool.allocate("a", "alice", ipv6=False)
    assert lease.ipv4 is not None and lease.ipv6 is None
    assert pool.statistics().ipv6_leased == 0


def test_statistics_count_leases_and_capacity() -> None:
    pool = IpLeasePool(V4, V6, 64)
    for i in range(3):
        pool.allocate(str(i), f"user{i}")
    stats = pool.statistics()
    assert (stats.ipv4_leased, stats.ipv4_capacity) == (3, 253)
    assert (stats.ipv6_leased, stats.ipv6_capacity) == (3, 65535)


def test_a_slash_16_fills_completely_and_fast() -> None:
    pool = IpLeasePool(IPv4Network("10.7.0.0/16"), predictable_ips=True)
    started = time.perf_counter()
    addresses = {pool.allocate(str(i), f"user{i}").ipv4 for i in range(65533)}
    elapsed = time.perf_counter() - started
    assert len(addresses) == 65533
    with pytest.raises(PoolExhausted):
        pool.allocate("one-more", "x")
    # O(1) allocation: a linear scan per allocation would take minutes here.
    assert elapsed < 10


def test_a_slash_8_and_a_huge_ipv6_pool_cost_nothing_up_front() -> None:
    pool = IpLeasePool(IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/48"), 128)
    lease = pool.allocate("a", "alice")
    assert lease.ipv4 is not None and lease.ipv4.address in IPv4Network("10.0.0.0/8")
    assert pool.statistics().ipv6_capacity == 2**80 - 2


class LeaseMachine(RuleBasedStateMachine):
    """Random allocate/release: no address twice, none reserved, exhausted only when full."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.network = IPv4Network("10.9.8.0/28")  # 13 client addresses
        self.pool = IpLeasePool(self.network, IPv6Network("fd00::/124"), 126,
                                predictable_ips=True)
        self.counter = 0

    @rule(target=leases, user=st.sampled_from(["alice", "bob", "carol", "dave"]))
    def allocate(self, user: str) -> str:
        self.counter += 1
        lease_id = f"l{self.counter}"
        stats = self.pool.statistics()
        try:
            self.pool.allocate(lease_id, user)
        except PoolExhausted:
            assert (stats.ipv4_leased == stats.ipv4_capacity
                    or stats.ipv6_leased == stats.ipv6_capacity)
        return lease_id

    @rule(target=leases, host=st.integers(0, 15))
    def allocate_explicit(self, host: int) -> str:
        self.counter += 1
        lease_id = f"e{self.counter}"
        address = self.network.network_address + host
        taken = {lease.ipv4.address for lease in self.pool.leases() if lease.ipv4}
        try:
            self.pool.allocate(lease_id, "explicit", explicit_ipv4=address, ipv6=False)
        except AddressInUse:
            assert address in taken or host in (0, 1, 15)
        except PoolExhausted:
            raise AssertionError("an explicit address never exhausts the pool") from None
        return lease_id

    @rule(lease_id=consumes(leases))
    def release(self, lease_id: str) -> None:
        held = self.pool.lease(lease_id)
        assert self.pool.release(lease_id) == held

    @invariant()
    def addresses_are_unique_and_never_reserved(self) -> None:
        leases = self.pool.leases()
        v4 = [lease.ipv4.address for lease in leases if lease.ipv4]
        v6 = [lease.ipv6.prefix for lease in leases if lease.ipv6]
        assert len(v4) == len(set(v4))
        assert len(v6) == len(set(v6))
        reserved = {self.network.network_address, self.network.broadcast_address,
                    self.network.network_address + 1}
        assert not reserved & set(v4)
        assert all(address in self.network for address in v4)
        assert all(not prefix.overlaps(IPv6Network("fd00::/126")) for prefix in v6)
        stats = self.pool.statistics()
        assert stats.ipv4_leased == len(v4)
        assert stats.ipv6_leased == len(v6)


LeaseMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_lease_machine = LeaseMachine.TestCase
