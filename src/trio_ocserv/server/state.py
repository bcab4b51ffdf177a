"""What all connections of one server share: config, tables, pools, providers, live tunnels.

Owned by the server (`app.build_state`); connections read it and update the tables through their
own methods. `config` is replaced whole on reload, never mutated.

Authentication: `auth` is the `AuthPolicy` (the `auth` chain, then the `enable-auth` chains) with
the client-certificate verifier; every chain has its own login state machine in `logins`, because
each chain asks for different steps. `login_for` picks the chain for what a connection presented.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
from OpenSSL import SSL

from trio_ocserv.auth.flow import AuthFlow
from trio_ocserv.auth.methods import AuthChain, CertificateIdentity
from trio_ocserv.auth.registry import AuthSetup
from trio_ocserv.bans import BanTable
from trio_ocserv.config.effective import UserSettingsResolver
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.config.values import Route
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server.devices import TunProvider
from trio_ocserv.server.tls_config import ServerTlsContexts
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd
from trio_ocserv.sessions import Session, SessionTable


@attrs.define(eq=False)
class TunnelHandle:
    """A live tunnel as the server sees it: stop it, wait until its cleanup finished, and what
    admins see of it (ctl, metrics)."""

    tunnel: CstpTunnel
    session: Session
    device: str
    closed: trio.Event = attrs.Factory(trio.Event)
    user_agent: str = ""
    hostname: str = ""
    mtu: int = 0
    local_address: str = ""
    iroutes: tuple[Route, ...] = ()


class TunnelObserver(Protocol):
    """Told when tunnels start and end (ctl's event feed, metrics)."""

    def tunnel_up(self, tunnel_id: int, handle: TunnelHandle) -> None: ...

    def tunnel_down(self, tunnel_id: int, handle: TunnelHandle, end: TunnelEnd) -> None: ...


@attrs.define
class LoginCounts:
    """Credential checks since start, for metrics: logins that succeeded, answers that failed."""

    succeeded: int = 0
    failed: int = 0


@attrs.frozen(eq=False)
class ChainLogin:
    """One alternative of the auth policy and the pending logins that use it."""

    chain: AuthChain
    flow: AuthFlow


@attrs.define(eq=False)
class ServerState:
    """What all connections share. `config` is swapped whole on reload, never mutated."""

    config: ServerConfig
    tls_context: SSL.Context
    sessions: SessionTable
    bans: BanTable
    pool: IpLeasePool
    auth: AuthSetup
    # One per chain of `auth.policy.alternatives`, in the same order.
    logins: tuple[ChainLogin, ...]
    tun_provider: TunProvider
    # Bounds concurrent credential checks (hashing, PAM) running in worker threads.
    auth_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(8))
    tunnels: dict[int, TunnelHandle] = attrs.Factory(dict)
    # Monotonic time for the tables and flows; wall time for certificates and OTP codes.
    clock: Callable[[], float] = trio.current_time
    wall_clock: Callable[[], float] = time.time

    observers: list[TunnelObserver] = attrs.Factory(list)
    # All TLS contexts (default and per vhost), rebuilt when a CRL file changes.
    tls: ServerTlsContexts | None = None
    # The UDP (DTLS) endpoint, when udp-port is set; see server/udp.py.
    udp: object | None = None
    # The C thread for established CSTP tunnels, when built; see server/cstp_fastpath.py.
    cstp_plane: object | None = None
    # Per-user / per-group files, merged with the global settings on each CONNECT.
    user_settings: UserSettingsResolver = attrs.Factory(UserSettingsResolver)
    # Connect/disconnect scripts and route commands run at most this many at a time.
    script_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(16))
    login_counts: LoginCounts = attrs.Factory(LoginCounts)

    @property
    def settings(self) -> Settings:
        return self.config.settings

    def login_for(self, certificate: CertificateIdentity | None) -> ChainLogin:
        """The chain (and its flow) a login with this verified certificate (or none) uses."""
        chain = self.auth.policy.select(certificate)
        return next(login for login in self.logins if login.chain is chain)

    def expire_logins(self, now: float) -> None:
        for login in self.logins:
            login.flow.expire(now)
