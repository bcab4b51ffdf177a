"""The server process: builds the shared state from the config and runs the nursery tree.

```
run()
├── signals: SIGTERM/SIGINT -> Server.stop(), SIGHUP -> Server.reload()
└── Server nursery (the sessions nursery: outlives reloads)
    ├── housekeeping: expire cookies, ban scores and pending logins; reload changed CRLs
    ├── CSTP data plane: the C thread serving established CSTP tunnels (when built)
    ├── TCP listener scope: accept loops -> serve_connection() in the Server nursery
    ├── UDP listener scope: the DTLS demultiplexer
    ├── ctl socket server (use-occtl)          └─ both restarted alone when a reload changes
    ├── metrics endpoint (metrics-listen)         the listen addresses or ports
    └── one ClientConnection (and its tunnel) per client
```

Stop (SIGTERM, SIGINT, `ctl stop now`): close the TCP listeners, wait `server-drain-ms` while the
tunnels keep running (a load balancer's health probe sees the port closed and sends new clients
elsewhere), then tell every tunnel DISCONNECT and wait, bounded, for their cleanup (disconnect
scripts, tun removal) before the nursery is cancelled.

Reload (SIGHUP, `ctl reload`): see reload.py; a bad file is logged and changes nothing.

With systemd: readiness, reloads and the stop are reported with sd_notify, and sockets passed by
socket activation are used instead of binding (systemd.py).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from trio_ocserv.auth.flow import AuthFlow
from trio_ocserv.auth.registry import MethodFactory, build_auth_setup
from trio_ocserv.bans import BanTable
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.ctl.server import CtlServer
from trio_ocserv.ctl.state_view import StateView, make_server_actions, make_server_view
from trio_ocserv.net.link import LinkError, local_networks
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server import metrics, systemd
from trio_ocserv.server.control import serve_connection
from trio_ocserv.server.cstp_fastpath import CstpDataPlane
from trio_ocserv.server.derived import (
    ban_settings,
    flow_settings,
    server_cert_sha1_hex,
    session_settings,
)
from trio_ocserv.server.devices import KernelTunProvider, TunProvider
from trio_ocserv.server.logs import SessionLog
from trio_ocserv.server.reload import ReloadError, apply_reload, plan_reload
from trio_ocserv.server.state import ChainLogin, ServerState
from trio_ocserv.server.tls_config import ServerTlsContexts
from trio_ocserv.server.tunnel import TunnelEnd
from trio_ocserv.server.udp import UdpEndpoint
from trio_ocserv.sessions import SessionTable

__all__ = [
    "Server",
    "ban_settings",
    "build_state",
    "flow_settings",
    "run",
    "server_cert_sha1_hex",
    "session_settings",
]

log = logging.getLogger("trio_ocserv")

_HOUSEKEEPING_INTERVAL = 5.0
# After DISCONNECT, how long tunnels get for their cleanup (scripts, tun removal) on a stop.
_STOP_GRACE = 5.0
# Out of file descriptors or memory: pause accepting instead of failing (as trio.serve_listeners).
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_PAUSE = 0.1
_UDP_FIELDS = ("udp_port", "udp_listen_host", "listen_host")


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
    """A running server; `stop()` ends it gracefully, `reload()` re-reads its config file."""

    state: ServerState
    # Sockets systemd passed (socket activation): used instead of binding.
    activated: systemd.ActivatedSockets = attrs.Factory(systemd.ActivatedSockets)
    nursery: trio.Nursery | None = None
    listen_ports: list[int] = attrs.Factory(list)
    udp_port: int | None = None
    metrics_port: int | None = None
    ctl_view: StateView | None = None
    _stopping: bool = False
    _tcp_scope: trio.CancelScope | None = None
    _udp_scope: trio.CancelScope | None = None
    _drain_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _reload_lock: trio.Lock = attrs.Factory(trio.Lock)
    _udp_endpoint: UdpEndpoint | None = None

    # -- requests from signals and the ctl socket (they return at once)

    def request_stop(self) -> None:
        if self.nursery is None:
            return
        if self._stopping:
            self._drain_scope.cancel()  # asked again: skip the rest of the drain
            return
        self.nursery.start_soon(self.stop)

    def request_reload(self) -> None:
        if self.nursery is not None and not self._stopping:
            self.nursery.start_soon(self.reload)

    # -- stop

    async def stop(self) -> None:
        if self._stopping or self.nursery is None:
            return
        self._stopping = True
        systemd.notify("STOPPING=1")
        if self._tcp_scope is not None:
            self._tcp_scope.cancel()  # no new clients from here on
        drain = self.state.settings.server_drain_ms / 1000
        if drain and self.state.tunnels:
            log.info("draining for %d ms before disconnecting clients", round(drain * 1000))
            with self._drain_scope:
                await trio.sleep(drain)
        handles = list(self.state.tunnels.values())
        if handles:
            log.info("disconnecting %d client(s)", len(handles))
        for handle in handles:
            handle.tunnel.stop(TunnelEnd.SERVER_DISCONNECT)
        with trio.move_on_after(_STOP_GRACE):
            for handle in handles:
                await handle.closed.wait()
        self.nursery.cancel_scope.cancel()

    # -- reload

    async def reload(self) -> bool:
        """Re-read the config file; True when the new configuration was applied."""
        async with self._reload_lock:
            state = self.state
            path = state.config.path
            old_settings = state.settings
            systemd.notify("RELOADING=1")
            try:
                plan = await trio.to_thread.run_sync(plan_reload, state.config, path)
            except ReloadError as exc:
                log.error("reload of %s failed; running configuration kept: %s", path, exc)
                return False
            finally:
                systemd.notify("READY=1")
            apply_reload(state, plan)
            for warning in plan.tls.warnings:
                log.warning("%s", warning)
            for field in plan.kept:
                log.warning(
                    "reload: %s changed; it applies after a restart", field.replace("_", "-")
                )
            if plan.listen_changed and not self._stopping:
                await self._restart_listeners(old_settings)
            log.info("configuration reloaded from %s", path)
            return True

    async def _restart_listeners(self, old: Settings) -> None:
        if self.activated:
            log.warning("reload: listen settings ignored; the sockets come from systemd")
            return
        assert self.nursery is not None
        new = self.state.settings
        if self._tcp_scope is not None:
            self._tcp_scope.cancel()
        try:
            await self.nursery.start(self._serve_tcp, new)
        except OSError as exc:
            log.error("reload: cannot listen with the new settings (%s); keeping the old ones", exc)
            await self.nursery.start(self._serve_tcp, old)
        if any(getattr(old, f) != getattr(new, f) for f in _UDP_FIELDS):
            if self._udp_scope is not None:
                self._udp_scope.cancel()  # live DTLS channels fall back to CSTP
            try:
                await self.nursery.start(self._serve_udp, new)
            except OSError as exc:
                log.error("reload: cannot bind UDP with the new settings (%s)", exc)
                await self.nursery.start(self._serve_udp, old)

    # -- the nursery tree

    async def serve(
        self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self.state.settings
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.state.observers.append(SessionLog(self.state))
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self.state.tun_provider.keep_spare)
            await nursery.start(self._serve_cstp_plane)
            await nursery.start(self._serve_tcp, settings)
            await nursery.start(self._serve_udp, settings)
            if settings.use_occtl:
                await nursery.start(self._serve_ctl, Path(settings.occtl_socket_file))
            if settings.metrics_listen:
                host, port = metrics.parse_listen_address(settings.metrics_listen)
                await nursery.start(self._serve_metrics, host, port)
            task_status.started(self)

    async def _serve_cstp_plane(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The C thread for established CSTP tunnels (when built); it ends with the nursery,
        after the tunnels were told to stop."""
        plane = CstpDataPlane.create()
        if plane is None:
            task_status.started()
            return
        self.state.cstp_plane = plane
        try:
            await plane.serve(task_status=task_status)
        finally:
            self.state.cstp_plane = None

    async def _serve_ctl(
        self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        view = make_server_view(self.state)
        self.state.observers.append(view)
        self.ctl_view = view
        actions = make_server_actions(view, reload=self.request_reload, stop=self.request_stop)
        await CtlServer(path, view, actions, view.events).serve(task_status=task_status)

    async def _serve_metrics(
        self, host: str, port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        totals = metrics.TrafficTotals()
        self.state.observers.append(totals)
        server = metrics.MetricsServer(metrics.make_registry(self.state, totals), host, port)
        async with trio.open_nursery() as nursery:
            self.metrics_port = await nursery.start(server.serve)
            task_status.started()

    async def _open_tcp(self, settings: Settings) -> list[trio.SocketListener]:
        if self.activated.tcp:
            return [
                trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                for sock in self.activated.tcp
            ]
        hosts: list[str | None] = list(settings.listen_host) or [None]
        port = 443 if settings.tcp_port is None else settings.tcp_port  # 0: any (tests)
        listeners: list[trio.SocketListener] = []
        try:
            for host in hosts:
                listeners += await trio.open_tcp_listeners(port, host=host)
        except BaseException:
            for listener in listeners:
                await listener.aclose()
            raise
        return listeners

    async def _serve_tcp(
        self, settings: Settings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The TCP listener scope: cancelled on stop and restarted when a reload asks."""
        with trio.CancelScope() as scope:
            self._tcp_scope = scope
            listeners = await self._open_tcp(settings)
            addresses = [listener.socket.getsockname() for listener in listeners]
            self.listen_ports = [address[1] for address in addresses]
            for address in addresses:
                log.info("listening (TCP) on %s:%s", address[0], address[1])
            try:
                task_status.started()
                await self._accept(listeners)
            finally:
                for listener in listeners:
                    listener.socket.close()

    async def _serve_udp(
        self, settings: Settings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The UDP (DTLS) listener scope; without udp-port (and no passed socket) nothing."""
        with trio.CancelScope() as scope:
            self._udp_scope = scope
            if self.activated.udp:
                udp = UdpEndpoint(self.activated.udp[0])
            elif settings.udp_port is not None:
                # One UDP socket for DTLS (the first udp-listen-host, else listen-host, else any).
                hosts = settings.udp_listen_host or settings.listen_host
                udp = UdpEndpoint.bind(hosts[0] if hosts else None, settings.udp_port)
            else:
                self.state.udp = None
                task_status.started()
                return
            self.state.udp = udp
            self.udp_port = udp.port
            log.info("listening (UDP) on %s:%s", *udp.sock.getsockname()[:2])
            try:
                task_status.started()
                await udp.serve()
            finally:
                if self.state.udp is udp:
                    self.state.udp = None
                udp.sock.close()

    async def _accept(self, listeners: list[trio.SocketListener]) -> None:
        """One accept loop per listener; `rate-limit-ms` spaces accepts over all of them.
        Connections run in the Server nursery: they outlive a listener restart."""
        state = self.state
        assert self.nursery is not None
        sessions = self.nursery
        interval = state.settings.rate_limit_ms / 1000
        next_accept = trio.current_time()

        async def accept_loop(listener: trio.SocketListener) -> None:
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
                sessions.start_soon(serve_connection, state, stream)

        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener)

    async def _housekeeping(self) -> None:
        state = self.state
        while True:
            await trio.sleep(_HOUSEKEEPING_INTERVAL)
            now = state.clock()
            for session in state.sessions.expire(now):
                state.pool.release(session.lease_id)
            state.bans.expire(now)
            state.expire_logins(now)
            tls = state.tls
            changed = tls is not None and await trio.to_thread.run_sync(tls.reload_if_changed)
            if changed and tls is not None and state.tls is tls:  # not replaced by a reload
                state.tls_context = tls.default  # a CRL changed: new connections use it
                log.info("CRL changed; TLS contexts reloaded")


async def run(
    config: ServerConfig,
    on_ready: Callable[[Server], None] | None = None,
    activated: systemd.ActivatedSockets | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (graceful stop); SIGHUP reloads the config file."""
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
    server = Server(state, activated=activated or systemd.ActivatedSockets())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_until_stopped(
                *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
            ) -> None:
                await server.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped (signal or ctl): the signal task ends

            await nursery.start(serve_until_stopped)
            if on_ready is not None:
                on_ready(server)
            systemd.notify(f"READY=1\nMAINPID={os.getpid()}")
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading the configuration")
                    server.request_reload()
                else:
                    log.info("received %s; stopping", signal.Signals(signum).name)
                    server.request_stop()
