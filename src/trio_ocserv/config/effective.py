"""The settings that apply to one logged-in user: global (or vhost) settings, group and user file.

ocserv 1.1.6 builds a user's settings like this, and so do we:

1. With `config-per-group` set and a group chosen, the file `<config-per-group>/<group>` is read;
   when it does not exist, `default-group-config` (if set) is read instead.
2. With `config-per-user` set, `<config-per-user>/<user>` is read, or `default-user-config`.
3. Scalar options: the user file wins over the group file, which wins over the global value.
   List options (route, no-route, iroute, dns, nbns, split-dns): the two files' lines are joined
   (group first); when the files give none, the global list applies. A per-user `route` therefore
   *replaces* the global routes.
4. `append-routes = true` (a global key missing from sample.config) adds the global routes and
   no-routes after the per-user ones.
5. `expose-iroutes = true`: every `iroute` found in the files of the `config-per-user` directory
   becomes a route for every user, except a user's own iroutes.

A missing per-user file is normal (no overrides). A file that exists but cannot be read or parsed
raises `ConfigError` (`FILE:LINE: key: problem`): the caller logs it and refuses the user.

`UserSettingsResolver` reads the files through `PerUserFileCache`, which parses each file once and
again only when its mtime, size or inode change. Everything else here is pure; file reading is
small and bounded, but the server should call `resolve` from a worker thread
(`trio.to_thread.run_sync`) so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network
from typing import TypeVar

import attrs

from trio_ocserv.config.errors import ConfigError, SourceLocation
from trio_ocserv.config.loader import parse_per_user_config
from trio_ocserv.config.model import PerUserConfig, Settings
from trio_ocserv.config.values import IpAddress, NetPriority, Route

_Item = TypeVar("_Item")
_Scalar = TypeVar("_Scalar")


@attrs.frozen
class UserSettings:
    """What the tunnel of one user needs, with every per-user/per-group override applied.

    Timeouts are whole seconds; None means "disabled" (a configured 0 is turned into None).
    `mobile_dpd` and `mobile_idle_timeout` are already resolved to the plain values when unset.
    """

    username: str
    groupname: str | None
    routes: tuple[Route, ...] = ()
    no_routes: tuple[Route, ...] = ()
    iroutes: tuple[Route, ...] = ()
    dns: tuple[IpAddress, ...] = ()
    nbns: tuple[IpAddress, ...] = ()
    split_dns: tuple[str, ...] = ()
    default_domain: str | None = None
    tunnel_all_dns: bool = False
    ipv4_network: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_prefix: int = 128
    explicit_ipv4: IPv4Address | None = None
    explicit_ipv6: IPv6Interface | None = None
    dpd: int = 60
    mobile_dpd: int = 60
    keepalive: int = 3600
    idle_timeout: int | None = None
    mobile_idle_timeout: int | None = None
    session_timeout: int | None = None
    stats_report_time: int | None = None
    mtu: int | None = None
    deny_roaming: bool = False
    no_udp: bool = False
    max_same_clients: int = 0
    restrict_user_to_routes: bool = False
    restrict_user_to_ports: str | None = None
    rx_data_per_sec: int = 0
    tx_data_per_sec: int = 0
    hostname: str | None = None
    net_priority: NetPriority | None = None
    cgroup: str | None = None
    config_files: tuple[str, ...] = ()
    """The per-group/per-user files that were applied, in the order they were applied."""

    @property
    def has_default_route(self) -> bool:
        """True when all traffic goes through the VPN (`route = default` or no routes at all)."""
        return not self.routes or "default" in self.routes


def merge_user_settings(
    settings: Settings,
    username: str,
    groupname: str | None,
    group_file: PerUserConfig | None = None,
    user_file: PerUserConfig | None = None,
    exposed_iroutes: Sequence[Route] = (),
) -> UserSettings:
    """Combine the global settings with a group file and a user file (either may be None).

    `exposed_iroutes` are the iroutes of all per-user files (see `PerUserFileCache.known_iroutes`);
    they are only used when `settings.expose_iroutes` is on.
    """
    files = tuple(f for f in (group_file, user_file) if f is not None)

    def joined(get: Callable[[PerUserConfig], tuple[_Item, ...]]) -> tuple[_Item, ...]:
        return tuple(item for f in files for item in get(f))

    def last(get: Callable[[PerUserConfig], _Scalar | None], default: _Scalar) -> _Scalar:
        for f in reversed(files):
            value = get(f)
            if value is not None:
                return value
        return default

    own_routes = joined(lambda f: f.route)
    own_no_routes = joined(lambda f: f.no_route)
    iroutes = joined(lambda f: f.iroute)
    routes = own_routes or settings.route
    no_routes = own_no_routes or settings.no_route
    if settings.append_routes:
        # ocserv appends even when the user has no routes of its own, listing them twice; we don't.
        routes = _unique((*routes, *settings.route))
        no_routes = _unique((*no_routes, *settings.no_route))
    if settings.expose_iroutes:
        routes = _unique((*routes, *(r for r in exposed_iroutes if r not in iroutes)))

    ipv6_network = last(lambda f: f.ipv6_network, settings.ipv6_network)
    ipv6_subnet_prefix = last(lambda f: f.ipv6_subnet_prefix, settings.ipv6_subnet_prefix)
    if ipv6_network is not None and ipv6_subnet_prefix <= ipv6_network.prefixlen:
        raise ConfigError(
            _where_set(files, "ipv6-subnet-prefix", "ipv6-network"),
            "ipv6-subnet-prefix",
            f"/{ipv6_subnet_prefix} must be longer than the network's /{ipv6_network.prefixlen}",
        )

    dpd = last(lambda f: f.dpd, settings.dpd)
    idle_timeout = _enabled(last(lambda f: f.idle_timeout, settings.idle_timeout))
    mobile_idle = last(lambda f: f.mobile_idle_timeout, settings.mobile_idle_timeout)
    return UserSettings(
        username=username,
        groupname=groupname,
        routes=routes,
        no_routes=no_routes,
        iroutes=iroutes,
        dns=joined(lambda f: f.dns) or settings.dns,
        nbns=joined(lambda f: f.nbns) or settings.nbns,
        split_dns=joined(lambda f: f.split_dns) or settings.split_dns,
        default_domain=settings.default_domain,
        tunnel_all_dns=last(lambda f: f.tunnel_all_dns, settings.tunnel_all_dns),
        ipv4_network=last(lambda f: f.ipv4_network, settings.ipv4_network),
        ipv6_network=ipv6_network,
        ipv6_subnet_prefix=ipv6_subnet_prefix,
        explicit_ipv4=last(lambda f: f.explicit_ipv4, None),
        explicit_ipv6=last(lambda f: f.explicit_ipv6, None),
        dpd=dpd,
        mobile_dpd=last(lambda f: f.mobile_dpd, settings.mobile_dpd) or dpd,
        keepalive=last(lambda f: f.keepalive, settings.keepalive),
        idle_timeout=idle_timeout,
        mobile_idle_timeout=idle_timeout if mobile_idle is None else _enabled(mobile_idle),
        session_timeout=_enabled(last(lambda f: f.session_timeout, settings.session_timeout)),
        stats_report_time=_enabled(last(lambda f: f.stats_report_time, settings.stats_report_time)),
        mtu=last(lambda f: f.mtu, settings.mtu) or None,
        deny_roaming=last(lambda f: f.deny_roaming, settings.deny_roaming),
        # without a UDP port nobody gets DTLS, whatever a file says
        no_udp=settings.udp_port is None or last(lambda f: f.no_udp, False),
        max_same_clients=last(lambda f: f.max_same_clients, settings.max_same_clients),
        restrict_user_to_routes=last(
            lambda f: f.restrict_user_to_routes, settings.restrict_user_to_routes
        ),
        restrict_user_to_ports=last(
            lambda f: f.restrict_user_to_ports, settings.restrict_user_to_ports
        ),
        rx_data_per_sec=last(lambda f: f.rx_data_per_sec, settings.rx_data_per_sec),
        tx_data_per_sec=last(lambda f: f.tx_data_per_sec, settings.tx_data_per_sec),
        hostname=last(lambda f: f.hostname, None),
        net_priority=last(lambda f: f.net_priority, settings.net_priority),
        cgroup=last(lambda f: f.cgroup, settings.cgroup),
        config_files=tuple(f.path for f in files),
    )


def _enabled(seconds: int | None) -> int | None:
    return seconds or None


def _unique(items: Iterable[_Item]) -> tuple[_Item, ...]:
    return tuple(dict.fromkeys(items))


def _where_set(files: Sequence[PerUserConfig], *keys: str) -> SourceLocation:
    """The last per-user line that set one of `keys` (the global file was checked at load)."""
    for f in reversed(files):
        for key in keys:
            location = f.sources.last(key)
            if location is not None:
                return location
    return SourceLocation(files[-1].path) if files else SourceLocation("<global>")


def is_safe_file_name(name: str) -> bool:
    """A user or group name usable as a file name inside the per-user directory.

    Names come from authentication (a certificate CN may hold anything); one with a path separator
    or a NUL, or `.`/`..`, would reach outside the directory (or make the OS call fail), so it is
    treated as "no file of its own".
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return False
    try:
        os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate: not a name any file can have
        return False
    return True


