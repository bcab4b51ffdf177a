"""Checks that need the running system, made before serving and by `serve -t`.

Loading a config only looks at its text (so Debian's shipped config, which names no certificate,
loads). Serving also needs: a TCP port, a certificate and key for every server that can be reached
(global and each vhost), readable certificate files, an address pool, and the run-as user and group
to exist. ocserv 1.1.6 refuses to start without each of these; we report them all at once.
"""

from __future__ import annotations

import grp
import os
import pwd

from trio_ocserv.config.errors import ConfigError, SourceLocation
from trio_ocserv.config.model import ServerConfig, Settings, ValueSources


def check_ready_to_serve(config: ServerConfig) -> list[ConfigError]:
    """Every reason the server could not start with this config (empty when it can)."""
    problems: list[ConfigError] = []
    file_location = SourceLocation(config.path)
    settings, sources = config.settings, config.sources
    if settings.tcp_port is None:
        problems.append(ConfigError(file_location, "tcp-port", "is required (e.g. tcp-port = 443)"))
    servers = [(settings, sources, file_location, "")]
    servers += [(v.settings, v.sources, v.location, f" for vhost {v.name}") for v in config.vhosts]
    for server_settings, server_sources, location, label in servers:
        problems += _check_server(server_settings, server_sources, location, label)
    if settings.run_as_user is not None:
        try:
            pwd.getpwnam(settings.run_as_user)
        except (KeyError, ValueError):
            where = sources.last("run-as-user") or file_location
            problems.append(
                ConfigError(where, "run-as-user", f"no such user {settings.run_as_user!r}")
            )
    if settings.run_as_group is not None:
        try:
            grp.getgrnam(settings.run_as_group)
        except (KeyError, ValueError):
            where = sources.last("run-as-group") or file_location
            problem = f"no such group {settings.run_as_group!r}"
            problems.append(ConfigError(where, "run-as-group", problem))
    return problems


def _check_server(
    settings: Settings, sources: ValueSources, location: SourceLocation, label: str
) -> list[ConfigError]:
    problems: list[ConfigError] = []
    if not settings.server_cert:
        problem = f"is required{label}, with a matching server-key"
        problems.append(ConfigError(location, "server-cert", problem))
    for key, files in (("server-cert", settings.server_cert), ("server-key", settings.server_key)):
        for file_name, where in zip(files, sources.all(key), strict=False):
            problems += _check_readable(file_name, where, key)
    if "certificate" in settings.auth_method_names:
        if settings.ca_cert is None:
            problem = f"certificate authentication needs ca-cert{label}"
            problems.append(ConfigError(location, "ca-cert", problem))
        else:
            problems += _check_readable(
                settings.ca_cert, sources.last("ca-cert") or location, "ca-cert"
            )
    if settings.ipv4_network is None and settings.ipv6_network is None:
        problem = f"no address pool{label}: set ipv4-network and/or ipv6-network"
        problems.append(ConfigError(location, "ipv4-network", problem))
    return problems


def _check_readable(file_name: str, where: SourceLocation, key: str) -> list[ConfigError]:
    # Keys may also be PKCS #11 / TPM URLs, which are not files.
    if ":" in file_name.split("/", 1)[0]:
        return []
    try:
        if os.access(file_name, os.R_OK):
            return []
        reason = "does not exist" if not os.path.exists(file_name) else "is not readable"
    except ValueError:  # not encodable as a file name
        reason = "is not a usable file name"
    return [ConfigError(where, key, f"{file_name} {reason}")]
