"""Per-user/per-group effective settings: merge rules, default files, exposed iroutes, the cache."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network, ip_address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_ocserv.config import ConfigError, PerUserConfig, Settings, parse_config_text
from trio_ocserv.config.effective import (
    PerUserFileCache,
    UserSettingsResolver,
    is_safe_file_name,
    merge_user_settings,
)
from trio_ocserv.config.loader import parse_per_user_config, parse_per_user_text

GLOBAL_TEXT = """\
auth = "plain[passwd=/etc/ocserv/ocpasswd]"
udp-port = 443
ipv4-network = 192.168.1.0/24
route = 10.0.0.0/8
route = 172.16.0.0/12
no-route = 10.1.0.0/16
dns = 192.168.1.1
split-dns = example.com
default-domain = example.com
dpd = 90
mobile-dpd = 1800
keepalive = 32400
idle-timeout = 1200
max-same-clients = 2
"""


def global_settings(extra: str = "", path: str = "ocserv.conf") -> Settings:
    return parse_config_text(GLOBAL_TEXT + extra, path).settings


def per_user(text: str, path: str = "file") -> PerUserConfig:
    return parse_per_user_text(text, path)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, str]:
    users = tmp_path / "users"
    groups = tmp_path / "groups"
    users.mkdir()
    groups.mkdir()
    extra = f"config-per-user = {users}\nconfig-per-group = {groups}\n"
    return users, groups, extra


def test_without_files_the_global_settings_apply() -> None:
    result = merge_user_settings(global_settings(), "alice", None)
    assert result.routes == (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"))
    assert result.no_routes == (IPv4Network("10.1.0.0/16"),)
    assert result.dns == (ip_address("192.168.1.1"),)
    assert result.split_dns == ("example.com",)
    assert result.default_domain == "example.com"
    assert (result.dpd, result.mobile_dpd, result.keepalive) == (90, 1800, 32400)
    assert result.idle_timeout == 1200
    assert result.mobile_idle_timeout == 1200  # unset: same as idle-timeout
    assert result.session_timeout is None
    assert result.ipv4_network == IPv4Network("192.168.1.0/24")
    assert result.no_udp is False
    assert result.max_same_clients == 2
    assert result.config_files == ()


def test_no_udp_port_means_no_udp_for_everyone() -> None:
    settings = parse_config_text('auth = "plain[passwd=/x]"\n', "c").settings
    assert merge_user_settings(settings, "alice", None).no_udp is True
    says_yes = per_user("no-udp = false\n")
    assert merge_user_settings(settings, "alice", None, None, says_yes).no_udp is True


def test_a_user_file_replaces_lists_and_overrides_scalars() -> None:
    user = per_user(
        "route = 192.168.50.0/24\ndns = 10.9.9.9\ndpd = 30\nidle-timeout = 0\n"
        "hostname = alice-laptop\nno-udp = true\nexplicit-ipv4 = 192.168.1.77\n"
    )
    result = merge_user_settings(global_settings(), "alice", None, None, user)
    assert result.routes == (IPv4Network("192.168.50.0/24"),)
    assert result.no_routes == (IPv4Network("10.1.0.0/16"),)  # not set in the file: global
    assert result.dns == (ip_address("10.9.9.9"),)
    assert result.dpd == 30
    assert result.mobile_dpd == 1800  # the global mobile-dpd still applies
    assert result.idle_timeout is None  # 0 disables
    assert result.mobile_idle_timeout is None
    assert result.hostname == "alice-laptop"
    assert result.no_udp is True
    assert result.explicit_ipv4 == IPv4Address("192.168.1.77")
    assert result.config_files == ("file",)


def test_group_and_user_files_join_routes_and_dns_and_the_user_wins_scalars() -> None:
    group = per_user(
        "route = 10.20.0.0/16\ndns = 10.20.0.1\nkeepalive = 100\nmtu = 1300\n", "groups/eng"
    )
    user = per_user("route = 10.30.0.0/16\ndns = 10.30.0.1\nkeepalive = 200\n", "users/alice")
    result = merge_user_settings(global_settings(), "alice", "eng", group, user)
    assert result.routes == (IPv4Network("10.20.0.0/16"), IPv4Network("10.30.0.0/16"))
    assert result.dns == (ip_address("10.20.0.1"), ip_address("10.30.0.1"))
    assert result.keepalive == 200
    assert result.mtu == 1300  # only the group sets it
    assert result.config_files == ("groups/eng", "users/alice")


def test_a_group_may_have_its_own_pools() -> None:
    group = per_user(
        "ipv4-network = 10.50.0.0\nipv4-netmask = 255.255.255.0\n"
        "ipv6-network = fd00:50::/48\nipv6-subnet-prefix = 64\n"
    )
    result = merge_user_settings(global_settings(), "bob", "lab", group, None)
    assert result.ipv4_network == IPv4Network("10.50.0.0/24")
    assert result.ipv6_network == IPv6Network("fd00:50::/48")
    assert result.ipv6_subnet_prefix == 64


def test_a_per_user_network_that_contradicts_the_subnet_prefix_is_refused_at_its_line() -> None:
    settings = global_settings("ipv6-network = fd00::/48\nipv6-subnet-prefix = 64\n")
    user = per_user("# pool\nipv6-network = fd00:1::/64\n", "users/carol")
    with pytest.raises(ConfigError) as caught:
        merge_user_settings(settings, "carol", None, None, user)
    assert str(caught.value) == (
        "users/carol:2: ipv6-subnet-prefix: /64 must be longer than the network's /64"
    )


def test_append_routes_adds_global_routes_and_no_routes_once() -> None:
    settings = global_settings("append-routes = true\n")
    user = per_user("route = 10.0.0.0/8\nroute = 192.168.60.0/24\nno-route = 10.2.0.0/16\n")
    result = merge_user_settings(settings, "dave", None, None, user)
    assert result.routes == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("192.168.60.0/24"),
        IPv4Network("172.16.0.0/12"),
    )
    assert result.no_routes == (IPv4Network("10.2.0.0/16"), IPv4Network("10.1.0.0/16"))
    without_file = merge_user_settings(settings, "erin", None)
    assert without_file.routes == settings.route  # not listed twice


def test_expose_iroutes_gives_other_users_iroutes_as_routes() -> None:
    settings = global_settings("expose-iroutes = true\n")
    own = per_user("iroute = 192.168.100.0/24\n")
    exposed = (IPv4Network("192.168.100.0/24"), IPv4Network("192.168.200.0/24"))
    result = merge_user_settings(settings, "frank", None, None, own, exposed)
    assert result.iroutes == (IPv4Network("192.168.100.0/24"),)
    assert result.routes == (*settings.route, IPv4Network("192.168.200.0/24"))
    off = merge_user_settings(global_settings(), "frank", None, None, own, exposed)
    assert off.routes == settings.route


def test_default_route_detection() -> None:
    user = per_user("route = default\n")
    assert merge_user_settings(global_settings(), "g", None, None, user).has_default_route
    assert not merge_user_settings(global_settings(), "g", None).has_default_route
    bare = parse_config_text('auth = "plain[passwd=/x]"\n', "c").settings
    assert merge_user_settings(bare, "g", None).has_default_route


def test_resolver_reads_the_user_and_group_files(dirs: tuple[Path, Path, str]) -> None:
    users, groups, extra = dirs
    (groups / "eng").write_text("route = 10.20.0.0/16\n")
    (users / "alice").write_text("route = 10.30.0.0/16\nexplicit-ipv6 = fd00::5/64\n")
    result = UserSettingsResolver().resolve(global_settings(extra), "alice", "eng")
    assert result.routes == (IPv4Network("10.20.0.0/16"), IPv4Network("10.30.0.0/16"))
    assert result.explicit_ipv6 == IPv6Interface("fd00::5/64")
    assert result.config_files == (str(groups / "eng"), str(users / "alice"))


def test_missing_files_are_normal_and_defaults_fill_in(
    dirs: tuple[Path, Path, str], tmp_path: Path
) -> None:
    users, _groups, extra = dirs
    resolver = UserSettingsResolver()
    plain = resolver.resolve(global_settings(extra), "nobody", "nogroup")
    assert plain.routes == global_settings().route
    assert plain.config_files == ()

    default_user = tmp_path / "user.conf"
    default_group = tmp_path / "group.conf"
    default_user.write_text("dns = 10.0.0.53\n")
    default_group.write_text("dns = 10.0.0.54\n")
    settings = global_settings(
        f"{extra}default-user-config = {default_user}\ndefault-group-config = {default_group}\n"
    )
    result = resolver.resolve(settings, "nobody", "nogroup")
    assert result.dns == (ip_address("10.0.0.54"), ip_address("10.0.0.53"))
    assert result.config_files == (str(default_group), str(default_user))
    # no group chosen: the default group file does not apply
    assert resolver.resolve(settings, "nobody", None).config_files == (str(default_user),)
    # a user with a file of its own does not get the default user file
    (users / "alice").write_text("dns = 10.7.7.7\n")
    own = resolver.resolve(settings, "alice", None)
    assert own.dns == (ip_address("10.7.7.7"),)


def test_a_broken_user_file_refuses_the_user_with_file_and_line(
    dirs: tuple[Path, Path, str],
) -> None:
    users, _groups, extra = dirs
    (users / "mallory").write_text("dns = 10.0.0.1\nroute = not-a-route\n")
    with pytest.raises(ConfigError) as caught:
        UserSettingsResolver().resolve(global_settings(extra), "mallory", None)
    assert str(caught.value).startswith(f"{users / 'mallory'}:2: route: ")


def test_unsafe_names_never_leave_the_directory(
    dirs: tuple[Path, Path, str], tmp_path: Path
) -> None:
    _users, _groups, extra = dirs
    (tmp_path / "outside").write_text("dns = 6.6.6.6\n")
    for name in ("../outside", ".", "..", "", "a\0b"):
        assert not is_safe_file_name(name)
    assert is_safe_file_name("alice@example.com")
    assert not is_safe_file_name("\ud800-lone-surrogate")
    result = UserSettingsResolver().resolve(global_settings(extra), "../outside", None)
    assert result.dns == global_settings().dns


def test_the_cache_parses_once_and_again_after_a_change(tmp_path: Path) -> None:
    calls: list[str] = []

    def counting_parse(path: str) -> PerUserConfig:
        calls.append(path)
        return parse_per_user_config(path)

    cache = PerUserFileCache(counting_parse)
    path = tmp_path / "alice"
    path.write_text("dpd = 10\n")
    first = cache.load(str(path))
    assert first is not None and first.dpd == 10
    assert cache.load(str(path)) is first
    assert len(calls) == 1
    path.write_text("dpd = 20\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    second = cache.load(str(path))
    assert second is not None and second.dpd == 20
    assert len(calls) == 2
    path.unlink()
    assert cache.load(str(path)) is None


def test_the_cache_reports_each_parsed_version_once(tmp_path: Path) -> None:
    seen: list[str] = []
    cache = PerUserFileCache(on_parsed=lambda config: seen.extend(map(str, config.warnings)))
    path = tmp_path / "carol"
    path.write_text("dpd = 10\nbanner = hello\n")
    for _ in range(3):
        cache.load(str(path))
    assert seen == [f"{path}:2: warning: banner: not allowed in per-user/per-group files; ignored"]


def test_the_cache_remembers_a_broken_file_until_it_changes(tmp_path: Path) -> None:
    calls: list[str] = []

    def counting_parse(path: str) -> PerUserConfig:
        calls.append(path)
        return parse_per_user_config(path)

    cache = PerUserFileCache(counting_parse)
    path = tmp_path / "bob"
    path.write_text("dpd = soon\n")
    for _ in range(3):
        with pytest.raises(ConfigError, match=r"bob:1: dpd: "):
            cache.load(str(path))
    assert len(calls) == 1
    path.write_text("dpd = 5\n")
    os.utime(path, ns=(2, 2))
    fixed = cache.load(str(path))
    assert fixed is not None and fixed.dpd == 5


def test_a_directory_in_place_of_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "weird").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        PerUserFileCache().load(str(tmp_path / "weird"))


def test_known_iroutes_scans_the_user_directory(dirs: tuple[Path, Path, str]) -> None:
    users, _groups, extra = dirs
    (users / "site-a").write_text("iroute = 192.168.100.0/24\n")
    (users / "site-b").write_text("iroute = 192.168.200.0/24\niroute = fd00:200::/64\n")
    (users / "broken").write_text("iroute = nonsense\n")
    (users / ".site-a.swp").write_text("iroute = 10.99.0.0/16\n")
    cache = PerUserFileCache()
    assert cache.known_iroutes(str(users)) == (
        ("site-a", IPv4Network("192.168.100.0/24")),
        ("site-b", IPv4Network("192.168.200.0/24")),
        ("site-b", IPv6Network("fd00:200::/64")),
    )
    assert cache.known_iroutes(str(users / "missing")) == ()
    settings = global_settings(extra + "expose-iroutes = true\n")
    site_a = UserSettingsResolver(cache).resolve(settings, "site-a", None)
    assert site_a.iroutes == (IPv4Network("192.168.100.0/24"),)
    assert site_a.routes == (
        *settings.route,
        IPv4Network("192.168.200.0/24"),
        IPv6Network("fd00:200::/64"),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(max_size=300))
def test_any_user_or_group_name_resolves_or_fails_with_config_error(
    dirs: tuple[Path, Path, str], name: str
) -> None:
    users, _groups, extra = dirs
    (users / "alice").write_text("dns = 10.7.7.7\n")
    try:
        result = UserSettingsResolver().resolve(global_settings(extra), name, name)
    except ConfigError:
        return  # e.g. a name longer than the file system allows
    assert result.username == name
    if name != "alice":
        assert result.dns == global_settings().dns
