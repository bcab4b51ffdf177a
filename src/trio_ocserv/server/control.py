"""One client connection: PROXY header, TLS, the HTTP request loop, login steps, CONNECT.

Owns the per-connection task of architecture §3 (`ClientConnection`): reads the PROXY header when
`listen-proxy-proto` is on (the real client address then feeds bans, logs and sessions), refuses
banned addresses before TLS, bounds the whole pre-auth phase by `auth-timeout`, identifies the
client certificate (verified against ca-cert/crl in a worker thread), feeds requests to the login
state machine of the auth chain that certificate selects (`ServerState.login_for`), runs the
chain's checks in worker threads, scores wrong answers against the address, registers sessions,
and on `CONNECT` hands over to `server.connect`. Malformed input before login gets a 400 and the
connection is closed; no peer input can end the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging

import attrs
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from trio_ocserv.auth import flow as auth_flow
from trio_ocserv.auth.certificate import CertificateRejected
from trio_ocserv.auth.flow import (
    AuthFlow,
    CheckCredentials,
    CredentialOutcome,
    CredentialResult,
    LoginSucceeded,
    Respond,
)
from trio_ocserv.auth.methods import AuthChain, CertificateIdentity, run_check
from trio_ocserv.protocol import http
from trio_ocserv.protocol.auth_xml import AuthXmlError
from trio_ocserv.protocol.proxy import (
    InetEndpoint,
    ProxyCommand,
    ProxyHeaderReader,
    ProxyProtocolError,
)
from trio_ocserv.server import connect
from trio_ocserv.server.state import ServerState
from trio_ocserv.server.tls import TlsStream
from trio_ocserv.server.tunnel import TunnelEnd
from trio_ocserv.sessions import SessionRefused, TooManyClients

log = logging.getLogger("trio_ocserv")

_RECEIVE_SIZE = 65536
# A proxy sends its header at once; a peer that does not is not a proxy we serve.
_PROXY_HEADER_TIMEOUT = 10.0
_PROXY_READ_SIZE = 4096
_BAD_REQUEST = http.status_only_response(400, "Bad Request")
# Tunnel ends that come from the client's DISCONNECT (BYE) frame.
_CLIENT_SAID_BYE = frozenset({TunnelEnd.USER_LOGOUT, TunnelEnd.CLIENT_DISCONNECT})

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(peer: object) -> IpAddress:
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    return _unmapped(ipaddress.ip_address(host))


def _unmapped(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CloseConnection(Exception):
    """Internal: the response said `close`, or the peer is done."""


class PrefixedStream(trio.abc.Stream):
    """A transport whose first bytes were already read (those after a PROXY header)."""

    def __init__(self, transport: trio.abc.Stream, prefix: bytes) -> None:
        self.transport = transport
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport.aclose()


async def read_proxy_header(
    transport: trio.abc.Stream, socket_peer: IpAddress
) -> tuple[IpAddress, trio.abc.Stream] | None:
    """The client's real address and a stream that continues after the header; None when the
    connection does not start with a valid PROXY header (it must then be dropped)."""
    reader = ProxyHeaderReader()
    with trio.move_on_after(_PROXY_HEADER_TIMEOUT):
        while True:
            data = await transport.receive_some(_PROXY_READ_SIZE)
            if not data:
                return None
            try:
                header = reader.receive_data(data)
            except ProxyProtocolError as exc:
                log.info("%s: dropped: %s", socket_peer, exc)
                return None
            if header is not None:
                break
    if header is None:
        log.info("%s: dropped: no PROXY header within %.0f s", socket_peer, _PROXY_HEADER_TIMEOUT)
        return None
    peer = socket_peer
    if header.command is ProxyCommand.PROXY and isinstance(header.source, InetEndpoint):
        peer = _unmapped(header.source.address)
    return peer, PrefixedStream(transport, header.trailing_data)


def _der_chain(tls: TlsStream) -> list[bytes]:
    """The client's certificates, leaf first (a server-side OpenSSL chain omits the leaf)."""
    leaf = tls.peer_certificate()
    if leaf is None:
        return []
    rest = [c for c in tls.peer_certificate_chain() if c != leaf]
    return [c.public_bytes(Encoding.DER) for c in (leaf, *rest)]


