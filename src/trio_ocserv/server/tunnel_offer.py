"""From settings, the client's CONNECT headers, its lease and session to the `TunnelOffer` (§5.2).

Pure: the CONNECT handler gathers the inputs (settings merged for the user, the lease, facts about
the TLS session) and `plan_tunnel` decides the DTLS mode and suite (§7.2), the MTUs (§7.10), the
compression (§9.1) and every header value; the handler then only runs what was planned.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Sequence

import attrs

from trio_ocserv import __version__
from trio_ocserv.config.effective import UserSettings
from trio_ocserv.config.model import Settings
from trio_ocserv.config.values import Route
from trio_ocserv.net.pool import IpLease
from trio_ocserv.protocol.compress import (
    DEFAULT_PRIORITIES,
    NegotiatedCompression,
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
    IPNet,
    LegacyDtls,
    PskDtls,
    TunnelOffer,
    TunnelRequest,
    data_mtu,
    link_mtu,
)

SERVER_NAME = f"trio-ocserv {__version__}"
_DEFAULT_V4 = ipaddress.IPv4Network("0.0.0.0/0")


def route_networks(routes: tuple[Route, ...]) -> tuple[IPNet, ...]:
    """Config routes as networks; `default` is the IPv4 default route (full tunnel)."""
    return tuple(_DEFAULT_V4 if r == "default" else r for r in routes)


def randomized_rekey_time(rekey_time: int) -> int:
    """`X-CSTP-Rekey-Time`: the configured time plus an offset in (-30, +30) s, as ocserv (§8.5),
    so that a crowd of clients does not rekey at the same second."""
    if rekey_time <= 0:
        return 0
    return max(1, rekey_time + secrets.randbelow(59) - 29)


def build_tunnel_offer(
    *,
    settings: Settings,
    user: UserSettings,
    request: TunnelRequest,
    lease: IpLease,
    base_mtu: int,
    mtu: int,
    compression: NegotiatedCompression,
    dtls: DtlsOffer | None,
    rekey_time: int,
    rekey_method: str,
    session_timeout_remaining: float | None,
) -> TunnelOffer:
    mobile = request.is_mobile
    dpd = user.mobile_dpd if mobile else user.dpd
    idle = user.mobile_idle_timeout if mobile else user.idle_timeout
    ipv4 = lease.ipv4 if request.wants_ipv4 else None
    ipv6 = lease.ipv6 if request.wants_ipv6 else None
    return TunnelOffer(
        server_name=SERVER_NAME,
        hostname=user.hostname or request.hostname,
        dpd=dpd,
        keepalive=user.keepalive,
        base_mtu=base_mtu,
        mtu=mtu,
        default_domains=tuple((user.default_domain or "").split()),
        ipv4_address=ipv4.address if ipv4 else None,
        ipv4_network=ipv4.network if ipv4 else None,
        ipv6_address=ipv6.address if ipv6 else None,
        ipv6_prefix=ipv6.prefix.prefixlen if ipv6 else 128,
        full_ipv6=request.full_ipv6,
        dns=user.dns,
        nbns=user.nbns,
        split_dns=user.split_dns,
        routes=route_networks(user.routes),
        no_routes=route_networks(user.no_routes),
        tunnel_all_dns=user.tunnel_all_dns,
        client_bypass_protocol=settings.client_bypass_protocol,
        idle_timeout=idle or 0,
        dyndns=settings.listen_host_is_dyndns,
        rekey_time=rekey_time,
        rekey_method=rekey_method,
        proxy_pac_url=settings.proxy_url,
        session_timeout=user.session_timeout or 0,
        session_timeout_remaining=int(session_timeout_remaining or 0),
        custom_headers=settings.custom_header,
        dtls=dtls,
        banner=settings.banner,
        dtls_content_encoding=compression.dtls.value if compression.dtls else None,
        cstp_content_encoding=compression.cstp.value if compression.cstp else None,
    )


PSK_AES_GCM_RECORD_OVERHEAD = 37  # 13-byte header + 8-byte explicit nonce + 16-byte tag (§7.10)


@attrs.frozen
class TunnelPlan:
    offer: TunnelOffer
    mtu: int
    compression: NegotiatedCompression
    # The App-ID (PSK) or session id (legacy) the client's ClientHello will name.
    dtls_id: bytes
    dtls_parameters: PskServerParameters | LegacyServerParameters | None
    dtls_text: str  # for the log line: the mode, or why there is no DTLS


def plan_tunnel(
    *,
    settings: Settings,
    user: UserSettings,
    request: TunnelRequest,
    headers: Sequence[tuple[str, str]],
    lease: IpLease,
    udp_port: int | None,
    tls_cipher: str | None,
    tls13: bool,
    export_psk: Callable[[], bytes],
    session_timeout_remaining: float | None,
    dtls_id: bytes | None = None,
) -> TunnelPlan:
    mode: DtlsMode = NoDtls("no UDP port configured")
    if udp_port is not None and request.wants_dtls and not user.no_udp:
        mode = select_dtls_mode(
            headers,
            DtlsModeSettings(
                psk_enabled=settings.dtls_psk,
                legacy_enabled=settings.dtls_legacy or settings.cisco_client_compat,
                tls_bulk_and_mac=tls_bulk_and_mac(tls_cipher),
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
    # KeyUpdate is TLS 1.3's `ssl` rekey; a TLS 1.2 renegotiation OpenSSL 3 refuses (§8.5).
    rekey_method = "ssl" if settings.rekey_method == "ssl" and tls13 else "new-tunnel"
    rekey_time = randomized_rekey_time(settings.rekey_time)
    dtls_id = secrets.token_bytes(32) if dtls_id is None else dtls_id
    dtls_offer: DtlsOffer | None = None
    parameters: PskServerParameters | LegacyServerParameters | None = None
    if udp_port is not None and not isinstance(mode, NoDtls):
        announced: PskDtls | LegacyDtls
        if isinstance(mode, PskMode):
            parameters = PskServerParameters(export_psk())
            announced = PskDtls(dtls_id)
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
            port=udp_port,
            dpd=user.mobile_dpd if request.is_mobile else user.dpd,
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
        session_timeout_remaining=session_timeout_remaining,
    )
    text = mode.reason if isinstance(mode, NoDtls) else type(mode).__name__
    return TunnelPlan(offer, mtu, compression, dtls_id, parameters, text)


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
        return PSK_AES_GCM_RECORD_OVERHEAD
    return 0 if dtls_requested else None
