"""Turn ocserv.conf text (or a file) into a `ServerConfig`, and per-user files into `PerUserConfig`.

Steps: `lexer` splits lines; each entry is looked up in `schema.KEY_SPECS` and its value parsed;
values are collected per section (global, each `[vhost:NAME]`); a vhost starts from the code
defaults, not from the global values (ocserv 1.1.6 does the same: a vhost without its own `auth`,
`server-cert` or `ipv4-network` is refused), and only the process-wide options (ports, user, files:
`schema.PROCESS` scope) are copied from the global section; cattrs structures the collected
values into the frozen model; then the checks that need several keys at once run (auth
combinations, certificate pairs, address pools).

Only checks that depend on the text are made here, so any readable file with valid syntax loads:
whether certificate files exist, users exist or the server has what it needs to start is decided by
`readiness.check_ready_to_serve`.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
import cattrs

from trio_ocserv.config.auth_methods import PASSWORD_METHODS, AuthMethod
from trio_ocserv.config.errors import ConfigError, ConfigWarning, SourceLocation, ValueProblem
from trio_ocserv.config.lexer import ConfigEntry, VhostHeader, lex_config
from trio_ocserv.config.model import (
    PerUserConfig,
    ServerConfig,
    Settings,
    ValueSources,
    VirtualHost,
)
from trio_ocserv.config.schema import KEY_SPECS, PROCESS, Scope, Support
from trio_ocserv.config.values import GroupChoice, IpAddress, KkdcpEndpoint, NetPriority, Route

_Model = TypeVar("_Model")

# Values reach cattrs already parsed; these types pass through as they are.
_PARSED_TYPES: frozenset[object] = frozenset(
    {
        IPv4Address,
        IPv6Address,
        IPv4Network,
        IPv6Network,
        IPv6Interface,
        AuthMethod,
        GroupChoice,
        NetPriority,
        KkdcpEndpoint,
        ValueSources,
        ConfigWarning,
        Route,
        IpAddress,
    }
)
_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook_func(lambda t: t in _PARSED_TYPES, lambda value, _type: value)

_SCOPE_NAMES = {
    Scope.GLOBAL: "the global section",
    Scope.VHOST: "[vhost:...] sections",
    Scope.PER_USER: "per-user/per-group files",
}


@attrs.define
class _Section:
    """Values collected from one section, before structuring (mutable while the file is read)."""

    scope: Scope
    location: SourceLocation
    name: str | None = None
    values: dict[str, Any] = attrs.Factory(dict)
    sources: dict[str, list[SourceLocation]] = attrs.Factory(dict)


def load_config(path: str) -> ServerConfig:
    """Read and parse an ocserv.conf file; raises `ConfigError` (only that) if it is bad."""
    return parse_config_text(read_config_text(path), path)


def parse_per_user_config(path: str) -> PerUserConfig:
    """Read a per-user or per-group config file (only the keys sample.config allows there)."""
    return parse_per_user_text(read_config_text(path), path)


def read_config_text(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(SourceLocation(path), None, f"cannot read the file: {reason}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(SourceLocation(path, line), None, "not valid UTF-8 text") from None


def parse_config_text(text: str, path: str) -> ServerConfig:
    warnings: list[ConfigWarning] = []
    main = _Section(Scope.GLOBAL, SourceLocation(path))
    vhost_sections: list[_Section] = []
    section = main
    for item in lex_config(text, path):
        if isinstance(item, VhostHeader):
            if any(s.name and s.name.lower() == item.name.lower() for s in vhost_sections):
                raise ConfigError(
                    item.location, None, f"virtual host {item.name!r} is defined twice"
                )
            section = _Section(Scope.VHOST, item.location, item.name)
            vhost_sections.append(section)
        else:
            _collect(section, item, warnings)
    for each in (main, *vhost_sections):
        _combine_ipv4_network(each)

    settings = _structure(Settings, main.values)
    sources = _freeze_sources(main.sources)
    _check_settings(settings, sources, main.location)
    vhosts = []
    for vhost_section in vhost_sections:
        vhost_name = vhost_section.name or ""
        vhost_settings = _structure(
            Settings, {**_process_wide(main.values), **vhost_section.values}
        )
        vhost_sources = _freeze_sources({**_process_wide(main.sources), **vhost_section.sources})
        _check_settings(vhost_settings, vhost_sources, vhost_section.location)
        vhosts.append(
            VirtualHost(vhost_name, vhost_section.location, vhost_settings, vhost_sources)
        )
    return ServerConfig(path, settings, sources, tuple(vhosts), tuple(warnings))


def parse_per_user_text(text: str, path: str) -> PerUserConfig:
    warnings: list[ConfigWarning] = []
    section = _Section(Scope.PER_USER, SourceLocation(path))
    for item in lex_config(text, path):
        if isinstance(item, VhostHeader):
            raise ConfigError(item.location, None, "[vhost:...] sections are not allowed here")
        _collect(section, item, warnings)
    _combine_ipv4_network(section)
    values = {**section.values, "path": path, "warnings": tuple(warnings)}
    values["sources"] = _freeze_sources(section.sources)
    config = _structure(PerUserConfig, values)
    if config.ipv6_network and config.ipv6_subnet_prefix is not None:
        _check_ipv6_prefix(config.ipv6_network, config.ipv6_subnet_prefix, config.sources)
    return config


def _collect(section: _Section, entry: ConfigEntry, warnings: list[ConfigWarning]) -> None:
    spec = KEY_SPECS.get(entry.key)
    if spec is None:
        warnings.append(ConfigWarning(entry.location, entry.key, "unknown option; ignored"))
        return
    if section.scope not in spec.scope:
        if section.scope is Scope.PER_USER:
            problem = "not allowed in per-user/per-group files; ignored"
        else:
            allowed = " and ".join(
                text for scope, text in _SCOPE_NAMES.items() if scope in spec.scope
            )
            problem = f"only allowed in {allowed}; ignored here"
        warnings.append(ConfigWarning(entry.location, entry.key, problem))
        return
    try:
        value = spec.parse(entry.value)
    except ValueProblem as problem:
        raise ConfigError(entry.location, entry.key, str(problem)) from None
    if spec.support is Support.PLANNED and entry.key not in section.sources:
        warnings.append(ConfigWarning(entry.location, entry.key, "not implemented yet; ignored"))
    section.sources.setdefault(entry.key, []).append(entry.location)
    if spec.field is None:
        return
    if spec.repeated:
        section.values.setdefault(spec.field, []).append(value)
    else:
        section.values[spec.field] = value


_PROCESS_WIDE_FIELDS = frozenset(s.field for s in KEY_SPECS.values() if s.scope == PROCESS)
_PROCESS_WIDE_KEYS = frozenset(s.key for s in KEY_SPECS.values() if s.scope == PROCESS)
_Collected = TypeVar("_Collected")


def _process_wide(collected: dict[str, _Collected]) -> dict[str, _Collected]:
    """The entries (by field or by key) of options that exist once per process, not per vhost."""
    wanted = _PROCESS_WIDE_FIELDS | _PROCESS_WIDE_KEYS
    return {name: value for name, value in collected.items() if name in wanted}


def _combine_ipv4_network(section: _Section) -> None:
    """The pool is `ipv4-network = A/B`, or `ipv4-network = A` with `ipv4-netmask = M`."""
    prefix: int | None = section.values.pop("ipv4_netmask", None)
    network: IPv4Network | None = section.values.get("ipv4_network")
    if prefix is not None:
        mask_location = section.sources["ipv4-netmask"][-1]
        if network is None:
            raise ConfigError(mask_location, "ipv4-netmask", "given without ipv4-network")
        if network.prefixlen not in (32, prefix):
            problem = f"/{prefix} contradicts ipv4-network = {network}"
            raise ConfigError(mask_location, "ipv4-netmask", problem)
        section.values["ipv4_network"] = IPv4Network(
            (network.network_address, prefix), strict=False
        )
    elif network is not None and network.prefixlen == 32:
        location = section.sources["ipv4-network"][-1]
        problem = f"{network.network_address} needs a prefix (/24) or an ipv4-netmask line"
        raise ConfigError(location, "ipv4-network", problem)


def _check_settings(settings: Settings, sources: ValueSources, section: SourceLocation) -> None:
    """Rules that involve several keys; each error cites the line that breaks the rule."""
    if not settings.auth:
        raise ConfigError(
            section, "auth", 'is required, e.g. auth = "plain[passwd=/etc/ocserv/ocpasswd]"'
        )
    password_methods = [
        (i, m.name) for i, m in enumerate(settings.auth) if m.name in PASSWORD_METHODS
    ]
    if len(password_methods) > 1:
        (_, first), (index, second) = password_methods[:2]
        problem = f"{first} and {second} both check passwords; use only one in auth"
        raise ConfigError(sources.all("auth")[index], "auth", problem)
    if "certificate" in settings.auth_method_names and settings.cert_user_oid is None:
        key = "auth" if any(m.name == "certificate" for m in settings.auth) else "enable-auth"
        methods = settings.auth if key == "auth" else settings.enable_auth
        index = [m.name for m in methods].index("certificate")
        problem = "certificate authentication needs cert-user-oid (e.g. 2.5.4.3 for the CN)"
        raise ConfigError(sources.all(key)[index], key, problem)
    certs, keys = sources.all("server-cert"), sources.all("server-key")
    if len(certs) != len(keys):
        longer, key = (certs, "server-cert") if len(certs) > len(keys) else (keys, "server-key")
        partner = "server-key" if key == "server-cert" else "server-cert"
        raise ConfigError(
            longer[min(len(certs), len(keys))], key, f"has no matching {partner} line"
        )
    if settings.ipv4_network is not None and settings.ipv4_network.prefixlen > 30:
        location = sources.last("ipv4-network") or section
        problem = f"{settings.ipv4_network} is too small for an address pool (at most /30)"
        raise ConfigError(location, "ipv4-network", problem)
    if settings.ipv6_network is not None:
        _check_ipv6_prefix(settings.ipv6_network, settings.ipv6_subnet_prefix, sources)


def _check_ipv6_prefix(network: IPv6Network, subnet_prefix: int, sources: ValueSources) -> None:
    if subnet_prefix <= network.prefixlen:
        location = sources.last("ipv6-subnet-prefix") or sources.last("ipv6-network")
        assert location is not None
        problem = f"/{subnet_prefix} must be longer than the network's /{network.prefixlen}"
        raise ConfigError(location, "ipv6-subnet-prefix", problem)


def _freeze_sources(sources: dict[str, list[SourceLocation]]) -> ValueSources:
    return ValueSources(MappingProxyType({key: tuple(found) for key, found in sources.items()}))


def _structure(model: Callable[..., _Model], values: dict[str, Any]) -> _Model:
    structured: _Model = _converter.structure(values, model)  # type: ignore[arg-type]
    return structured