@attrs.define(eq=False)
class ClientConnection:
    state: ServerState
    transport: trio.abc.Stream
    peer: IpAddress
    tls: TlsStream = attrs.field(init=False)
    requests: http.ControlHttpConnection = attrs.Factory(http.ControlHttpConnection)
    # What the client certificate of this TLS connection proved (None: none, or not verified).
    certificate: CertificateIdentity | None = None

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
        client_said_bye = False
        try:
            tunnel_request: http.Connect | None = None
            with trio.move_on_after(state.settings.auth_timeout or 1800):
                tunnel_request = await self._pre_auth()
            if tunnel_request is not None:
                end = await connect.serve_tunnel(self, tunnel_request)
                client_said_bye = end in _CLIENT_SAID_BYE
        except (trio.BrokenResourceError, trio.ClosedResourceError, CloseConnection):
            pass
        except http.HttpProtocolError as exc:
            log.info("%s: bad HTTP: %s", self.peer, exc)
            with trio.move_on_after(2), contextlib.suppress(trio.BrokenResourceError):
                await self.tls.send_all(_BAD_REQUEST.to_bytes())
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                if client_said_bye:
                    # The client has left and reads no more: a close_notify would only come
                    # back as a reset. ocserv, too, just closes the connection after a BYE.
                    await self.transport.aclose()
                else:
                    await self.tls.aclose()

    async def respond(self, response: http.HttpResponse) -> None:
        await self.tls.send_all(self.requests.send_response(response))
        if response.close:
            raise CloseConnection

    async def _pre_auth(self) -> http.Connect | None:
        """Serve requests until CONNECT succeeds (returns it) or the client leaves (None)."""
        await self.tls.do_handshake()
        await self._identify_certificate()
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
                await self.respond(logout or http.not_found_response())
            elif isinstance(event, http.StaticGet):
                stub = http.stub_response(event.path)
                await self.respond(stub or http.not_found_response())
            else:
                await self.respond(http.not_found_response())

    async def _identify_certificate(self) -> None:
        verifier = self.state.auth.certificate_verifier
        if verifier is None:
            return
        chain = _der_chain(self.tls)
        if not chain:
            return
        try:
            # CRL re-reads block; the limiter keeps certificate floods from starving logins.
            self.certificate = await run_check(
                self.state.auth_limiter, verifier.identify, chain, self.state.wall_clock()
            )
        except CertificateRejected as exc:
            log.info("%s: client certificate not accepted: %s", self.peer, exc)

    async def _login(self, event: http.AuthGet | http.AuthPost) -> None:
        state = self.state
        identity = self.certificate
        try:
            request = auth_flow.login_request_from_http(
                event,
                certificate_user=identity.user if identity is not None else None,
                certificate_groups=identity.groups if identity is not None else (),
            )
        except AuthXmlError as exc:
            log.info("%s: bad auth document: %s", self.peer, exc)
            await self.respond(http.auth_failure_response())
            return
        limit = state.settings.max_clients
        if limit and len(state.tunnels) >= limit:
            log.info("%s: login refused: max-clients (%d) reached", self.peer, limit)
            await self.respond(_service_unavailable(f"max-clients ({limit}) reached"))
            return
        login = state.login_for(identity)
        action = login.flow.handle_request(request, state.clock())
        checked = False
        while isinstance(action, CheckCredentials):
            check, checked = action, True
            result = await self._check(login.chain, check)
            action = login.flow.credentials_checked(check, result, state.clock())
            if isinstance(action, Respond) and action.response.status != 200:
                log.info(
                    "login of %r from %s: failed (%s)",
                    check.username, self.peer, result.outcome.value,
                )  # fmt: skip
            elif result.outcome is CredentialOutcome.REJECTED:
                log.info("login of %r from %s: wrong secret, may retry", check.username, self.peer)
        if isinstance(action, LoginSucceeded):
            await self._login_succeeded(action, login.flow)
        elif isinstance(action, Respond):
            response = action.response
            if response.status != 200 and not checked:
                log.info(
                    "login from %s: refused (%d %s)", self.peer, response.status, response.reason
                )
            await self.respond(response)

    async def _check(self, chain: AuthChain, check: CheckCredentials) -> CredentialResult:
        """Run one step of `chain` in a worker thread; wrong answers score against the address,
        and a banned address gets no further tries."""
        state = self.state
        if state.bans.is_banned(self.peer, state.clock()):
            log.info("login of %r from %s: refused, address banned", check.username, self.peer)
            return CredentialResult(CredentialOutcome.DENIED)
        result = await run_check(
            state.auth_limiter, chain.check, check, self.certificate, state.wall_clock()
        )
        failed = result.outcome in (CredentialOutcome.REJECTED, CredentialOutcome.DENIED)
        state.login_counts.failed += failed
        if failed and state.bans.wrong_password(self.peer, state.clock()):
            log.info("%s: banned after a wrong answer for %r", self.peer, check.username)
            return CredentialResult(CredentialOutcome.DENIED)
        return result

    async def _login_succeeded(self, done: LoginSucceeded, flow: AuthFlow) -> None:
        state = self.state
        try:
            new = state.sessions.create(done.username, self.peer, state.clock(), group=done.group)
        except SessionRefused as exc:
            log.info("login of %r from %s: refused: %s", done.username, self.peer, exc)
            if isinstance(exc, TooManyClients):
                await self.respond(_service_unavailable(str(exc)))
            else:
                # max-same-clients: ocserv fails the login itself
                await self.respond(http.auth_failure_response())
            return
        state.login_counts.succeeded += 1
        try:
            await self.respond(flow.success_response(new.cookie))
        finally:
            # After the answer: formatting and writing the line is not the client's to wait for.
            log.info(
                "login of %r (group %r) from %s: succeeded",
                done.username, done.group, self.peer,
            )  # fmt: skip


def _service_unavailable(reason: str) -> http.HttpResponse:
    return http.status_only_response(503, "Service Unavailable", [("X-Reason", reason)])


async def serve_connection(state: ServerState, stream: trio.SocketStream) -> None:
    """The TCP listener's handler: one `ClientConnection` per accepted socket.

    A bug in one connection's handling is logged and ends that connection, never the server."""
    try:
        try:
            peer = _address(stream.socket.getpeername())
        except OSError:
            await stream.aclose()
            return
        transport: trio.abc.Stream = stream
        if state.settings.listen_proxy_proto:
            proxied = await read_proxy_header(stream, peer)
            if proxied is None:
                await stream.aclose()
                return
            peer, transport = proxied
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await ClientConnection(state, transport, peer).run()
    except Exception:
        log.exception("connection handler failed")
        with contextlib.suppress(Exception):
            await stream.aclose()


__all__ = [
    "ClientConnection",
    "CloseConnection",
    "PrefixedStream",
    "read_proxy_header",
    "serve_connection",
]
