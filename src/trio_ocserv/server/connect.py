"""`CONNECT /CSCOSSLC/tunnel`: from an accepted cookie to a running tunnel, and back.

Attaches the cookie to its session (taking over an older tunnel of the same cookie), leases the
addresses, opens the tun, answers `200 CONNECTED` with the offer of §5.3, runs the tunnel task
group, and on every exit path closes the tun and settles the session (shielded cleanup).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import attrs
import trio

from trio_ocserv.config.errors import ConfigError
from trio_ocserv.config.model import Settings
from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.pool import LeaseError
from trio_ocserv.protocol import http
from trio_ocserv.protocol.compress import (
    DEFAULT_PRIORITIES,
    ChannelCompressor,
    CompressionAlgorithm,
    negotiate_compression,
    parse_algorithm_priorities,
)
from trio_ocserv.protocol.dtls.mode import (
    DtlsMode,
    DtlsModeSettings,
    LegacyMode,
    NoDtls,
    PskMode,
    select_dtls_mode,
)
from trio_ocserv.protocol.dtls.server import LegacyServerParameters, PskServerParameters
from trio_ocserv.protocol.dtls.suites import SUITES_BY_CODE
from trio_ocserv.protocol.tunnel_setup import (
    DtlsOffer,
    LegacyDtls,
    PskDtls,
    TunnelRequestError,
    connect_response_headers,
    data_mtu,
    link_mtu,
    parse_tunnel_request,
)
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
from trio_ocserv.server.tunnel_offer import build_tunnel_offer, randomized_rekey_time
from trio_ocserv.server.udp import UdpEndpoint
from trio_ocserv.sessions import CookieRejected, Session, SessionRefused

if TYPE_CHECKING:
    from trio_ocserv.server.control import ClientConnection

log = logging.getLogger("trio_ocserv")

PSK_EXPORTER_LABEL = b"EXPORTER-openconnect-psk"
# ocserv waits for connect scripts without a limit; a hung script must not hold a client forever.
SCRIPT_TIME_LIMIT = 30.0
# 13-byte header + 8-byte explicit nonce + 16-byte tag: PSK mode's AES-GCM suites (§7.10).
AES_GCM_RECORD_OVERHEAD = 37


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
        user = await trio.to_thread.run_sync(
            state.user_settings.resolve, settings, session.username, session.group
        )
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
    mode: DtlsMode = NoDtls("no UDP port configured")
    if udp is not None and request.wants_dtls and not user.no_udp:
        mode = select_dtls_mode(
            event.request.headers,
            DtlsModeSettings(
                psk_enabled=settings.dtls_psk,
                legacy_enabled=settings.dtls_legacy or settings.cisco_client_compat,
                tls_bulk_and_mac=tls_bulk_and_mac(conn.tls.cipher),
            ),
        )
    crypto_overhead = dtls_crypto_overhead(mode, request.wants_dtls)
    base = link_mtu(request, user.mtu, None, crypto_overhead or 0)
    mtu = data_mtu(base, crypto_overhead)
    priorities = (
        parse_algorithm_priorities(settings.compression_algo_priority)
        if settings.compression_algo_priority
        else DEFAULT_PRIORITIES
    )
    compression = negotiate_compression(
        ",".join(request.cstp_accept_encoding) or None,
        ",".join(request.dtls_accept_encoding) or None,
        enabled=settings.compression,
        priorities=priorities,
    )
    tls13 = conn.tls.tls_version == "TLSv1.3"
    rekey_method = "ssl" if settings.rekey_method == "ssl" and tls13 else "new-tunnel"
    rekey_time = randomized_rekey_time(settings.rekey_time)
    dtls_id = secrets.token_bytes(32)
    dtls_offer: DtlsOffer | None = None
    parameters: PskServerParameters | LegacyServerParameters | None = None
    if udp is not None and not isinstance(mode, NoDtls):
        dpd = user.mobile_dpd if request.is_mobile else user.dpd
        if isinstance(mode, PskMode):
            psk = conn.tls.export_keying_material(PSK_EXPORTER_LABEL, 32, None)
            parameters = PskServerParameters(psk)
            announced: PskDtls | LegacyDtls = PskDtls(dtls_id)
        else:
            parameters = LegacyServerParameters(mode.master_secret, dtls_id, mode.suite_code)
            announced = LegacyDtls(
                dtls_id,
                mode.suite_name,
                announce_as_dtls12=mode.header_name == "X-DTLS12-CipherSuite",
                mtu=mtu,
            )
        # No DTLS renegotiation yet: without X-DTLS-Rekey-Method the client never asks (§8.5).
        dtls_offer = DtlsOffer(
            port=udp.port,
            dpd=dpd,
            keepalive=user.keepalive,
            rekey_time=rekey_time,
            rekey_method="none",
            mode=announced,
        )
    offer = build_tunnel_offer(
        settings=settings,
        user=user,
        request=request,
        lease=lease,
        base_mtu=base,
        mtu=mtu,
        compression=compression,
        dtls=dtls_offer,
        rekey_time=rekey_time,
        rekey_method=rekey_method,
        session_timeout_remaining=session.time_remaining(state.clock()),
    )
    tun = await state.tun_provider.open_tun(TunAddressing.from_lease(lease, mtu))
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
    connected = False
    end = TunnelEnd.CONNECTION_LOST
    started = state.clock()
    tunnel: CstpTunnel | None = None
    try:
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
        )
        if udp is not None and parameters is not None and dtls_offer is not None:
            channel = DtlsChannel(
                udp,
                parameters,
                tun=tun,
                counters=tunnel.counters,
                liveness=liveness,
                compressor=_compressor(compression.dtls, settings),
                dpd=dtls_offer.dpd,
                mtu=mtu,
                switch_to_tcp_timeout=settings.switch_to_tcp_timeout,
                on_disconnect=tunnel.client_disconnect,
                clock=state.clock,
                label=session.username,
            )
            # Registered before the reply: the ClientHello may follow it at once.
            udp.register(dtls_id, channel)
            tunnel.dtls = channel
        await conn.respond(http.connect_response(connect_response_headers(offer)))
        tunnel.leftover = conn.requests.trailing_data
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
        state.tunnels[tunnel_id] = handle
        for observer in state.observers:
            observer.tunnel_up(tunnel_id, handle)
        log.info(
            "user %r connected: %s on %s from %s (DTLS: %s)",
            session.username,
            lease.ipv4.address if lease.ipv4 else lease.ipv6,
            tun.name,
            conn.peer,
            type(mode).__name__ if not isinstance(mode, NoDtls) else mode.reason,
        )
        end = await tunnel.run()
        log.info("user %r disconnected: %s", session.username, end.text)
        return end
    finally:
        with trio.CancelScope(shield=True):
            state.tunnels.pop(tunnel_id, None)
            if handle is not None:
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
            await state.tun_provider.close_tun(tun)
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


def tls_bulk_and_mac(cipher: str | None) -> tuple[str, str] | None:
    """The control channel's (bulk cipher, MAC) as ocserv compares them with DTLS suites (§7.2)."""
    name = (cipher or "").upper().replace("_", "-")
    for key, bulk in (
        ("AES-256-GCM", "AES-256-GCM"),
        ("AES256-GCM", "AES-256-GCM"),
        ("AES-128-GCM", "AES-128-GCM"),
        ("AES128-GCM", "AES-128-GCM"),
    ):
        if key in name:
            return (bulk, "AEAD")
    for key, bulk in (("AES256-SHA", "AES-256-CBC"), ("AES128-SHA", "AES-128-CBC")):
        if name.endswith(key):
            return (bulk, "SHA1")
    return None


def dtls_crypto_overhead(mode: DtlsMode, dtls_requested: bool) -> int | None:
    """Per-record DTLS bytes for the MTU (§7.10): None without DTLS, 0 when nothing matched."""
    if isinstance(mode, LegacyMode):
        return SUITES_BY_CODE[mode.suite_code].record_overhead
    if isinstance(mode, PskMode):
        return AES_GCM_RECORD_OVERHEAD
    return 0 if dtls_requested else None
