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

from trio_ocserv.auth import flow as auth_flow
from trio_ocserv.auth.flow import (
    CheckCredentials,
    CredentialOutcome,
    CredentialResult,
    LoginSucceeded,
    Respond,
)
from trio_ocserv.protocol import http
from trio_ocserv.protocol.auth_xml import AuthXmlError
from trio_ocserv.server import connect
from trio_ocserv.server.state import CredentialChecker, ServerState
from trio_ocserv.server.tls import TlsStream
from trio_ocserv.sessions import SessionRefused

log = logging.getLogger("trio_ocserv")

_RECEIVE_SIZE = 65536


def _address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CloseConnection(Exception):
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
                await connect.serve_tunnel(self, tunnel_request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, CloseConnection):
            pass
        except http.HttpProtocolError as exc:
            log.info("%s: bad HTTP: %s", self.peer, exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.tls.aclose()

    async def respond(self, response: http.HttpResponse) -> None:
        await self.tls.send_all(self.requests.send_response(response))
        if response.close:
            raise CloseConnection

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
                await self.respond(logout or http.not_found_response())
            elif isinstance(event, http.StaticGet):
                stub = http.stub_response(event.path)
                await self.respond(stub or http.not_found_response())
            else:
                await self.respond(http.not_found_response())

    async def _login(self, event: http.AuthGet | http.AuthPost) -> None:
        state = self.state
        try:
            request = auth_flow.login_request_from_http(event)
        except AuthXmlError as exc:
            log.info("%s: bad auth document: %s", self.peer, exc)
            await self.respond(http.auth_failure_response())
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
            await self.respond(action.response)

    async def _login_succeeded(self, done: LoginSucceeded) -> None:
        state = self.state
        try:
            new = state.sessions.create(done.username, self.peer, state.clock(), group=done.group)
        except SessionRefused as exc:
            log.info("%s: login of %r refused: %s", self.peer, done.username, exc)
            await self.respond(http.status_only_response(503, "Service Unavailable"))
            return
        log.info("user %r (group %r) authenticated from %s", done.username, done.group, self.peer)
        await self.respond(state.flow.success_response(new.cookie))


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


__all__ = ["ClientConnection", "CloseConnection", "plain_password_checker", "serve_connection"]
