"""The server process: builds the shared state from the config and runs the nursery tree.

```
run_server()
└── Server nursery
    ├── signals: SIGTERM/SIGINT -> stop (tunnels get DISCONNECT, tuns removed), SIGHUP -> reload
    ├── housekeeping: expire cookies and ban scores
    ├── listener scope: TCP accept loop -> serve_connection() in the sessions nursery
    └── sessions nursery: one ClientConnection (and its tunnel) per client
```
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from trio_ocserv.auth.flow import AuthFlow, AuthFlowSettings, SelectableGroup
from trio_ocserv.auth.passwd_file import PasswdFileCache
from trio_ocserv.bans import BanSettings, BanTable
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server.control import plain_password_checker, serve_connection
from trio_ocserv.server.devices import KernelTunProvider, TunProvider
from trio_ocserv.server.state import CredentialChecker, ServerState
from trio_ocserv.server.tls import TlsServerSettings, make_server_context
from trio_ocserv.server.tunnel import TunnelEnd
from trio_ocserv.sessions import SessionSettings, SessionTable

log = logging.getLogger("trio_ocserv")

_HOUSEKEEPING_INTERVAL = 5.0
_STOP_GRACE = 5.0


def flow_settings(settings: Settings) -> AuthFlowSettings:
    cert_sha1 = ""
    if settings.server_cert:
        with open(settings.server_cert[0], "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        # The webvpnc hint carries the server certificate's SHA-1 (§3.7); not a security check.
        cert_sha1 = cert.fingerprint(hashes.SHA1()).hex()
    return AuthFlowSettings(
        select_groups=tuple(SelectableGroup(g.name, g.label) for g in settings.select_group),
        default_select_group=settings.default_select_group,
        pre_login_banner=settings.pre_login_banner,
        banner=settings.banner,
        cookie_timeout=settings.cookie_timeout,
        server_cert_sha1_hex=cert_sha1,
    )


def session_settings(settings: Settings) -> SessionSettings:
    return SessionSettings(
        cookie_timeout=float(settings.cookie_timeout),
        session_timeout=float(settings.session_timeout) if settings.session_timeout else None,
        persistent_cookies=settings.persistent_cookies,
        max_clients=settings.max_clients,
        max_same_clients=settings.max_same_clients,
        deny_roaming=settings.deny_roaming,
    )


def ban_settings(settings: Settings) -> BanSettings:
    return BanSettings(
        max_ban_score=settings.max_ban_score,
        ban_reset_time=float(settings.ban_reset_time),
        ban_time=float(settings.min_reauth_time),
        points_wrong_password=settings.ban_points_wrong_password,
        points_connection=settings.ban_points_connection,
        points_kkdcp=settings.ban_points_kkdcp,
    )


def credential_checker(settings: Settings) -> CredentialChecker:
    """Interim: the `plain` method only (the full method registry replaces this)."""
    plain = next((m for m in settings.auth if m.name == "plain"), None)
    if plain is None:
        raise ValueError('only auth = "plain[passwd=...]" is supported so far')
    cache = PasswdFileCache(str(plain.option("passwd")))
    lock = threading.Lock()

    def verify(user: str, password: str) -> tuple[str, ...] | None:
        with lock:
            cache.reload_if_changed()
            current = cache.current
        match = current.verify(user, password)
        return None if match is None else match.groups

    return plain_password_checker(verify)


def build_state(config: ServerConfig, tun_provider: TunProvider | None = None) -> ServerState:
    settings = config.settings
    tls_context = make_server_context(
        TlsServerSettings(cert_chain_file=settings.server_cert[0], key_file=settings.server_key[0])
    )
    pool = IpLeasePool(
        settings.ipv4_network,
        settings.ipv6_network,
        settings.ipv6_subnet_prefix,
        predictable_ips=settings.predictable_ips,
    )
    return ServerState(
        config=config,
        tls_context=tls_context,
        sessions=SessionTable(session_settings(settings)),
        bans=BanTable(ban_settings(settings)),
        pool=pool,
        flow=AuthFlow(flow_settings(settings)),
        check_credentials=credential_checker(settings),
        tun_provider=tun_provider or KernelTunProvider(settings.device),
    )


@attrs.define(eq=False)
class Server:
    """A running server; `stop()` ends it gracefully (tunnels are told, tuns removed)."""

    state: ServerState
    nursery: trio.Nursery | None = None
    listen_ports: list[int] = attrs.Factory(list)
    _stopping: bool = False

    async def stop(self) -> None:
        if self._stopping or self.nursery is None:
            return
        self._stopping = True
        for handle in list(self.state.tunnels.values()):
            handle.tunnel.stop(TunnelEnd.SERVER_DISCONNECT)
        with trio.move_on_after(_STOP_GRACE):
            for handle in list(self.state.tunnels.values()):
                await handle.closed.wait()
        self.nursery.cancel_scope.cancel()

    async def serve(
        self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self.state.settings
        hosts: list[str | None] = list(settings.listen_host) or [None]
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            listeners: list[trio.SocketListener] = []
            for host in hosts:
                listeners += await trio.open_tcp_listeners(settings.tcp_port or 443, host=host)
            addresses = [listener.socket.getsockname() for listener in listeners]
            self.listen_ports = [address[1] for address in addresses]
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._accept, listeners)
            for address in addresses:
                log.info("listening (TCP) on %s:%s", address[0], address[1])
            task_status.started(self)

    async def _accept(self, listeners: list[trio.SocketListener]) -> None:
        state = self.state

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(state, stream)

        await trio.serve_listeners(handler, listeners)

    async def _housekeeping(self) -> None:
        state = self.state
        while True:
            await trio.sleep(_HOUSEKEEPING_INTERVAL)
            now = state.clock()
            for session in state.sessions.expire(now):
                state.pool.release(session.lease_id)
            state.bans.expire(now)
            state.flow.expire(now)


async def run(config: ServerConfig, on_ready: Callable[[Server], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT (graceful stop)."""
    state = build_state(config)
    provider = state.tun_provider
    if isinstance(provider, KernelTunProvider):
        removed = await provider.remove_stale()
        if removed:
            log.info("removed stale tun devices of a previous run: %s", ", ".join(removed))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(Server(state).serve)
            if on_ready is not None:
                on_ready(server)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reload is not implemented yet; configuration kept")
                    continue
                log.info("received %s; stopping", signal.Signals(signum).name)
                await server.stop()
                break
