"""What all connections of one server share: config, tables, pools, providers, live tunnels.

Owned by the server (`app.build_state`); connections read it and update the tables through their
own methods. `config` is replaced whole on reload, never mutated.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio
from OpenSSL import SSL

from trio_ocserv.auth.flow import AuthFlow, CheckCredentials, CredentialResult
from trio_ocserv.bans import BanTable
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server.devices import TunProvider
from trio_ocserv.server.tunnel import CstpTunnel
from trio_ocserv.sessions import Session, SessionTable

# A checker runs in a worker thread: it may block (hashing, PAM, RADIUS).
CredentialChecker = Callable[[CheckCredentials], CredentialResult]


@attrs.define(eq=False)
class TunnelHandle:
    """A live tunnel as the server sees it: stop it, and wait until its cleanup finished."""

    tunnel: CstpTunnel
    session: Session
    device: str
    closed: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class ServerState:
    """What all connections share. `config` is swapped whole on reload, never mutated."""

    config: ServerConfig
    tls_context: SSL.Context
    sessions: SessionTable
    bans: BanTable
    pool: IpLeasePool
    flow: AuthFlow
    check_credentials: CredentialChecker
    tun_provider: TunProvider
    auth_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(8))
    tunnels: dict[int, TunnelHandle] = attrs.Factory(dict)
    clock: Callable[[], float] = trio.current_time

    # The UDP (DTLS) endpoint, when udp-port is set; see server/udp.py.
    udp: object | None = None

    @property
    def settings(self) -> Settings:
        return self.config.settings
