"""BanTable: points, windows, bans, exemptions, listings, bounded memory. Times are explicit."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from trio_ocserv.bans import BanSettings, BanTable, ban_key

CLIENT = "203.0.113.7"


def test_eight_wrong_passwords_ban_with_the_defaults() -> None:
    bans = BanTable()
    results = [bans.wrong_password(CLIENT, float(t)) for t in range(8)]
    assert results == [False] * 7 + [True]
    assert bans.is_banned(CLIENT, 8.0)
    assert not bans.is_banned("203.0.113.8", 8.0)


def test_ban_lasts_ban_time_then_the_score_starts_from_zero() -> None:
    bans = BanTable(BanSettings(max_ban_score=20, ban_time=300))
    bans.wrong_password(CLIENT, 0.0)
    assert bans.wrong_password(CLIENT, 10.0)
    assert bans.is_banned(CLIENT, 309.9)
    assert not bans.is_banned(CLIENT, 310.0)
    # One more failure after the ban is not an instant re-ban.
    assert not bans.wrong_password(CLIENT, 311.0)
    assert [e.score for e in bans.points(311.0)] == [10]


def test_points_reset_after_ban_reset_time() -> None:
    bans = BanTable(BanSettings(max_ban_score=20, ban_reset_time=1200))
    bans.wrong_password(CLIENT, 0.0)
    assert not bans.wrong_password(CLIENT, 1200.0)
    assert bans.points(1200.0)[0].score == 10
    assert bans.wrong_password(CLIENT, 1201.0)


def test_connection_and_kkdcp_points() -> None:
    bans = BanTable(BanSettings(max_ban_score=3, points_connection=1, points_kkdcp=2))
    assert not bans.connection(CLIENT, 0.0)
    assert bans.kkdcp(CLIENT, 1.0)
    assert bans.is_banned(CLIENT, 2.0)


def test_more_points_during_a_ban_do_not_extend_it() -> None:
    bans = BanTable(BanSettings(max_ban_score=10, ban_time=100))
    assert bans.wrong_password(CLIENT, 0.0)
    assert bans.connection(CLIENT, 50.0)
    assert not bans.is_banned(CLIENT, 100.0)


def test_max_ban_score_zero_disables_banning() -> None:
    bans = BanTable(BanSettings(max_ban_score=0))
    for t in range(100):
        assert not bans.wrong_password(CLIENT, float(t))
    assert not bans.is_banned(CLIENT, 100.0)
    assert len(bans) == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1",
                                     "192.168.5.44", "fd00:1::9"])
def test_loopback_and_local_subnets_are_never_banned(address: str) -> None:
    bans = BanTable(BanSettings(max_ban_score=1),
                    exempt_networks=[IPv4Network("192.168.5.0/24"), IPv6Network("fd00:1::/64")])
    assert bans.is_exempt(address)
    assert not bans.wrong_password(address, 0.0)
    assert not bans.is_banned(address, 0.0)
    assert bans.points(0.0) == []


def test_exempt_networks_can_change_on_reload() -> None:
    bans = BanTable(BanSettings(max_ban_score=1))
    assert bans.wrong_password("10.1.1.1", 0.0)
    bans.set_exempt_networks([IPv4Network("10.0.0.0/8")])
    assert not bans.is_banned("10.1.1.1", 1.0)


def test_ipv4_mapped_counts_as_ipv4_and_ipv6_scores_per_slash_64() -> None:
    bans = BanTable(BanSettings(max_ban_score=20))
    bans.wrong_password("::ffff:203.0.113.7", 0.0)
    assert bans.wrong_password(CLIENT, 1.0)
    bans.wrong_password("2001:db8:1:2::1", 0.0)
    assert bans.wrong_password("2001:db8:1:2:ffff::9", 1.0)
    assert bans.is_banned("2001:db8:1:2::77", 2.0)
    assert not bans.is_banned("2001:db8:1:3::1", 2.0)
    assert ban_key("2001:db8:1:2::1") == IPv6Network("2001:db8:1:2::/64")
    assert ban_key("::ffff:1.2.3.4") == IPv4Address("1.2.3.4")


def test_unban() -> None:
    bans = BanTable(BanSettings(max_ban_score=10))
    bans.wrong_password(CLIENT, 0.0)
    assert bans.unban(CLIENT)
    assert not bans.is_banned(CLIENT, 1.0)
    assert not bans.unban(CLIENT)


def test_listings_for_ctl() -> None:
    bans = BanTable(BanSettings(max_ban_score=20, ban_time=300))
    bans.wrong_password("198.51.100.1", 0.0)
    bans.wrong_password("198.51.100.1", 1.0)
    bans.connection("198.51.100.2", 2.0)
    banned = bans.bans(5.0)
    assert [(e.address, e.score, e.banned_until, e.last_seen) for e in banned] == [
        (IPv4Address("198.51.100.1"), 20, 301.0, 1.0)]
    points = {(str(e.address), e.score) for e in bans.points(5.0)}
    assert points == {("198.51.100.1", 20), ("198.51.100.2", 1)}
    assert bans.bans(301.0) == []


def test_expire_drops_idle_entries_only() -> None:
    bans = BanTable(BanSettings(max_ban_score=20, ban_reset_time=100, ban_time=1000))
    bans.connection("198.51.100.1", 0.0)
    bans.wrong_password("198.51.100.2", 0.0)
    bans.wrong_password("198.51.100.2", 0.0)
    bans.connection("198.51.100.3", 50.0)
    assert bans.expire(100.0) == 1  # .1: window over
    assert len(bans) == 2
    assert bans.expire(149.0) == 0
    assert bans.expire(150.0) == 1  # .3: window over; .2 stays banned
    assert [str(e.address) for e in bans.bans(150.0)] == ["198.51.100.2"]
    assert bans.expire(1000.0) == 1  # .2: ban over
    assert len(bans) == 0


def test_table_size_is_capped_dropping_the_least_recently_scored() -> None:
    bans = BanTable(BanSettings(max_ban_score=10, max_entries=3))
    bans.wrong_password("198.51.100.1", 0.0)
    for host in range(2, 5):
        bans.connection(f"198.51.100.{host}", 1.0)
    assert len(bans) == 3
    assert not bans.is_banned("198.51.100.1", 2.0)
    bans.connection("198.51.100.2", 3.0)  # now most recent
    bans.connection("198.51.100.5", 3.0)
    assert {str(e.address) for e in bans.points(3.0)} == {"198.51.100.2", "198.51.100.4",
                                                         "198.51.100.5"}


def test_reload_disabling_bans_forgets_scores() -> None:
    bans = BanTable(BanSettings(max_ban_score=10))
    bans.wrong_password(CLIENT, 0.0)
    bans.update_settings(BanSettings(max_ban_score=0))
    assert not bans.is_banned(CLIENT, 1.0)
    assert len(bans) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 40)),
                max_size=40))
def test_ban_state_matches_a_simple_model(events: list[tuple[int, int, int]]) -> None:
    """Events on a few hosts, time moving forward: banned exactly when the model says so."""
    cfg = BanSettings(max_ban_score=25, ban_reset_time=20, ban_time=15, max_entries=2)
    bans = BanTable(cfg)
    # host -> (score, window_start, banned_until or None); dict order = least recently scored.
    model: dict[int, tuple[int, float, float | None]] = {}
    now = 0.0
    for host, points, step in events:
        now += step / 4
        address = f"198.51.100.{host}"
        if points:
            score, start, until = model.pop(host, (0, now, None))
            if until is not None and now >= until:
                score, start, until = 0, now, None
            if until is None and now - start >= cfg.ban_reset_time:
                score, start = 0, now
            score += points
            if until is None and score >= cfg.max_ban_score:
                until = now + cfg.ban_time
            # Room for the newcomer: only the most recent max_entries - 1 others survive.
            model = {h: model[h] for h in list(model)[-(cfg.max_entries - 1):]}
            model[host] = (score, start, until)
        expected_until = model.get(host, (0, 0.0, None))[2]
        expected = expected_until is not None and now < expected_until
        result = bans.add_points(address, points, now)
        if points:
            assert result == expected
        assert bans.is_banned(address, now) == expected
