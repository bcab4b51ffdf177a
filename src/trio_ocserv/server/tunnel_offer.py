"""From settings, the client's CONNECT headers, its lease and session to the `TunnelOffer` (§5.2).

Pure: the CONNECT handler gathers the inputs (settings already merged for the user, the DTLS and
compression choices, the MTUs) and this function decides every header value.
"""

from __future__ import annotations

import ipaddress
import secrets

from trio_ocserv import __version__
from trio_ocserv.config.effective import UserSettings
from trio_ocserv.config.model import Settings
from trio_ocserv.config.values import Route
from trio_ocserv.net.pool import IpLease
from trio_ocserv.protocol.compress import NegotiatedCompression
from trio_ocserv.protocol.tunnel_setup import DtlsOffer, IPNet, TunnelOffer, TunnelRequest

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
