"""`CONNECT /CSCOSSLC/tunnel`: the client's request headers and the server's `200 CONNECTED` reply.

Owns protocol.md §5 (request headers read, response headers written in ocserv's order) and the MTU
arithmetic of §7.10. Pure: no config, no sockets; the server fills a `TunnelOffer` from the session,
the lease and the negotiated DTLS/compression choices, and this module turns it into bytes.

Rules:
* Header order is ocserv's (§5.3 catalogue): openconnect does not care, Cisco clients might.
* IPv4 routes go out as `addr/netmask`, IPv6 as `addr/len`; IPv6 routes and DNS only for clients
  that sent `X-CSTP-Full-IPv6-Capability: true` (else the old single-address IPv6 form is used).
* Header values never contain CR/LF: config-supplied text (banner, custom headers) is checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network
IPNet = IPv4Net | IPv6Net

MOBILE_PLATFORM_PREFIXES = ("apple-ios", "android")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,62}")
_MASTER_SECRET_HEX_DIGITS = 96

# §7.10: openconnect's own worst-case DTLS overhead, used when only X-CSTP-MTU was sent.
CLIENT_WORST_DTLS_OVERHEAD = 1 + 13 + 20 + 32 + 16
DEFAULT_LINK_MTU = 1500
IPV6_MIN_MTU = 1280


class TunnelRequestError(ValueError):
    """A CONNECT request header we cannot accept (answered with a 4xx, never a crash)."""


def _split_list(value: str | None, sep: str) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(sep) if item.strip())


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise TunnelRequestError(f"{name}: {raw[:40]!r} is not a number") from None
    if not 0 < value <= 65535:
        raise TunnelRequestError(f"{name}: {value} is out of range")
    return value


@attrs.frozen
class TunnelRequest:
    """What the client asked for in its CONNECT headers (§5.1)."""

    hostname: str | None = None
    user_agent: str = ""
    cstp_accept_encoding: tuple[str, ...] = ()
    dtls_accept_encoding: tuple[str, ...] = ()
    base_mtu: int | None = None
    mtu: int | None = None
    wants_ipv4: bool = True
    wants_ipv6: bool = True
    full_ipv6: bool = False
    previous_addresses: tuple[str, ...] = ()
    # 48 bytes from X-DTLS-Master-Secret; None when absent or too short (the client then gets no
    # legacy DTLS; its presence is also the client's "I want DTLS at all" signal).
    dtls_master_secret: bytes | None = None
    dtls_ciphersuites: tuple[str, ...] = ()
    dtls12_ciphersuites: tuple[str, ...] = ()
    platform: str = ""

    @property
    def wants_dtls(self) -> bool:
        return bool(self.dtls_ciphersuites or self.dtls12_ciphersuites)

    @property
    def is_mobile(self) -> bool:
        return self.platform.lower().startswith(MOBILE_PLATFORM_PREFIXES)


def parse_tunnel_request(headers: Iterable[tuple[str, str]]) -> TunnelRequest:
    """Read the CONNECT headers (names case-insensitive; repeated X-CSTP-Address kept in order).

    An invalid hostname is dropped rather than refused, as ocserv does; malformed numbers are a
    `TunnelRequestError`.
    """
    single: dict[str, str] = {}
    previous: list[str] = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == "x-cstp-address":
            previous.append(value.strip())
        else:
            single.setdefault(name, value.strip())
    hostname = single.get("x-cstp-hostname")
    if hostname is not None and not _HOSTNAME_RE.fullmatch(hostname):
        hostname = None
    address_types = {t.lower() for t in _split_list(single.get("x-cstp-address-type"), ",")}
    master_hex = single.get("x-dtls-master-secret", "")
    master: bytes | None = None
    if len(master_hex) >= _MASTER_SECRET_HEX_DIGITS:
        try:
            master = bytes.fromhex(master_hex[:_MASTER_SECRET_HEX_DIGITS])
        except ValueError:
            master = None
    return TunnelRequest(
        hostname=hostname,
        user_agent=single.get("user-agent", ""),
        cstp_accept_encoding=_split_list(single.get("x-cstp-accept-encoding"), ","),
        dtls_accept_encoding=_split_list(single.get("x-dtls-accept-encoding"), ","),
        base_mtu=_int_header(single, "x-cstp-base-mtu"),
        mtu=_int_header(single, "x-cstp-mtu"),
        wants_ipv4=not address_types or "ipv4" in address_types,
        wants_ipv6=not address_types or "ipv6" in address_types,
        full_ipv6=single.get("x-cstp-full-ipv6-capability", "").lower() == "true",
        previous_addresses=tuple(previous),
        dtls_master_secret=master,
        dtls_ciphersuites=_split_list(single.get("x-dtls-ciphersuite"), ":"),
        dtls12_ciphersuites=_split_list(single.get("x-dtls12-ciphersuite"), ":"),
        platform=single.get("x-anyconnect-identifier-platform", ""),
    )


# -- MTU (§7.10) ------------------------------------------------------------------------------


def link_mtu(
    request: TunnelRequest,
    configured_mtu: int | None,
    tcp_path_mtu: int | None,
    dtls_overhead: int,
    ipv6_outer: bool = False,
) -> int:
    """The link (outer path) MTU the server settles on: config, the client's view, TCP's pmtu."""
    link = configured_mtu or DEFAULT_LINK_MTU
    if request.base_mtu is not None:
        link = min(link, request.base_mtu)
    elif request.mtu is not None:
        link = min(link, request.mtu + (40 if ipv6_outer else 20) + 8 + dtls_overhead)
    if tcp_path_mtu:
        link = min(link, tcp_path_mtu)
    return link


def data_mtu(link: int, dtls_crypto_overhead: int | None, ipv6_outer: bool = False) -> int:
    """The tunnel MTU: link minus IP + UDP + DTLS crypto overhead + the 1-byte payload header.

    `dtls_crypto_overhead=None` means DTLS is off: neither crypto nor the type byte is counted.
    """
    overhead = (40 if ipv6_outer else 20) + 8
    if dtls_crypto_overhead is not None:
        overhead += dtls_crypto_overhead + 1
    return link - overhead


# -- response (§5.3) --------------------------------------------------------------------------


@attrs.frozen
class PskDtls:
    """PSK-NEGOTIATE: the App-ID the client puts in its ClientHello session_id."""

    app_id: bytes


@attrs.frozen
class LegacyDtls:
    """Legacy resumption: our session id, the chosen suite, and which header announces it."""

    session_id: bytes
    ciphersuite: str
    announce_as_dtls12: bool
    mtu: int


@attrs.frozen
class DtlsOffer:
    port: int
    dpd: int
    keepalive: int
    rekey_time: int  # the CSTP rekey time; the DTLS header carries +10 (§5.3 #28)
    rekey_method: str  # "ssl" | "new-tunnel" | "none"
    mode: PskDtls | LegacyDtls | None  # None: DTLS announced without a suite (client gives up)


@attrs.frozen
class TunnelOffer:
    """Everything the 200 CONNECTED reply says, already decided by the server."""

    server_name: str
    dpd: int
    keepalive: int
    base_mtu: int
    mtu: int
    hostname: str | None = None
    default_domains: tuple[str, ...] = ()
    ipv4_address: ipaddress.IPv4Address | None = None
    ipv4_network: IPv4Net | None = None
    ipv6_address: ipaddress.IPv6Address | None = None
    ipv6_prefix: int = 128
    full_ipv6: bool = False
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    nbns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    split_dns: tuple[str, ...] = ()
    routes: tuple[IPNet, ...] = ()  # empty, or containing a default route: full tunnel
    no_routes: tuple[IPNet, ...] = ()
    tunnel_all_dns: bool = False
    client_bypass_protocol: bool = False
    idle_timeout: int = 0
    dyndns: bool = False
    rekey_time: int = 0
    rekey_method: str = "ssl"
    proxy_pac_url: str | None = None
    session_timeout: int = 0
    session_timeout_remaining: int = 0
    custom_headers: tuple[str, ...] = ()
    dtls: DtlsOffer | None = None
    banner: str | None = None
    dtls_content_encoding: str | None = None
    cstp_content_encoding: str | None = None


def _is_default(route: IPNet) -> bool:
    return route.prefixlen == 0


def _route_value(route: IPNet) -> str:
    if isinstance(route, IPv4Net):
        return f"{route.network_address}/{route.netmask}"
    return f"{route.network_address}/{route.prefixlen}"


def _route_headers(kind: str, routes: Sequence[IPNet], full_ipv6: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, IPv4Net):
            out.append((f"X-CSTP-Split-{kind}", _route_value(route)))
        elif full_ipv6:
            out.append((f"X-CSTP-Split-{kind}-IP6", _route_value(route)))
    return out


def _check_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name}: header value contains a line break")
    return value


def connect_response_headers(offer: TunnelOffer) -> list[tuple[str, str]]:
    """The reply's headers in ocserv's order (§5.3 catalogue)."""
    h: list[tuple[str, str]] = [
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Server-Name", offer.server_name),
    ]
    if offer.hostname:
        h.append(("X-CSTP-Hostname", offer.hostname))
    if offer.dpd > 0:
        h.append(("X-CSTP-DPD", str(offer.dpd)))
    if offer.default_domains:
        h.append(("X-CSTP-Default-Domain", " ".join(offer.default_domains)))
    if offer.ipv4_address is not None and offer.ipv4_network is not None:
        h.append(("X-CSTP-Address", str(offer.ipv4_address)))
        h.append(("X-CSTP-Netmask", str(offer.ipv4_network.netmask)))
    if offer.ipv6_address is not None:
        if offer.full_ipv6:
            h.append(("X-CSTP-Address-IP6", f"{offer.ipv6_address}/{offer.ipv6_prefix}"))
        else:
            h.append(("X-CSTP-Address", str(offer.ipv6_address)))
            h.append(("X-CSTP-Netmask", f"{offer.ipv6_address}/{offer.ipv6_prefix}"))
    h += [("X-CSTP-DNS", str(s)) for s in offer.dns if s.version == 4 or offer.full_ipv6]
    h += [("X-CSTP-NBNS", str(server)) for server in offer.nbns]
    h += [("X-CSTP-Split-DNS", domain) for domain in offer.split_dns]
    full_tunnel = not offer.routes or any(_is_default(r) for r in offer.routes)
    if not full_tunnel:
        h += _route_headers("Include", offer.routes, offer.full_ipv6)
    tunnel_all_dns = offer.tunnel_all_dns or any(_is_default(r) for r in offer.routes)
    h.append(("X-CSTP-Tunnel-All-DNS", "true" if tunnel_all_dns else "false"))
    h.append(("X-CSTP-Client-Bypass-Protocol", "true" if offer.client_bypass_protocol else "false"))
    h += _route_headers("Exclude", offer.no_routes, offer.full_ipv6)
    h.append(("X-CSTP-Keepalive", str(offer.keepalive)))
    h.append(("X-CSTP-Idle-Timeout", str(offer.idle_timeout) if offer.idle_timeout else "none"))
    h.append(("X-CSTP-Smartcard-Removal-Disconnect", "true"))
    if offer.dyndns:
        h.append(("X-CSTP-DynDNS", "true"))
    if offer.rekey_time > 0:
        h.append(("X-CSTP-Rekey-Time", str(offer.rekey_time)))
        h.append(("X-CSTP-Rekey-Method", offer.rekey_method))
    else:
        h.append(("X-CSTP-Rekey-Method", "none"))
    if offer.proxy_pac_url:
        h.append(("X-CSTP-MSIE-Proxy-Pac-URL", offer.proxy_pac_url))
    h.append(("X-CSTP-Session-Timeout", str(offer.session_timeout)))
    h.append(("X-CSTP-Session-Timeout-Remaining", str(offer.session_timeout_remaining)))
    h += [
        ("X-CSTP-Disconnected-Timeout", "none"),
        ("X-CSTP-Keep", "true"),
        ("X-CSTP-TCP-Keepalive", "true"),
        ("X-CSTP-License", "accept"),
    ]
    custom = [line.partition(":") for line in offer.custom_headers]
    h += [(name.strip(), value.strip()) for name, _, value in custom]
    if offer.dtls is not None:
        h += _dtls_headers(offer.dtls)
    h.append(("X-CSTP-Base-MTU", str(offer.base_mtu)))
    h.append(("X-CSTP-MTU", str(offer.mtu)))
    if offer.banner:
        h.append(("X-CSTP-Banner", offer.banner))
    if offer.dtls_content_encoding:
        h.append(("X-DTLS-Content-Encoding", offer.dtls_content_encoding))
    if offer.cstp_content_encoding:
        h.append(("X-CSTP-Content-Encoding", offer.cstp_content_encoding))
    return [(name, _check_value(name, value)) for name, value in h]


def _dtls_headers(dtls: DtlsOffer) -> list[tuple[str, str]]:
    h: list[tuple[str, str]] = []
    if dtls.dpd > 0:
        h.append(("X-DTLS-DPD", str(dtls.dpd)))
    h.append(("X-DTLS-Port", str(dtls.port)))
    if dtls.rekey_time > 0:
        h.append(("X-DTLS-Rekey-Time", str(dtls.rekey_time + 10)))
        if dtls.rekey_method == "ssl":
            h.append(("X-DTLS-Rekey-Method", "ssl"))
    h.append(("X-DTLS-Keepalive", str(dtls.keepalive)))
    if isinstance(dtls.mode, PskDtls):
        h.append(("X-DTLS-App-ID", dtls.mode.app_id.hex()))
        h.append(("X-DTLS-CipherSuite", "PSK-NEGOTIATE"))
    elif isinstance(dtls.mode, LegacyDtls):
        h.append(("X-DTLS-Session-ID", dtls.mode.session_id.hex()))
        name = "X-DTLS12-CipherSuite" if dtls.mode.announce_as_dtls12 else "X-DTLS-CipherSuite"
        h.append((name, dtls.mode.ciphersuite))
        h.append(("X-DTLS-MTU", str(dtls.mode.mtu)))
    return h


def encode_connect_response(offer: TunnelOffer) -> bytes:
    """`HTTP/1.1 200 CONNECTED`, the headers, the blank line; CSTP framing follows at once."""
    headers = connect_response_headers(offer)
    lines = ["HTTP/1.1 200 CONNECTED", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
