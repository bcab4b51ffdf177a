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

import errno
import logging
import signal
from collections.abc import Callable

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from trio_ocserv.auth.flow import AuthFlow, AuthFlowSettings, SelectableGroup
from trio_ocserv.auth.methods import AuthChain
from trio_ocserv.auth.registry import MethodFactory, build_auth_setup
from trio_ocserv.bans import BanSettings, BanTable
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.net.link import LinkError, local_networks
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server.control import serve_connection
from trio_ocserv.server.devices import KernelTunProvider, TunProvider
from trio_ocserv.server.state import ChainLogin, ServerState
from trio_ocserv.server.tls_config import ServerTlsContexts
from trio_ocserv.server.tunnel import TunnelEnd
from trio_ocserv.server.udp import UdpEndpoint
from trio_ocserv.sessions import SessionSettings, SessionTable

log = logging.getLogger("trio_ocserv")

_HOUSEKEEPING_INTERVAL = 5.0
_STOP_GRACE = 5.0
# Out of file descriptors or memory: pause accepting instead of failing (as trio.serve_listeners).
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_PAUSE = 0.1


def server_cert_sha1_hex(settings: Settings) -> str:
    if not settings.server_cert:
        return ""
    with open(settings.server_cert[0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    # The webvpnc hint carries the server certificate's SHA-1 (§3.7); not a security check.
    return cert.fingerprint(hashes.SHA1()).hex()


def flow_settings(
    settings: Settings, chain: AuthChain | None = None, server_cert_sha1: str = ""
) -> AuthFlowSettings:
    """The login form settings of one auth chain (its steps; the groups it can offer)."""
    steps = chain.flow_steps if chain is not None else AuthFlowSettings().steps
    auto_groups = (
        chain.available_groups() if chain is not None and settings.auto_select_group else ()
    )
    return AuthFlowSettings(
        steps=steps,
        certificate_required=chain.requires_certificate if chain is not None else False,
        select_groups=tuple(SelectableGroup(g.name, g.label) for g in settings.select_group),
        default_select_group=settings.default_select_group,
        auto_select_groups=tuple(g for g in auto_groups if g != settings.default_select_group),
        pre_login_banner=settings.pre_login_banner,
        banner=settings.banner,
        cookie_timeout=settings.cookie_timeout,
        server_cert_sha1_hex=server_cert_sha1,
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


def build_state(
    config: ServerConfig,
    tun_provider: TunProvider | None = None,
    *,
    methods: MethodFactory | None = None,
) -> ServerState:
    """Everything the server shares; raises AuthSetupError for unusable authentication."""
    settings = config.settings
    setup = build_auth_setup(settings, methods)
    tls = ServerTlsContexts.build(config)
    for warning in tls.warnings:
        log.warning("%s", warning)
    pool = IpLeasePool(
        settings.ipv4_network,
        settings.ipv6_network,
        settings.ipv6_subnet_prefix,
        predictable_ips=settings.predictable_ips,
    )
    cert_sha1 = server_cert_sha1_hex(settings)
    logins = tuple(
        ChainLogin(chain, AuthFlow(flow_settings(settings, chain, cert_sha1)))
        for chain in setup.policy.alternatives
    )
    return ServerState(
        config=config,
        tls_context=tls.default,
        tls=tls,
        sessions=SessionTable(session_settings(settings)),
        bans=BanTable(ban_settings(settings)),
        pool=pool,
        auth=setup,
        logins=logins,
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
        port = 443 if settings.tcp_port is None else settings.tcp_port  # 0: any (tests)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            listeners: list[trio.SocketListener] = []
            for host in hosts:
                listeners += await trio.open_tcp_listeners(port, host=host)
            addresses = [listener.socket.getsockname() for listener in listeners]
            self.listen_ports = [address[1] for address in addresses]
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._accept, listeners)
            for address in addresses:
                log.info("listening (TCP) on %s:%s", address[0], address[1])
            if settings.udp_port is not None:
                # One UDP socket for DTLS (the first udp-listen-host, else listen-host, else any).
                udp_host = (list(settings.udp_listen_host) or hosts)[0]
                udp = UdpEndpoint.bind(udp_host, settings.udp_port)
                self.state.udp = udp
                nursery.start_soon(udp.serve)
                log.info("listening (UDP) on %s:%s", udp_host or "*", udp.port)
            task_status.started(self)

    async def _accept(self, listeners: list[trio.SocketListener]) -> None:
        """One accept loop per listener; `rate-limit-ms` spaces accepts over all of them."""
        state = self.state
        interval = state.settings.rate_limit_ms / 1000
        next_accept = trio.current_time()

        async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
            nonlocal next_accept
            while True:
                await trio.sleep_until(next_accept)
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                        raise
                    log.warning("accept failed (%s); pausing", exc.strerror or exc)
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                next_accept = max(trio.current_time(), next_accept) + interval
                nursery.start_soon(serve_connection, state, stream)

        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery)

    async def _housekeeping(self) -> None:
        state = self.state
        while True:
            await trio.sleep(_HOUSEKEEPING_INTERVAL)
            now = state.clock()
            for session in state.sessions.expire(now):
                state.pool.release(session.lease_id)
            state.bans.expire(now)
            state.expire_logins(now)
            if state.tls is not None and await trio.to_thread.run_sync(state.tls.reload_if_changed):
                state.tls_context = state.tls.default  # a CRL changed: new connections use it
                log.info("CRL changed; TLS contexts reloaded")


async def run(config: ServerConfig, on_ready: Callable[[Server], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT (graceful stop)."""
    state = build_state(config)
    try:
        # ocserv never bans addresses of its own subnets (ocserv-behaviour.md)
        state.bans.set_exempt_networks(local_networks())
    except (LinkError, OSError) as exc:
        log.warning("cannot list local networks (%s); only loopback is never banned", exc)
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
