"""`CONNECT /CSCOSSLC/tunnel`: from an accepted cookie to a running tunnel, and back.

Attaches the cookie to its session (taking over an older tunnel of the same cookie), leases the
addresses, opens the tun, answers `200 CONNECTED` with the offer of §5.3, runs the tunnel task
group, and on every exit path closes the tun and settles the session (shielded cleanup).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from trio_ocserv.config.errors import ConfigError
from trio_ocserv.config.model import Settings
from trio_ocserv.net.link import LinkError, TunAddressing
from trio_ocserv.net.pool import LeaseError
from trio_ocserv.protocol import http
from trio_ocserv.protocol.compress import (
    ChannelCompressor,
    CompressionAlgorithm,
)
from trio_ocserv.protocol.tunnel_setup import (
    TunnelRequestError,
    connect_response_headers,
    parse_tunnel_request,
)
from trio_ocserv.server.cstp_fastpath import CstpDataPlane
from trio_ocserv.server.dtls_channel import DtlsChannel
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.scripts import (
    ScriptContext,
    ScriptReason,
    SessionStats,
    plan_script,
    run_route_commands,
    run_script,
)
from trio_ocserv.server.state import ServerState, TunnelHandle
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd
from trio_ocserv.server.tunnel_offer import plan_tunnel
from trio_ocserv.server.udp import UdpEndpoint
from trio_ocserv.sessions import CookieRejected, Session, SessionRefused

if TYPE_CHECKING:
    from trio_ocserv.server.control import ClientConnection

log = logging.getLogger("trio_ocserv")

PSK_EXPORTER_LABEL = b"EXPORTER-openconnect-psk"
_NO_TUN = http.status_only_response(503, "Service Unavailable", [("X-Reason", "no tun device")])
# ocserv waits for connect scripts without a limit; a hung script must not hold a client forever.
SCRIPT_TIME_LIMIT = 30.0


async def serve_tunnel(conn: ClientConnection, event: http.Connect) -> TunnelEnd | None:
    """Answer `event` and run its tunnel; how the tunnel ended (None: no tunnel was set up)."""
    state = conn.state
    now = state.clock()
    if event.cookie is None:
        await conn.respond(http.status_only_response(503, "Service Unavailable"))
        return None
    try:
        attachment = state.sessions.attach(event.cookie, conn.peer, now)
    except CookieRejected:
        await conn.respond(http.status_only_response(401, "Cookie is not acceptable"))
        return None
    except SessionRefused as exc:
        await conn.respond(
            http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
        )
        return None
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
    return end


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
        if settings.config_per_user or settings.config_per_group:
            user = await trio.to_thread.run_sync(
                state.user_settings.resolve, settings, session.username, session.group
            )
        else:
            # No per-user or per-group files to read: the merge is quick, spare the thread hop.
            user = state.user_settings.resolve(settings, session.username, session.group)
    except ConfigError as exc:
        log.error("refusing %r: %s", session.username, exc)
        await conn.respond(http.status_only_response(503, "Service Unavailable"))
        return TunnelEnd.REFUSED
    try:
        lease = state.pool.allocate(
            session.lease_id,
            session.username,
            ipv4=request.wants_ipv4,
            ipv6=request.wants_ipv6,
            explicit_ipv4=user.explicit_ipv4,
            explicit_ipv6=user.explicit_ipv6.ip if user.explicit_ipv6 is not None else None,
        )
    except LeaseError as exc:
        log.warning("no address for %r: %s", session.username, exc)
        await conn.respond(
            http.status_only_response(503, "Service Unavailable", [("X-Reason", str(exc))])
        )
        return TunnelEnd.SERVER_DISCONNECT
    udp = state.udp if isinstance(state.udp, UdpEndpoint) else None
    plan = plan_tunnel(
        settings=settings,
        user=user,
        request=request,
        headers=event.request.headers,
        lease=lease,
        udp_port=udp.port if udp is not None else None,
        tls_cipher=conn.tls.cipher,
        tls13=conn.tls.tls_version == "TLSv1.3",
        export_psk=lambda: conn.tls.export_keying_material(PSK_EXPORTER_LABEL, 32, None),
        session_timeout_remaining=session.time_remaining(state.clock()),
    )
    offer, mtu, compression = plan.offer, plan.mtu, plan.compression
    try:
        tun = await state.tun_provider.reserve_tun()
    except OSError as exc:
        # Out of file descriptors, no /dev/net/tun: the client gets a reason.
        log.error("no tun device for %r: %s", session.username, exc)
        await conn.respond(_NO_TUN)
        return TunnelEnd.REFUSED
    handle: TunnelHandle | None = None
    channel: DtlsChannel | None = None
    scripts = ScriptContext.for_user(
        user,
        session.session_id,
        device=tun.name,
        real_address=conn.peer,
        ipv4_local=lease.ipv4.local if lease.ipv4 else None,
        ipv4_remote=lease.ipv4.address if lease.ipv4 else None,
        ipv6_local=lease.ipv6.local if lease.ipv6 else None,
        ipv6_remote=lease.ipv6.address if lease.ipv6 else None,
        ipv6_prefix=lease.ipv6.prefix.prefixlen if lease.ipv6 else None,
        remote_hostname=request.hostname or "",
        user_agent=request.user_agent,
        device_platform=request.platform,
    )
    addressing = TunAddressing.from_lease(lease, mtu)
    # Scripts (and iroutes' route-add-cmd) see a configured device and may refuse the user, so
    # they run before the answer, as in ocserv. Without them the answer goes out while a worker
    # thread configures the tun: the client's work on it overlaps ours.
    answer_first = not (
        settings.connect_script is not None
        or scripts.uses_firewall
        or (settings.route_add_cmd and user.iroutes)
    )
    connected = announced = False
    end = TunnelEnd.CONNECTION_LOST
    started = state.clock()
    tunnel: CstpTunnel | None = None
    try:
        now = state.clock()
        liveness = TunnelLiveness.start(
            now, offer.dpd, offer.idle_timeout or None, session.deadline
        )
        tunnel = CstpTunnel(
            conn.tls,
            tun,
            liveness,
            compressor=_compressor(compression.cstp, settings),
            leftover=b"",
            clock=state.clock,
            fast_plane=state.cstp_plane if isinstance(state.cstp_plane, CstpDataPlane) else None,
            label=session.username,
        )
        if udp is not None and plan.dtls_parameters is not None and offer.dtls is not None:
            channel = DtlsChannel(
                udp,
                plan.dtls_parameters,
                tun=tun,
                counters=tunnel.counters,
                liveness=liveness,
                compressor=_compressor(compression.dtls, settings),
                dpd=offer.dtls.dpd,
                mtu=mtu,
                switch_to_tcp_timeout=settings.switch_to_tcp_timeout,
                on_disconnect=tunnel.client_disconnect,
                after_batch=tunnel.forward_tun_nowait,
                clock=state.clock,
                label=session.username,
            )
            channel.on_path_change = tunnel.dtls_path_changed
            # Registered before the answer: the ClientHello may follow it at once.
            udp.register(plan.dtls_id, channel)
            tunnel.dtls = channel
        handle = TunnelHandle(
            tunnel,
            session,
            tun.name,
            user_agent=request.user_agent,
            hostname=request.hostname or "",
            mtu=mtu,
            local_address=str(
                lease.ipv4.local if lease.ipv4 else lease.ipv6.local if lease.ipv6 else ""
            ),
            iroutes=user.iroutes,
        )
        # Known to a server stop from here on (it may come while the tun is configured).
        state.tunnels[tunnel_id] = handle
        connect_answer = http.connect_response(connect_response_headers(offer))

        async def announce_and_run(tunnel: CstpTunnel, handle: TunnelHandle) -> TunnelEnd:
            nonlocal announced
            tunnel.leftover = conn.requests.trailing_data
            for observer in state.observers:
                observer.tunnel_up(tunnel_id, handle)
            announced = True
            log.debug("%s: tunnel on %s, DTLS: %s", session.username, tun.name, plan.dtls_text)
            return await tunnel.run()

        if answer_first:

            async def configure_behind(tunnel: CstpTunnel) -> None:
                # The tunnel (and its DTLS handshake) runs meanwhile: nothing can be read from a
                # down tun, and what is written to it is dropped (EIO) until it is up.
                nonlocal connected
                try:
                    await state.tun_provider.configure_tun(tun, addressing)
                except (OSError, LinkError) as exc:
                    log.error("no tun device for %r: %s", session.username, exc)
                    tunnel.stop(TunnelEnd.TUN_GONE)  # too late for a 503: a DISCONNECT
                else:
                    connected = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(configure_behind, tunnel)
                await conn.respond(connect_answer)
                end = await announce_and_run(tunnel, handle)
            return end
        try:
            await state.tun_provider.configure_tun(tun, addressing)
        except (OSError, LinkError) as exc:
            log.error("no tun device for %r: %s", session.username, exc)
            await conn.respond(_NO_TUN)
            return TunnelEnd.REFUSED
        if not await _run_script(state, ScriptReason.CONNECT, settings.connect_script, scripts):
            await conn.respond(
                http.status_only_response(
                    503, "Service Unavailable", [("X-Reason", "connect-script refused the user")]
                )
            )
            return TunnelEnd.REFUSED
        connected = True
        await run_route_commands(
            settings.route_add_cmd,
            user.iroutes,
            tun.name,
            SCRIPT_TIME_LIMIT,
            limiter=state.script_limiter,
        )
        await conn.respond(connect_answer)
        end = await announce_and_run(tunnel, handle)
        return end
    finally:
        with trio.CancelScope(shield=True):
            state.tunnels.pop(tunnel_id, None)
            if handle is not None and announced:
                for observer in state.observers:
                    observer.tunnel_down(tunnel_id, handle, end)
            if udp is not None and channel is not None:
                udp.forget(channel)
            if connected:
                await run_route_commands(
                    settings.route_del_cmd,
                    user.iroutes,
                    tun.name,
                    SCRIPT_TIME_LIMIT,
                    limiter=state.script_limiter,
                )
                # The firewall script runs for restricted users even with no disconnect-script.
                if settings.disconnect_script is not None or scripts.uses_firewall:
                    counters = tunnel.counters if tunnel is not None else None
                    stats = SessionStats(
                        bytes_in=counters.bytes_in if counters else 0,
                        bytes_out=counters.bytes_out if counters else 0,
                        duration=int(state.clock() - started),
                    )
                    await _run_script(
                        state,
                        ScriptReason.DISCONNECT,
                        settings.disconnect_script,
                        attrs.evolve(scripts, stats=stats),
                    )
            # No script saw this device: it may serve the next tunnel (devices.py).
            reuse = connected and answer_first and settings.disconnect_script is None
            await state.tun_provider.close_tun(tun, reuse=reuse)
            if handle is not None:
                handle.closed.set()


async def _run_script(
    state: ServerState, reason: ScriptReason, script: str | None, context: ScriptContext
) -> bool:
    """Run the configured script for `reason`; True when there is none or it succeeded."""
    invocation = plan_script(reason, script, context)
    if invocation is None:
        return True
    result = await run_script(
        invocation.argv, invocation.environment, SCRIPT_TIME_LIMIT, limiter=state.script_limiter
    )
    if not result.success:
        log.warning("%s script for %r %s", reason.value, context.username, result.describe())
    return result.success


def _compressor(
    algorithm: CompressionAlgorithm | None, settings: Settings
) -> ChannelCompressor | None:
    if algorithm is None:
        return None
    return ChannelCompressor(algorithm, settings.no_compress_limit)
