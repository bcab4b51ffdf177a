"""One client connection: TLS, the HTTP request loop, login steps, and CONNECT into a tunnel.

Owns the per-connection task of architecture §3 (`ClientConnection`): refuses banned addresses
before TLS, bounds the whole pre-auth phase by `auth-timeout`, feeds requests to the login state
machine (`auth.flow`), runs credential checks in worker threads, registers sessions, and on
`CONNECT` builds the tunnel (lease, tun, offer) and hands the stream to `CstpTunnel`. Everything it
sets up for a tunnel is torn down in shielded `finally` blocks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable

import attrs
import trio
from OpenSSL import SSL

from trio_ocserv.auth import flow as auth_flow
from trio_ocserv.auth.flow import (
    AuthFlow,
    CheckCredentials,
    CredentialOutcome,
    CredentialResult,
    LoginSucceeded,
    Respond,
)
from trio_ocserv.bans import BanTable
from trio_ocserv.config.model import ServerConfig, Settings
from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.pool import IpLeasePool, LeaseError
from trio_ocserv.protocol import http
from trio_ocserv.protocol.auth_xml import AuthXmlError
from trio_ocserv.protocol.compress import ChannelCompressor, negotiate_compression
from trio_ocserv.protocol.tunnel_setup import (
    TunnelRequestError,
    connect_response_headers,
    data_mtu,
    link_mtu,
    parse_tunnel_request,
)
from trio_ocserv.server.devices import TunProvider
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tls import TlsStream
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd
from trio_ocserv.server.tunnel_offer import build_tunnel_offer, randomized_rekey_time
from trio_ocserv.sessions import (
    CookieRejected,
    DisconnectReason,
    Session,
    SessionRefused,
    SessionTable,
)

log = logging.getLogger("trio_ocserv")

_RECEIVE_SIZE = 65536
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

    @property
    def settings(self) -> Settings:
        return self.config.settings


def _address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _CloseConnection(Exception):
    """Internal: the response said `close`, or the peer is done."""


@attrs.define(eq=False)
class ClientConnection:
    state: ServerState
    transport: trio.abc.Stream
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address
    tls: TlsStream = attrs.field(init=False)
    requests: http.ControlHttpConnection = attrs.Factory(http.ControlHttpConnection)

    def __attrs_post_init__(self) -> None:
        self.tls = TlsStream(self.transport, self.state.tls_context)

    async def run(self) -> None:
        state = self.state
        now = state.clock()
        if state.bans.is_banned(self.peer, now):
            log.info("refusing banned address %s", self.peer)
            await self.transport.aclose()
            return
        state.bans.connection(self.peer, now)
        try:
            tunnel_request: http.Connect | None = None
            with trio.move_on_after(state.settings.auth_timeout or 1800):
                tunnel_request = await self._pre_auth()
            if tunnel_request is not None:
                await self._tunnel(tunnel_request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _CloseConnection):
            pass
        except http.HttpProtocolError as exc:
            log.info("%s: bad HTTP: %s", self.peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.tls.aclose()

    async def _respond(self, response: http.HttpResponse) -> None:
        await self.tls.send_all(self.requests.send_response(response))
        if response.close:
            raise _CloseConnection

    async def _pre_auth(self) -> http.Connect | None:
        """Serve requests until CONNECT succeeds (returns it) or the client leaves (None)."""
        await self.tls.do_handshake()
        while True:
            event = self.requests.next_event()
            if event is http.NEED_DATA:
                data = await self.tls.receive_some(_RECEIVE_SIZE)
                self.requests.receive_data(data)
                continue
            if isinstance(event, http.ConnectionClosed):
                return None
            if isinstance(event, http.AuthGet | http.AuthPost):
                await self._login(event)
            elif isinstance(event, http.Connect):
                return event
            elif isinstance(event, http.Logout):
                logout = http.stub_response(http.LOGOUT_PATH)
                await self._respond(logout or http.not_found_response())
            elif isinstance(event, http.StaticGet):
                stub = http.stub_response(event.path)
                await self._respond(stub or http.not_found_response())
            else:
                await self._respond(http.not_found_response())

    async def _login(self, event: http.AuthGet | http.AuthPost) -> None:
        state = self.state
        try:
            request = auth_flow.login_request_from_http(event)
        except AuthXmlError as exc:
            log.info("%s: bad auth document: %s", self.peer, exc)
            await self._respond(http.auth_failure_response())
            return
        action = state.flow.handle_request(request, state.clock())
        while isinstance(action, CheckCredentials):
            result = await trio.to_thread.run_sync(
                state.check_credentials, action, limiter=state.auth_limiter
            )
            if result.outcome is CredentialOutcome.REJECTED:
                state.bans.wrong_password(self.peer, state.clock())
                log.info("%s: wrong password for %r", self.peer, action.username)
            action = state.flow.credentials_checked(action, result, state.clock())
        if isinstance(action, LoginSucceeded):
            await self._login_succeeded(action)
        elif isinstance(action, Respond):
            await self._respond(action.response)

    async def _login_succeeded(self, done: LoginSucceeded) -> None:
        state = self.state
        try:
            new = state.sessions.create(done.username, self.peer, state.clock(), group=done.group)
        except SessionRefused as exc:
            log.info("%s: login of %r refused: %s", self.peer, done.username, exc)
            await self._respond(http.status_only_response(503, "Service Unavailable"))
            return
        log.info("user %r (group %r) authenticated from %s", done.username, done.group, self.peer)
        await self._respond(state.flow.success_response(new.cookie))

    # -- the tunnel ------------------------------------------------------------------------------

    async def _tunnel(self, event: http.Connect) -> None:
        state = self.state
        now = state.clock()
        if event.cookie is None:
            await self._respond(http.status_only_response(503, "Service Unavailable"))
            return
        try:
            attachment = state.sessions.attach(event.cookie, self.peer, now)
        except CookieRejected:
            await self._respond(http.status_only_response(401, "Cookie is not acceptable"))
            return
        except SessionRefused as exc:
            await self._respond(
                http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
            )
            return
        session = attachment.session
        end = TunnelEnd.CONNECTION_LOST
        try:
            if attachment.replaced_tunnel_id is not None:
                await self._take_over(attachment.replaced_tunnel_id)
            end = await self._run_tunnel(event, session, attachment.tunnel_id)
        finally:
            gone = state.sessions.detach(
                session.session_id, attachment.tunnel_id, end.session_reason, state.clock()
            )
            if gone is not None:
                state.pool.release(gone.lease_id)

    async def _take_over(self, old_tunnel_id: int) -> None:
        """A reconnect with the same cookie replaces the old tunnel: stop it, wait for its tun."""
        old = self.state.tunnels.get(old_tunnel_id)
        if old is not None:
            log.info("user %r reconnected; closing the previous tunnel", old.session.username)
            old.tunnel.stop(TunnelEnd.TAKEN_OVER)
            with trio.move_on_after(5):
                await old.closed.wait()

    async def _run_tunnel(
        self, event: http.Connect, session: Session, tunnel_id: int
    ) -> TunnelEnd:
        state, settings = self.state, self.state.settings
        try:
            request = parse_tunnel_request(event.request.headers)
        except TunnelRequestError as exc:
            reason = [("X-Reason", str(exc))]
            await self._respond(http.status_only_response(400, "Bad Request", reason))
            return TunnelEnd.PROTOCOL_ERROR
        try:
            lease = state.pool.allocate(
                session.lease_id, session.username,
                ipv4=request.wants_ipv4, ipv6=request.wants_ipv6,
            )
        except LeaseError as exc:
            log.warning("no address for %r: %s", session.username, exc)
            await self._respond(
                http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
            )
            return TunnelEnd.SERVER_DISCONNECT
        # DTLS joins later (issue: DTLS data channel); until then the tunnel is CSTP only.
        base = link_mtu(request, settings.mtu, None, 0)
        mtu = data_mtu(base, None)
        compression = negotiate_compression(
            ",".join(request.cstp_accept_encoding) or None, None, enabled=settings.compression
        )
        tls13 = self.tls.tls_version == "TLSv1.3"
        rekey_method = "ssl" if settings.rekey_method == "ssl" and tls13 else "new-tunnel"
        offer = build_tunnel_offer(
            settings=settings, request=request, lease=lease, base_mtu=base, mtu=mtu,
            compression=compression, dtls=None,
            rekey_time=randomized_rekey_time(settings.rekey_time), rekey_method=rekey_method,
            session_timeout_remaining=session.time_remaining(state.clock()),
        )
        tun = await state.tun_provider.open_tun(TunAddressing.from_lease(lease, mtu))
        handle: TunnelHandle | None = None
        try:
            await self._respond(http.connect_response(connect_response_headers(offer)))
            now = state.clock()
            liveness = TunnelLiveness.start(
                now, offer.dpd, offer.idle_timeout or None, session.deadline
            )
            compressor = (
                ChannelCompressor(compression.cstp, settings.no_compress_limit)
                if compression.cstp is not None else None
            )
            tunnel = CstpTunnel(
                self.tls, tun, liveness, compressor=compressor,
                leftover=self.requests.trailing_data, clock=state.clock,
            )
            handle = TunnelHandle(tunnel, session, tun.name)
            state.tunnels[tunnel_id] = handle
            log.info(
                "user %r connected: %s on %s from %s", session.username,
                lease.ipv4.address if lease.ipv4 else lease.ipv6, tun.name, self.peer,
            )
            end = await tunnel.run()
            log.info("user %r disconnected: %s", session.username, end.text)
            return end
        finally:
            with trio.CancelScope(shield=True):
                state.tunnels.pop(tunnel_id, None)
                await state.tun_provider.close_tun(tun)
                if handle is not None:
                    handle.closed.set()


async def serve_connection(state: ServerState, stream: trio.SocketStream) -> None:
    """The TCP listener's handler: one `ClientConnection` per accepted socket."""
    try:
        peer = _address(stream.socket.getpeername())
    except OSError:
        await stream.aclose()
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await ClientConnection(state, stream, peer).run()


def plain_password_checker(
    verify: Callable[[str, str], tuple[str, ...] | None],
) -> CredentialChecker:
    """Interim checker: one password step against a `verify(user, password) -> groups` function."""

    def check(step: CheckCredentials) -> CredentialResult:
        groups = verify(step.username, step.secret)
        if groups is None:
            return CredentialResult(CredentialOutcome.REJECTED)
        if step.group is not None and step.group not in groups:
            return CredentialResult(CredentialOutcome.DENIED)
        return CredentialResult(CredentialOutcome.ACCEPTED, group=step.group)

    return check


__all__ = [
    "ClientConnection",
    "CredentialChecker",
    "DisconnectReason",
    "ServerState",
    "TunnelHandle",
    "plain_password_checker",
    "serve_connection",
]
