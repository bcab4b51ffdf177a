"""Configuration reload (SIGHUP, `ctl reload`): from a new ocserv.conf to a swapped `ServerState`.

Two steps, so that a bad file changes nothing:
1. `plan_reload(current, path)` (blocking: run it in a thread) reads and checks the new file and
   builds everything that can fail (TLS contexts re-read the certificate, key, CA and CRL files).
   Options sample.config lists as fixed for the life of the process keep their running values
   (reported in `kept`), except the listen addresses and ports: `listen_changed` tells the server
   to restart its listeners. The address pools also stay: live leases come from them.
   Any problem raises `ReloadError` and the running configuration stays.
2. `apply_reload(state, plan)` (instant, cannot fail) swaps `state.config` whole and rebuilds what
   derives from it: login flows (banners, groups), session and ban limits, TLS contexts, the
   per-user file cache, the tun device prefix. Live tunnels are not touched: they keep what they
   negotiated, and new sessions see the new routes, DNS and per-user files.
"""

from __future__ import annotations

import attrs
from OpenSSL import SSL

from trio_ocserv.config import (
    ConfigError,
    ServerConfig,
    check_ready_to_serve,
    load_config,
    load_default_config,
    state_dir,
)
from trio_ocserv.config.default_config import BUILT_IN_CONFIG_NAME
from trio_ocserv.config.effective import UserSettingsResolver
from trio_ocserv.config.schema import KEY_SPECS, RELOADABLE_KEYS
from trio_ocserv.server import derived
from trio_ocserv.server.devices import KernelTunProvider
from trio_ocserv.server.state import ServerState
from trio_ocserv.server.tls_config import ServerTlsContexts

__all__ = ["LISTEN_FIELDS", "ReloadError", "ReloadPlan", "apply_reload", "plan_reload"]

# Changing these restarts the listeners (architecture §4); sessions are not affected.
LISTEN_FIELDS = frozenset({"listen_host", "udp_listen_host", "tcp_port", "udp_port"})
# Reloadable in ocserv, but live leases belong to the running pools.
_POOL_FIELDS = frozenset({"ipv4_network", "ipv6_network", "ipv6_subnet_prefix"})


class ReloadError(Exception):
    """The new configuration cannot be used; the running one stays."""


@attrs.frozen
class ReloadPlan:
    config: ServerConfig
    tls: ServerTlsContexts
    # Option fields whose change needs a restart; the running values were kept.
    kept: tuple[str, ...]
    listen_changed: bool


def _fixed_fields() -> frozenset[str]:
    fields = {
        spec.field
        for key, spec in KEY_SPECS.items()
        if key not in RELOADABLE_KEYS and spec.field is not None
    }
    return frozenset(fields - LISTEN_FIELDS) | _POOL_FIELDS


def merge_fixed(current: ServerConfig, new: ServerConfig) -> tuple[ServerConfig, tuple[str, ...]]:
    """`new` with the running values of the options a reload does not change; which differed."""
    old_settings, new_settings = current.settings, new.settings
    kept = tuple(
        sorted(
            field
            for field in _fixed_fields()
            if getattr(old_settings, field) != getattr(new_settings, field)
        )
    )
    settings = attrs.evolve(new_settings, **{f: getattr(old_settings, f) for f in kept})
    return attrs.evolve(new, settings=settings), kept


def listen_changed(current: ServerConfig, new: ServerConfig) -> bool:
    return any(
        getattr(current.settings, field) != getattr(new.settings, field) for field in LISTEN_FIELDS
    )


def plan_reload(current: ServerConfig, path: str) -> ReloadPlan:
    """Read, check and prepare the configuration at `path` (blocking); raises ReloadError."""
    try:
        if path == BUILT_IN_CONFIG_NAME:
            loaded = load_default_config(state_dir())
        else:
            loaded = load_config(path)
    except ConfigError as exc:
        raise ReloadError(str(exc)) from None
    merged, kept = merge_fixed(current, loaded)
    problems = check_ready_to_serve(merged)
    if problems:
        raise ReloadError("; ".join(str(p) for p in problems))
    try:
        tls = ServerTlsContexts.build(merged)
    except (OSError, ValueError, SSL.Error) as exc:
        raise ReloadError(f"TLS setup: {exc}") from None
    return ReloadPlan(merged, tls, kept, listen_changed(current, merged))


def apply_reload(state: ServerState, plan: ReloadPlan) -> None:
    """Swap the configuration and everything derived from it; see the module docstring."""
    config = plan.config
    settings = config.settings
    state.config = config
    state.tls = plan.tls
    state.tls_context = plan.tls.default
    cert_sha1 = derived.server_cert_sha1_hex(settings)
    # The flows keep their pending (half-done) logins; only their settings change.
    for login in state.logins:
        login.flow.settings = derived.flow_settings(settings, login.chain, cert_sha1)
    state.sessions.settings = derived.session_settings(settings)
    state.bans.update_settings(derived.ban_settings(settings))
    state.user_settings = UserSettingsResolver()
    if isinstance(state.tun_provider, KernelTunProvider):
        state.tun_provider.prefix = settings.device