@attrs.frozen
class _FileStamp:
    """What identifies one version of a file on disk."""

    mtime_ns: int
    size: int
    inode: int
    device: int

    @classmethod
    def of(cls, status: os.stat_result) -> _FileStamp:
        return cls(status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)


@attrs.frozen
class _CachedFile:
    stamp: _FileStamp
    config: PerUserConfig | None
    error: ConfigError | None


class PerUserFileCache:
    """Parses per-user/per-group files once and again only when they change on disk.

    A broken file is remembered too, so a refused user does not make us re-parse it on every
    attempt. Thread-safe: the server may resolve users from several worker threads.
    """

    def __init__(
        self,
        parse: Callable[[str], PerUserConfig] = parse_per_user_config,
        on_parsed: Callable[[PerUserConfig], None] | None = None,
    ) -> None:
        """`on_parsed` sees each file once per version, e.g. to log its `warnings` once."""
        self._parse = parse
        self._on_parsed = on_parsed
        self._files: dict[str, _CachedFile] = {}
        self._lock = threading.Lock()

    def load(self, path: str) -> PerUserConfig | None:
        """The parsed file, or None when it does not exist; raises `ConfigError` when broken."""
        try:
            status = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._files.pop(path, None)
            return None
        except OSError as error:
            reason = error.strerror or str(error)
            problem = f"cannot read the file: {reason}"
            raise ConfigError(SourceLocation(path), None, problem) from None
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(SourceLocation(path), None, "is not a regular file")
        stamp = _FileStamp.of(status)
        with self._lock:
            cached = self._files.get(path)
        if cached is None or cached.stamp != stamp:
            try:
                parsed = self._parse(path)
            except ConfigError as error:
                cached = _CachedFile(stamp, None, error)
            else:
                cached = _CachedFile(stamp, parsed, None)
                if self._on_parsed is not None:
                    self._on_parsed(parsed)
            with self._lock:
                self._files[path] = cached
        if cached.error is not None:
            raise cached.error
        return cached.config

    def known_iroutes(self, directory: str) -> tuple[tuple[str, Route], ...]:
        """(file name, iroute) for every iroute of every regular file in a per-user directory.

        Broken files are skipped here (their user is refused when connecting, with the error).
        """
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return ()
        found: list[tuple[str, Route]] = []
        for name in names:
            if name.startswith("."):
                continue  # editor swap files and the like
            try:
                config = self.load(os.path.join(directory, name))
            except ConfigError:
                continue
            if config is not None:
                found.extend((name, route) for route in config.iroute)
        return tuple(found)


class UserSettingsResolver:
    """Finds a user's per-group and per-user files and merges them with the global settings."""

    def __init__(self, cache: PerUserFileCache | None = None) -> None:
        self.cache = cache if cache is not None else PerUserFileCache()

    def resolve(self, settings: Settings, username: str, groupname: str | None) -> UserSettings:
        """The effective settings for a user; raises `ConfigError` if one of its files is broken."""
        group_file = None
        if settings.config_per_group and groupname:
            group_file = self._load_with_default(
                settings.config_per_group, groupname, settings.default_group_config
            )
        user_file = None
        if settings.config_per_user:
            user_file = self._load_with_default(
                settings.config_per_user, username, settings.default_user_config
            )
        exposed: tuple[Route, ...] = ()
        if settings.expose_iroutes and settings.config_per_user:
            exposed = tuple(
                route for _, route in self.cache.known_iroutes(settings.config_per_user)
            )
        return merge_user_settings(settings, username, groupname, group_file, user_file, exposed)

    def _load_with_default(
        self, directory: str, name: str, default_path: str | None
    ) -> PerUserConfig | None:
        own = self.cache.load(os.path.join(directory, name)) if is_safe_file_name(name) else None
        if own is None and default_path:
            return self.cache.load(default_path)
        return own
