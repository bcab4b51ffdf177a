"""`CONNECT /CSCOSSLC/tunnel`: from an accepted cookie to a running tunnel, and back.

Attaches the cookie to its session (taking over an older tunnel of the same cookie), leases the
addresses, opens the tun, answers `200 CONNECTED` with the offer of §5.3, runs the tunnel task
group, and on every exit path closes the tun and settles the session (shielded cleanup).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.pool import LeaseError
from trio_ocserv.protocol import http
from trio_ocserv.protocol.compress import ChannelCompressor, negotiate_compression
from trio_ocserv.protocol.tunnel_setup import (
    TunnelRequestError,
    connect_response_headers,
    data_mtu,
    link_mtu,
    parse_tunnel_request,
)
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.state import TunnelHandle
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd
from trio_ocserv.server.tunnel_offer import build_tunnel_offer, randomized_rekey_time
from trio_ocserv.sessions import CookieRejected, Session, SessionRefused

if TYPE_CHECKING:
    from trio_ocserv.server.control import ClientConnection

log = logging.getLogger("trio_ocserv")


async def serve_tunnel(conn: ClientConnection, event: http.Connect) -> None:
    state = conn.state
    now = state.clock()
    if event.cookie is None:
        await conn.respond(http.status_only_response(503, "Service Unavailable"))
        return
    try:
        attachment = state.sessions.attach(event.cookie, conn.peer, now)
    except CookieRejected:
        await conn.respond(http.status_only_response(401, "Cookie is not acceptable"))
        return
    except SessionRefused as exc:
        await conn.respond(
            http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
        )
        return
    session = attachment.session
    end = TunnelEnd.CONNECTION_LOST
    try:
        if attachment.replaced_tunnel_id is not None:
            await _take_over(conn, attachment.replaced_tunnel_id)
        end = await _run_tunnel(conn, event, session, attachment.tunnel_id)
    finally:
        gone = state.sessions.detach(
            session.session_id, attachment.tunnel_id, end.session_reason, state.clock()
        )
        if gone is not None:
            state.pool.release(gone.lease_id)


async def _take_over(conn: ClientConnection, old_tunnel_id: int) -> None:
    """A reconnect with the same cookie replaces the old tunnel: stop it, wait for its tun."""
    old = conn.state.tunnels.get(old_tunnel_id)
    if old is not None:
        log.info("user %r reconnected; closing the previous tunnel", old.session.username)
        old.tunnel.stop(TunnelEnd.TAKEN_OVER)
        with trio.move_on_after(5):
            await old.closed.wait()


async def _run_tunnel(
    conn: ClientConnection, event: http.Connect, session: Session, tunnel_id: int
) -> TunnelEnd:
    state, settings = conn.state, conn.state.settings
    try:
        request = parse_tunnel_request(event.request.headers)
    except TunnelRequestError as exc:
        reason = [("X-Reason", str(exc))]
        await conn.respond(http.status_only_response(400, "Bad Request", reason))
        return TunnelEnd.PROTOCOL_ERROR
    try:
        lease = state.pool.allocate(
            session.lease_id,
            session.username,
            ipv4=request.wants_ipv4,
            ipv6=request.wants_ipv6,
        )
    except LeaseError as exc:
        log.warning("no address for %r: %s", session.username, exc)
        await conn.respond(
            http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
        )
        return TunnelEnd.SERVER_DISCONNECT
    # DTLS joins later (issue: DTLS data channel); until then the tunnel is CSTP only.
    base = link_mtu(request, settings.mtu, None, 0)
    mtu = data_mtu(base, None)
    compression = negotiate_compression(
        ",".join(request.cstp_accept_encoding) or None, None, enabled=settings.compression
    )
    tls13 = conn.tls.tls_version == "TLSv1.3"
    rekey_method = "ssl" if settings.rekey_method == "ssl" and tls13 else "new-tunnel"
    offer = build_tunnel_offer(
        settings=settings,
        request=request,
        lease=lease,
        base_mtu=base,
        mtu=mtu,
        compression=compression,
        dtls=None,
        rekey_time=randomized_rekey_time(settings.rekey_time),
        rekey_method=rekey_method,
        session_timeout_remaining=session.time_remaining(state.clock()),
    )
    tun = await state.tun_provider.open_tun(TunAddressing.from_lease(lease, mtu))
    handle: TunnelHandle | None = None
    try:
        await conn.respond(http.connect_response(connect_response_headers(offer)))
        now = state.clock()
        liveness = TunnelLiveness.start(
            now, offer.dpd, offer.idle_timeout or None, session.deadline
        )
        compressor = (
            ChannelCompressor(compression.cstp, settings.no_compress_limit)
            if compression.cstp is not None
            else None
        )
        tunnel = CstpTunnel(
            conn.tls,
            tun,
            liveness,
            compressor=compressor,
            leftover=conn.requests.trailing_data,
            clock=state.clock,
        )
        handle = TunnelHandle(tunnel, session, tun.name)
        state.tunnels[tunnel_id] = handle
        log.info(
            "user %r connected: %s on %s from %s",
            session.username,
            lease.ipv4.address if lease.ipv4 else lease.ipv6,
            tun.name,
            conn.peer,
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
