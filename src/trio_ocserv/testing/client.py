"""A Python AnyConnect client on Trio, speaking to a server the way openconnect 9.01 does.

It is what our integration tests, users' tests and the load generator drive: TCP + TLS (our
pyOpenSSL `TlsStream`, so the `EXPORTER-openconnect-psk` value for DTLS is available), the XML
login (protocol.md 3), `CONNECT /CSCOSSLC/tunnel` (5), then CSTP packets over the same TLS
stream (6, 8). `CstpTunnel.start_dtls()` adds the DTLS data channel (7, `client_dtls.py`):
packets then travel over UDP while it is up and over CSTP otherwise, as openconnect does.

Layout: the sans-IO pieces come first (CONNECT request headers, the CONNECTED reply as a typed
`TunnelConfig`, Set-Cookie handling, the DPD/keepalive decision) and are unit-tested with bytes;
the Trio classes below them own sockets and clocks. A session keeps no threads, no tasks of its
own and no buffers beyond one partial CSTP frame, so a load generator can hold thousands.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import enum
import hashlib
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import attrs
import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.compress import ChannelCompressor, CompressionAlgorithm, ip_packet_from
from trio_ocserv.protocol.compress.errors import CompressionError
from trio_ocserv.protocol.cstp import CstpFrame, CstpPacketType
from trio_ocserv.protocol.dtls import DtlsLegacyClient, DtlsPskClient, HandshakeComplete
from trio_ocserv.protocol.dtls.mode import DTLS12_SUITES, LEGACY_SUITES
from trio_ocserv.server.tls import TlsStream
from trio_ocserv.testing import client_xml
from trio_ocserv.testing.client_dtls import DEFAULT_HANDSHAKE_TIMEOUT, DtlsChannel, DtlsChannelError
from trio_ocserv.testing.client_xml import AuthComplete, Credentials

__all__ = [
    "DEFAULT_DTLS12_CIPHERS",
    "DEFAULT_DTLS_CIPHERS",
    "DEFAULT_USER_AGENT",
    "PSK_EXPORTER_LABEL",
    "AnyConnectClient",
    "AuthResult",
    "AuthenticationFailed",
    "ClientError",
    "ConnectOptions",
    "ConnectRejected",
    "CstpStatistics",
    "CstpTunnel",
    "DeadPeer",
    "DtlsFailed",
    "DtlsParameters",
    "ServerCertificateError",
    "ServerDisconnected",
    "TimerAction",
    "TlsClientSettings",
    "TlsHandshakeError",
    "TunnelClosed",
    "TunnelConfig",
    "TunnelProtocolError",
    "auth_request_headers",
    "build_connect_headers",
    "cookies_from_set_cookie",
    "cstp_timer_action",
    "make_client_context",
    "parse_connect_response",
    "requested_mtu",
    "spki_pin_sha256",
    "vpn_session",
]

DEFAULT_USER_AGENT = "Open AnyConnect VPN Agent v9.01-3"
DEFAULT_DTLS_CIPHERS = (
    "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:"
    "DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
)
DEFAULT_DTLS12_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:"
    "AES128-GCM-SHA256:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
)
DEFAULT_ACCEPT_ENCODING = "oc-lz4,lzs"
PSK_EXPORTER_LABEL = b"EXPORTER-openconnect-psk"
TUNNEL_PATH = "/CSCOSSLC/tunnel"
# openconnect's worst-case DTLS overhead, subtracted from the base MTU for X-CSTP-MTU (5.1).
_OPENCONNECT_DTLS_OVERHEAD = 82
_MASTER_SECRET_LENGTH = 48
# A login that needs more round trips than this is looping (ocserv allows 3 password tries).
_MAX_AUTH_STEPS = 16
_HTTP_READ_SIZE = 16384
# Login documents are a few hundred bytes; a server sending megabytes is broken or hostile.
_MAX_HTTP_BODY = 1024 * 1024
# One CSTP frame at most; the TLS layer never hands back more than one record's worth anyway.
_CSTP_READ_SIZE = cstp.HEADER_LENGTH + cstp.DEFAULT_MAX_PAYLOAD_LENGTH


# -- errors ----------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of everything this client raises about the server or the session."""


class ServerCertificateError(ClientError):
    """The server's certificate did not match the pin, or failed CA/host name checks."""


class TlsHandshakeError(ClientError):
    """The TLS handshake failed (no common version/cipher, untrusted chain, refused cert)."""


class AuthenticationFailed(ClientError):
    """Login did not finish; `message` is the server's text (form message or HTTP reason)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(f"authentication failed: {message}")
        self.message = message
        self.status = status


class ConnectRejected(ClientError):
    """The CONNECT got something other than `200 CONNECTED` (e.g. 401 Cookie is not acceptable)."""

    def __init__(self, status: int, reason: str, x_reason: str | None = None) -> None:
        detail = f"{status} {reason}" + (f" ({x_reason})" if x_reason else "")
        super().__init__(f"CONNECT rejected: {detail}")
        self.status = status
        self.reason = reason
        self.x_reason = x_reason


class TunnelProtocolError(ClientError):
    """The server broke the protocol (bad CONNECT reply, bad CSTP frame, unknown packet type)."""


class TunnelClosed(ClientError):
    """The TLS connection ended unexpectedly (TCP loss, server crash, no DISCONNECT), or the
    tunnel was already closed by us."""


class ServerDisconnected(ClientError):
    """The server sent DISCONNECT (admin kick, shutdown, timeouts) or TERMINATE."""

    def __init__(self, reason: cstp.DisconnectReason | None, *, terminate: bool = False) -> None:
        what = "TERMINATE" if terminate else "DISCONNECT"
        text = f": {reason.text!r}" if reason is not None and reason.text else ""
        super().__init__(f"server sent {what}{text}")
        self.reason = reason
        self.terminate = terminate


class DtlsFailed(ClientError):
    """DTLS could not be set up (not offered, handshake refused or timed out); CSTP still works."""


class DeadPeer(ClientError):
    """Nothing was received for 2 x DPD seconds (openconnect: "detected dead peer")."""


# -- TLS settings ----------------------------------------------------------------------------


def spki_pin_sha256(cert: x509.Certificate) -> str:
    """`pin-sha256:<base64 SHA-256 of the SubjectPublicKeyInfo>`, openconnect's --servercert."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "pin-sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


@attrs.frozen
class TlsClientSettings:
    """How to trust the server and who we are.

    `pin_sha256` (with or without the `pin-sha256:` prefix) accepts exactly that key whatever
    signed it, like openconnect's `--servercert`; otherwise `ca_file` is the trust anchor and the
    certificate must name `server_hostname` (or the host we connect to). `insecure=True` skips
    all checks (load tests against throw-away servers only).
    """

    pin_sha256: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_hostname: str | None = None
    insecure: bool = False

    def __attrs_post_init__(self) -> None:
        if self.pin_sha256 is None and self.ca_file is None and not self.insecure:
            raise ValueError("give pin_sha256 or ca_file (or insecure=True) to trust the server")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")


def _keep_openssl_verdict(
    _conn: SSL.Connection, _cert: object, _errnum: int, _depth: int, ok: int
) -> bool:
    return bool(ok)


def make_client_context(settings: TlsClientSettings) -> SSL.Context:
    """A client `SSL.Context`; build it once and share it between sessions (it reads files)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    # Idle sessions give their record buffers back: about 18 KiB each, which matters for a load
    # generator holding thousands of tunnels.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.cert_file is not None and settings.key_file is not None:
        ctx.use_certificate_chain_file(settings.cert_file)
        ctx.use_privatekey_file(settings.key_file)
        ctx.check_privatekey()
    if settings.pin_sha256 is None and settings.ca_file is not None and not settings.insecure:
        ctx.load_verify_locations(settings.ca_file)
        ctx.set_verify(SSL.VERIFY_PEER, _keep_openssl_verdict)
    else:
        # The pin is checked after the handshake, against the certificate the server sent.
        ctx.set_verify(SSL.VERIFY_NONE, _keep_openssl_verdict)
    return ctx


def _normalised_pin(pin: str) -> str:
    return pin if pin.startswith("pin-sha256:") else "pin-sha256:" + pin


def _certificate_names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return address in san.get_values_for_type(x509.IPAddress)
    wanted = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        # A wildcard covers exactly one left-most label.
        if pattern.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def check_server_certificate(
    cert: x509.Certificate | None, settings: TlsClientSettings, host: str
) -> None:
    """Apply the pin or the host name check after the handshake (the CA chain was checked by
    OpenSSL during it). Raises ServerCertificateError."""
    if settings.insecure:
        return
    if cert is None:
        raise ServerCertificateError("the server sent no certificate")
    if settings.pin_sha256 is not None:
        got = spki_pin_sha256(cert)
        if got != _normalised_pin(settings.pin_sha256):
            raise ServerCertificateError(f"server key {got} does not match the pin")
        return
    name = settings.server_hostname or host
    if not _certificate_names_host(cert, name):
        raise ServerCertificateError(f"server certificate does not name {name!r}")


# -- HTTP pieces (sans-IO) -------------------------------------------------------------------


def host_header(host: str, port: int) -> str:
    """`Host:` as openconnect writes it: IPv6 literals bracketed, the port only if not 443."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 443 else f"{shown}:{port}"


def auth_request_headers(
    host: str,
    *,
    user_agent: str = DEFAULT_USER_AGENT,
    context_cookie: str | None = None,
    body_length: int,
) -> list[tuple[str, str]]:
    """Headers of an XML login POST, in openconnect's order (protocol.md 2.3; the STRAP keys
    and X-Pad are left out: ocserv ignores them)."""
    headers = [("Host", host), ("User-Agent", user_agent)]
    if context_cookie:
        headers.append(("Cookie", f"webvpncontext={context_cookie}"))
    headers += [
        ("Accept", "*/*"),
        ("Accept-Encoding", "identity"),
        ("X-Transcend-Version", "1"),
        ("X-Aggregate-Auth", "1"),
        ("X-Support-HTTP-Auth", "true"),
        ("Content-Type", "application/xml; charset=utf-8"),
        ("Content-Length", str(body_length)),
    ]
    return headers


def cookies_from_set_cookie(values: Iterable[str]) -> dict[str, str | None]:
    """name -> value from `Set-Cookie` values; None for a cookie the server clears (empty value
    or an expiry in 1970, protocol.md 3.9). Later headers win, as in a browser."""
    cookies: dict[str, str | None] = {}
    for header in values:
        pair, _, attributes = header.partition(";")
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        value = value.strip()
        cleared = not value or "expires=thu, 01 jan 1970" in attributes.lower()
        cookies[name.strip()] = None if cleared else value
    return cookies


@attrs.frozen
class ConnectOptions:
    """What to put in the CONNECT request (protocol.md 5.1); defaults are openconnect's.

    `dtls=False` leaves every X-DTLS header out (`--no-dtls`). `accept_encoding=None` is
    `--compression=off`. `address_type="IPv4"` with `full_ipv6=False` is `--disable-ipv6`.
    `previous_addresses` are repeated on a reconnect, as openconnect does.
    """

    hostname: str | None = None  # X-CSTP-Hostname; None: this machine's host name
    base_mtu: int = 1500
    mtu: int | None = None  # None: base - 82 - 8 - (20 | 40) like openconnect
    address_type: str = "IPv6,IPv4"
    full_ipv6: bool = True
    previous_addresses: tuple[str, ...] = ()
    dtls: bool = True
    dtls_ciphers: str | None = DEFAULT_DTLS_CIPHERS
    dtls12_ciphers: str | None = DEFAULT_DTLS12_CIPHERS
    accept_encoding: str | None = DEFAULT_ACCEPT_ENCODING
    dtls_accept_encoding: str | None = DEFAULT_ACCEPT_ENCODING
    extra_headers: tuple[tuple[str, str], ...] = ()


def requested_mtu(base_mtu: int, *, ipv6_outer: bool = False) -> int:
    """openconnect's X-CSTP-MTU for a base MTU: base - 82 (DTLS) - 8 (UDP) - IP header."""
    return base_mtu - _OPENCONNECT_DTLS_OVERHEAD - 8 - (40 if ipv6_outer else 20)


def build_connect_headers(
    options: ConnectOptions,
    *,
    host: str,
    cookie: str,
    hostname: str,
    master_secret: bytes,
    user_agent: str = DEFAULT_USER_AGENT,
    ipv6_outer: bool = False,
) -> list[tuple[str, str]]:
    """The CONNECT request headers in openconnect 9.01's order (protocol.md 5.1, A.9).

    `hostname` fills X-CSTP-Hostname when the options name none; `master_secret` (48 random
    bytes) is sent as X-DTLS-Master-Secret, which also tells the server we want DTLS.
    """
    if options.dtls and len(master_secret) != _MASTER_SECRET_LENGTH:
        raise ValueError(f"DTLS master secret must be {_MASTER_SECRET_LENGTH} bytes")
    mtu = (
        options.mtu
        if options.mtu is not None
        else requested_mtu(options.base_mtu, ipv6_outer=ipv6_outer)
    )
    headers = [
        ("Host", host),
        ("User-Agent", user_agent),
        ("Cookie", f"webvpn={cookie}"),
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Hostname", options.hostname or hostname),
    ]
    if options.accept_encoding is not None:
        headers.append(("X-CSTP-Accept-Encoding", options.accept_encoding))
    headers += [
        ("X-CSTP-Base-MTU", str(options.base_mtu)),
        ("X-CSTP-MTU", str(mtu)),
        ("X-CSTP-Address-Type", options.address_type),
    ]
    headers += [("X-CSTP-Address", address) for address in options.previous_addresses]
    if options.full_ipv6:
        headers.append(("X-CSTP-Full-IPv6-Capability", "true"))
    if options.dtls:
        headers.append(("X-DTLS-Master-Secret", master_secret.hex().upper()))
        if options.dtls_ciphers is not None:
            headers.append(("X-DTLS-CipherSuite", options.dtls_ciphers))
        if options.dtls12_ciphers is not None:
            headers.append(("X-DTLS12-CipherSuite", options.dtls12_ciphers))
        if options.dtls_accept_encoding is not None and options.accept_encoding is not None:
            headers.append(("X-DTLS-Accept-Encoding", options.dtls_accept_encoding))
    headers += list(options.extra_headers)
    return headers


# -- the CONNECTED reply ---------------------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class DtlsParameters:
    """What the server offered for the DTLS channel (protocol.md 5.3 rows 26-35)."""

    port: int
    cipher_suite: str
    app_id: str | None  # PSK-NEGOTIATE mode: hex, identifies the session in the ClientHello
    session_id: str | None  # legacy mode: 64 hex digits
    dtls12: bool  # the suite came in X-DTLS12-CipherSuite (Cisco "DTLS 1.2")
    mtu: int | None
    dpd: int
    keepalive: int
    rekey_time: int
    rekey_method: str | None
    encoding: CompressionAlgorithm | None

    @property
    def psk_negotiate(self) -> bool:
        return self.cipher_suite == "PSK-NEGOTIATE"


@attrs.frozen
class TunnelConfig:
    """The `200 CONNECTED` reply as typed values; `headers` keeps every X-CSTP/X-DTLS line."""

    address: ipaddress.IPv4Address | None
    netmask: ipaddress.IPv4Address | None
    address_ipv6: ipaddress.IPv6Interface | None
    mtu: int
    base_mtu: int | None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    nbns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    default_domain: str | None
    split_dns: tuple[str, ...]
    split_include: tuple[IPNetwork, ...]
    split_exclude: tuple[IPNetwork, ...]
    tunnel_all_dns: bool
    dpd: int
    keepalive: int
    idle_timeout: int
    rekey_time: int
    rekey_method: str | None
    session_timeout: int
    server_name: str | None
    hostname: str | None
    banner: str | None
    encoding: CompressionAlgorithm | None
    dtls: DtlsParameters | None
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)

    @property
    def ipv4_network(self) -> ipaddress.IPv4Network | None:
        if self.address is None or self.netmask is None:
            return None
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)


def _seconds(value: str | None) -> int:
    # openconnect reads these as integers; `none` (and anything unparsable) is 0 (5.4).
    if value is None:
        return 0
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return 0


def _network(value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise TunnelProtocolError(f"bad route {value!r}") from None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise TunnelProtocolError(f"bad address {value!r}") from None


def _encoding(value: str | None, header: str) -> CompressionAlgorithm | None:
    if value is None:
        return None
    try:
        return CompressionAlgorithm(value.strip().lower())
    except ValueError:
        # openconnect aborts on any encoding it does not know (5.4); we have no deflate either.
        raise TunnelProtocolError(f"unknown {header}: {value!r}") from None


def parse_connect_response(headers: Iterable[tuple[str, str]]) -> TunnelConfig:
    """Turn the headers of a `200 CONNECTED` reply into a `TunnelConfig`.

    Like openconnect, only X-CSTP-*/X-DTLS-* headers matter, an MTU and at least one address
    are required, and an unknown Content-Encoding is fatal. Raises TunnelProtocolError.
    """
    kept: list[tuple[str, str]] = []
    multi: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if not name.startswith(("x-cstp-", "x-dtls-", "x-dtls12-")):
            continue
        value = raw_value.strip()
        kept.append((raw_name, value))
        multi.setdefault(name, []).append(value)

    def one(name: str) -> str | None:
        values = multi.get(name)
        return values[-1] if values else None

    address: ipaddress.IPv4Address | None = None
    netmask: ipaddress.IPv4Address | None = None
    address_ipv6: ipaddress.IPv6Interface | None = None
    # Old-style IPv6 (no Full-IPv6-Capability): X-CSTP-Address + X-CSTP-Netmask "addr/len" (5.3 8b).
    for value in multi.get("x-cstp-address", []):
        parsed = _ip(value)
        if isinstance(parsed, ipaddress.IPv4Address):
            address = parsed
    for value in multi.get("x-cstp-netmask", []):
        if "/" in value:
            try:
                address_ipv6 = ipaddress.IPv6Interface(value)
            except ValueError:
                raise TunnelProtocolError(f"bad IPv6 netmask {value!r}") from None
        else:
            mask = _ip(value)
            if isinstance(mask, ipaddress.IPv4Address):
                netmask = mask
    if (full := one("x-cstp-address-ip6")) is not None:
        try:
            address_ipv6 = ipaddress.IPv6Interface(full)
        except ValueError:
            raise TunnelProtocolError(f"bad X-CSTP-Address-IP6 {full!r}") from None
    if address is None and address_ipv6 is None:
        raise TunnelProtocolError("no IP address received")

    cstp_mtu = _seconds(one("x-cstp-mtu"))
    dtls_mtu = _seconds(one("x-dtls-mtu"))
    mtu = max(cstp_mtu, dtls_mtu)
    if mtu == 0:
        raise TunnelProtocolError("no MTU received")

    dns = tuple(_ip(v) for v in multi.get("x-cstp-dns", []) + multi.get("x-cstp-dns-ip6", []))
    includes = multi.get("x-cstp-split-include", []) + multi.get("x-cstp-split-include-ip6", [])
    excludes = multi.get("x-cstp-split-exclude", []) + multi.get("x-cstp-split-exclude-ip6", [])
    base_mtu = one("x-cstp-base-mtu")
    return TunnelConfig(
        address=address,
        netmask=netmask,
        address_ipv6=address_ipv6,
        mtu=mtu,
        base_mtu=_seconds(base_mtu) if base_mtu is not None else None,
        dns=dns,
        nbns=tuple(_ip(v) for v in multi.get("x-cstp-nbns", [])),
        default_domain=one("x-cstp-default-domain"),
        split_dns=tuple(multi.get("x-cstp-split-dns", [])),
        split_include=tuple(_network(v) for v in includes),
        split_exclude=tuple(_network(v) for v in excludes),
        tunnel_all_dns=(one("x-cstp-tunnel-all-dns") or "").lower() == "true",
        dpd=_seconds(one("x-cstp-dpd")),
        keepalive=_seconds(one("x-cstp-keepalive")),
        idle_timeout=_seconds(one("x-cstp-idle-timeout")),
        rekey_time=_seconds(one("x-cstp-rekey-time")),
        rekey_method=one("x-cstp-rekey-method"),
        session_timeout=_session_timeout(
            one("x-cstp-session-timeout"), one("x-cstp-session-timeout-remaining")
        ),
        server_name=one("x-cstp-server-name"),
        hostname=one("x-cstp-hostname"),
        banner=one("x-cstp-banner"),
        encoding=_encoding(one("x-cstp-content-encoding"), "X-CSTP-Content-Encoding"),
        dtls=_dtls_parameters(one, dtls_mtu),
        headers=tuple(kept),
    )


def _session_timeout(total: str | None, remaining: str | None) -> int:
    # openconnect uses the smallest non-zero of the two (5.3 row 23).
    values = [v for v in (_seconds(total), _seconds(remaining)) if v]
    return min(values) if values else 0


def _dtls_parameters(one: Callable[[str], str | None], dtls_mtu: int) -> DtlsParameters | None:
    port = _seconds(one("x-dtls-port"))
    app_id = one("x-dtls-app-id")
    session_id = one("x-dtls-session-id")
    suite12 = one("x-dtls12-ciphersuite")
    suite = one("x-dtls-ciphersuite") or suite12
    # openconnect's conditions for trying DTLS at all (5.4).
    if app_id is not None and not (
        0 < len(app_id) <= 64 and len(app_id) % 2 == 0 and _is_hex(app_id)
    ):
        app_id = None
    if session_id is not None and not (len(session_id) == 64 and _is_hex(session_id)):
        session_id = None
    if port == 0 or suite is None or (app_id is None and session_id is None):
        return None
    return DtlsParameters(
        port=port,
        cipher_suite=suite,
        app_id=app_id,
        session_id=session_id,
        dtls12=one("x-dtls-ciphersuite") is None and suite12 is not None,
        mtu=dtls_mtu or None,
        dpd=_seconds(one("x-dtls-dpd")),
        keepalive=_seconds(one("x-dtls-keepalive")),
        rekey_time=_seconds(one("x-dtls-rekey-time")),
        rekey_method=one("x-dtls-rekey-method"),
        encoding=_encoding(one("x-dtls-content-encoding"), "X-DTLS-Content-Encoding"),
    )


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


# -- CSTP timers (sans-IO) -------------------------------------------------------------------


class TimerAction(enum.Enum):
    NOTHING = "nothing"
    SEND_DPD = "send-dpd"
    SEND_KEEPALIVE = "send-keepalive"
    DEAD_PEER = "dead-peer"


def cstp_timer_action(
    now: float,
    *,
    last_received: float,
    last_sent: float,
    last_dpd_sent: float | None,
    dpd: int,
    keepalive: int,
) -> TimerAction:
    """openconnect's per-channel rule (protocol.md 8.1): dead after 2 x DPD of silence; a DPD
    request after DPD seconds of silence, repeated every DPD/2; a keepalive when nothing was
    sent for `keepalive` seconds. Zero disables a timer."""
    if dpd > 0:
        silent = now - last_received
        if silent >= 2 * dpd:
            return TimerAction.DEAD_PEER
        if silent >= dpd and (
            last_dpd_sent is None or last_dpd_sent < last_received or now - last_dpd_sent >= dpd / 2
        ):
            return TimerAction.SEND_DPD
    if keepalive > 0 and now - last_sent >= keepalive:
        return TimerAction.SEND_KEEPALIVE
    return TimerAction.NOTHING


def next_timer_deadline(
    *,
    last_received: float,
    last_sent: float,
    last_dpd_sent: float | None,
    dpd: int,
    keepalive: int,
) -> float | None:
    """When `cstp_timer_action` could next return something other than NOTHING."""
    candidates: list[float] = []
    if dpd > 0:
        if last_dpd_sent is None or last_dpd_sent < last_received:
            candidates.append(last_received + dpd)
        else:
            # A DPD went out (perhaps sent by hand before the silence reached dpd): repeat it
            # dpd/2 later, but never before dpd seconds of silence.
            candidates.append(max(last_received + dpd, last_dpd_sent + dpd / 2))
        candidates.append(last_received + 2 * dpd)
    if keepalive > 0:
        candidates.append(last_sent + keepalive)
    return min(candidates) if candidates else None


# -- Trio: HTTP over TLS ---------------------------------------------------------------------


@attrs.frozen
class HttpReply:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]


def _reply_from(response: h11.Response, body: bytes) -> HttpReply:
    return HttpReply(
        status=response.status_code,
        reason=response.reason.decode("latin-1"),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        body=body,
    )


class _HttpChannel:
    """One TLS connection carrying HTTP/1.1 requests (h11 client side) until CONNECT."""

    __slots__ = ("_h11", "stream")

    def __init__(self, stream: TlsStream) -> None:
        self.stream = stream
        self._h11: h11.Connection | None = h11.Connection(h11.CLIENT)

    @property
    def reusable(self) -> bool:
        return self._h11 is not None and self._h11.our_state is h11.IDLE

    async def _receive_into_h11(self, conn: h11.Connection, *, have_response: bool) -> None:
        try:
            data = await self.stream.receive_some(_HTTP_READ_SIZE)
        except trio.BrokenResourceError:
            # ocserv ends a rejection with a fatal alert rather than close_notify (2.2).
            data = b""
        if not data and not have_response:
            # Not a protocol error: the server dropped us (overload, EMFILE, a crash).
            self._h11 = None
            raise TunnelClosed("server closed the connection without a reply")
        conn.receive_data(data)

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b""
    ) -> tuple[HttpReply, bytes]:
        """Send one request and read the whole reply; for a successful CONNECT also return the
        bytes that followed the reply (the first CSTP frames)."""
        conn = self._h11
        if conn is None or not self.reusable:
            raise TunnelClosed("HTTP connection is not reusable")
        try:
            out = conn.send(h11.Request(method=method, target=target, headers=list(headers)))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await self.stream.send_all(out)
            response: h11.Response | None = None
            chunks: list[bytes] = []
            received = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    await self._receive_into_h11(conn, have_response=response is not None)
                elif isinstance(event, h11.Response):
                    response = event
                    if conn.our_state is h11.SWITCHED_PROTOCOL:
                        trailing, _closed = conn.trailing_data
                        self._h11 = None  # the stream now carries CSTP
                        return _reply_from(response, b""), bytes(trailing)
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                    received += len(event.data)
                    if received > _MAX_HTTP_BODY:
                        self._h11 = None
                        raise TunnelProtocolError(f"HTTP body exceeds {_MAX_HTTP_BODY} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or (
                    event is h11.PAUSED
                ):
                    break
        except h11.RemoteProtocolError as exc:
            self._h11 = None
            raise TunnelProtocolError(f"bad HTTP from server: {exc}") from None
        except h11.LocalProtocolError as exc:
            self._h11 = None
            raise ValueError(f"cannot send this HTTP request: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._h11 = None
            raise TunnelClosed(f"connection lost during {method} {target}: {exc}") from None
        if response is None:
            self._h11 = None
            raise TunnelClosed("server closed the connection without a reply")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self._h11 = None
        return _reply_from(response, b"".join(chunks)), b""


# -- Trio: the client ------------------------------------------------------------------------


@attrs.frozen
class AuthResult:
    """A finished login: the `webvpn` cookie for CONNECT and what the success page said."""

    cookie: str = attrs.field(repr=False)
    banner: str | None
    complete: AuthComplete


class AnyConnectClient:
    """One user's client: log in, CONNECT, then use the returned `CstpTunnel`.

    ```
    client = AnyConnectClient("198.18.0.1", 443, TlsClientSettings(pin_sha256=pin))
    auth = await client.authenticate(Credentials("bob", ["bob-pass"]))
    tunnel = await client.connect_tunnel(auth.cookie)
    await tunnel.send_packet(packet); reply = await tunnel.receive_packet()
    await tunnel.disconnect()
    ```
    Pass one `context=make_client_context(...)` to many clients to share it (load tests).
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: TlsClientSettings,
        *,
        context: SSL.Context | None = None,
        path: str = "/",
        user_agent: str = DEFAULT_USER_AGENT,
        version: str = client_xml.DEFAULT_VERSION,
        device_id: str = client_xml.DEFAULT_DEVICE_ID,
        connect_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self._context = context if context is not None else make_client_context(tls)
        self.path = path
        self.user_agent = user_agent
        self.version = version
        self.device_id = device_id
        self.connect_timeout = connect_timeout
        self._channel: _HttpChannel | None = None
        self._context_cookie: str | None = None

    @property
    def host_header(self) -> str:
        return host_header(self.host, self.port)

    @property
    def url(self) -> str:
        return f"https://{self.host_header}{self.path}"

    async def open_tls(self) -> TlsStream:
        """A new TCP + TLS connection with the server certificate checked."""
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            try:
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                sni = self.tls.server_hostname or self.host
                try:
                    ipaddress.ip_address(sni)
                    sni_name: str | None = None  # no SNI for IP literals, as openconnect
                except ValueError:
                    sni_name = sni
                stream = TlsStream(tcp, self._context, server_side=False, server_hostname=sni_name)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    # Includes a chain that does not verify against ca_file.
                    raise TlsHandshakeError(str(exc)) from None
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
        try:
            check_server_certificate(stream.peer_certificate(), self.tls, self.host)
        except ServerCertificateError:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _channel_for_request(self) -> _HttpChannel:
        if self._channel is None or not self._channel.reusable:
            await self.aclose()
            self._channel = _HttpChannel(await self.open_tls())
        return self._channel

    async def _request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> tuple[HttpReply, bytes, _HttpChannel]:
        channel = await self._channel_for_request()
        try:
            reply, trailing = await channel.request(method, target, headers, body)
        except BaseException:
            await self.aclose()
            raise
        return reply, trailing, channel

    async def _post_xml(self, target: str, body: bytes) -> HttpReply:
        headers = auth_request_headers(
            self.host_header,
            user_agent=self.user_agent,
            context_cookie=self._context_cookie,
            body_length=len(body),
        )
        reply, _, _ = await self._request("POST", target, headers, body)
        cookies = cookies_from_set_cookie(reply.header_values("set-cookie"))
        if "webvpncontext" in cookies:
            self._context_cookie = cookies["webvpncontext"]
        return reply

    async def authenticate(self, credentials: Credentials) -> AuthResult:
        """Run the XML login (protocol.md 3.6) to the `complete` document.

        Raises AuthenticationFailed with the server's words: the HTTP reason of a 401, or the
        form's message when it asks for something `credentials` cannot answer (e.g. the
        "Login failed." password form after a wrong password and no further secret).
        """
        self._context_cookie = None
        target = self.path
        body = client_xml.build_init(self.url, version=self.version, device_id=self.device_id)
        secrets_used = 0
        regrouped = False
        for _ in range(_MAX_AUTH_STEPS):
            reply = await self._post_xml(target, body)
            if reply.status != 200:
                raise AuthenticationFailed(reply.reason or str(reply.status), reply.status)
            try:
                document = client_xml.parse_auth_document(reply.body)
            except client_xml.AuthDocumentError as exc:
                raise TunnelProtocolError(str(exc)) from None
            if isinstance(document, AuthComplete):
                cookies = cookies_from_set_cookie(reply.header_values("set-cookie"))
                cookie = cookies.get("webvpn") or document.session_token
                if not cookie:
                    raise AuthenticationFailed("success page without a webvpn cookie", 200)
                return AuthResult(cookie=cookie, banner=document.banner, complete=document)
            if document.error:
                raise AuthenticationFailed(document.error, reply.status)
            target = document.action
            if not regrouped and client_xml.needs_group_reinit(document, credentials.group):
                regrouped = True
                body = client_xml.build_init(
                    f"https://{self.host_header}{target}",
                    group_select=credentials.group,
                    version=self.version,
                    device_id=self.device_id,
                )
                continue
            try:
                answers = client_xml.answer_form(document, credentials, secrets_used)
            except client_xml.UnanswerableForm as exc:
                raise AuthenticationFailed(exc.message or exc.reason, reply.status) from None
            secrets_used = answers.secrets_used
            body = client_xml.build_auth_reply(
                answers, version=self.version, device_id=self.device_id
            )
        raise AuthenticationFailed(f"login did not finish in {_MAX_AUTH_STEPS} steps")

    async def connect_tunnel(
        self, cookie: str, options: ConnectOptions | None = None
    ) -> CstpTunnel:
        """CONNECT with the cookie (on the login connection if it is still open, as openconnect
        does) and return the running CSTP tunnel. Raises ConnectRejected on a non-200 reply."""
        options = options or ConnectOptions()
        channel = await self._channel_for_request()
        peer = channel.stream.transport_stream
        ipv6_outer = False
        if isinstance(peer, trio.SocketStream):
            ipv6_outer = peer.socket.family == socket.AF_INET6
        master_secret = secrets.token_bytes(_MASTER_SECRET_LENGTH)
        headers = build_connect_headers(
            options,
            host=self.host_header,
            cookie=cookie,
            hostname=socket.gethostname(),
            master_secret=master_secret,
            user_agent=self.user_agent,
            ipv6_outer=ipv6_outer,
        )
        reply, trailing, channel = await self._request("CONNECT", TUNNEL_PATH, headers)
        if reply.status != 200:
            await self.aclose()
            x_reason = next(iter(reply.header_values("x-reason")), None)
            raise ConnectRejected(reply.status, reply.reason, x_reason)
        self._channel = None  # the stream belongs to the tunnel now
        try:
            config = parse_connect_response(reply.headers)
        except TunnelProtocolError:
            await trio.aclose_forcefully(channel.stream)
            raise
        return CstpTunnel(
            channel.stream,
            config,
            trailing,
            dtls_master_secret=master_secret if options.dtls else b"",
        )

    async def logout(self) -> HttpReply:
        """`GET /logout`, as Cisco clients do. ocserv 1.1.6 answers but invalidates nothing
        (protocol.md 4.3); the real logout is `CstpTunnel.disconnect()` (BYE 0xB0)."""
        headers = [
            ("Host", self.host_header),
            ("User-Agent", self.user_agent),
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),
            ("X-Transcend-Version", "1"),
            ("Content-Length", "0"),
        ]
        if self._context_cookie:
            headers.insert(2, ("Cookie", f"webvpncontext={self._context_cookie}"))
        reply, _, _ = await self._request("GET", "/logout", headers)
        return reply

    async def aclose(self) -> None:
        """Close the login connection, if one is open (a running tunnel is not affected)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await trio.aclose_forcefully(channel.stream)

    async def __aenter__(self) -> AnyConnectClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def vpn_session(
    host: str,
    port: int,
    tls: TlsClientSettings,
    credentials: Credentials,
    options: ConnectOptions | None = None,
    *,
    context: SSL.Context | None = None,
    start_dtls: bool = False,
) -> AsyncIterator[CstpTunnel]:
    """Log in, CONNECT, yield the tunnel, and send BYE on the way out: one test's VPN session.
    `start_dtls=True` also sets up DTLS (DtlsFailed if the server offered none or it fails).

    ```
    async with vpn_session("127.0.0.1", port, tls, Credentials("bob", ["pw"])) as tunnel:
        await tunnel.send_packet(packet)
    ```
    """
    async with AnyConnectClient(host, port, tls, context=context) as vpn:
        auth = await vpn.authenticate(credentials)
        tunnel = await vpn.connect_tunnel(auth.cookie, options)
    try:
        if start_dtls:
            await tunnel.start_dtls()
        yield tunnel
    finally:
        with trio.CancelScope(shield=True):
            await tunnel.disconnect()


# -- Trio: the CSTP tunnel -------------------------------------------------------------------


@attrs.frozen
class CstpStatistics:
    """Counters of one tunnel (IP packets, and how many of them travelled compressed)."""

    packets_sent: int
    compressed_sent: int
    packets_received: int
    compressed_received: int
    dpd_responses: int
    dtls_packets_sent: int = 0
    dtls_packets_received: int = 0


class CstpTunnel:
    """The data path: CSTP over the TLS stream that carried the CONNECT, plus DTLS once
    `start_dtls()` succeeded.

    One task may receive while another sends. `receive_packet()` answers DPD requests itself
    (CSTP and DTLS), ignores keepalives and DPD responses, and turns DISCONNECT/TERMINATE into
    `ServerDisconnected` (after sending openconnect's "Server request" BYE). While DTLS is up,
    `send_packet()` uses it and `receive_packet()` listens on both channels; a DTLS error drops
    back to CSTP. `run_timers()` is optional: run it in a nursery beside a receiving task to get
    openconnect's CSTP DPD/keepalive.
    """

    __slots__ = (
        "_closed",
        "_compressor",
        "_decoder",
        "_dtls",
        "_dtls_compressor",
        "_last_dpd_sent",
        "_last_received",
        "_last_sent",
        "_master_secret",
        "_pending",
        "_send_lock",
        "_stats",
        "compress_outgoing",
        "config",
        "stream",
    )

    def __init__(
        self,
        stream: TlsStream,
        config: TunnelConfig,
        initial_data: bytes = b"",
        *,
        compress_outgoing: bool = True,
        dtls_master_secret: bytes = b"",
    ) -> None:
        self.stream = stream
        self.config = config
        self.compress_outgoing = compress_outgoing
        self._master_secret = dtls_master_secret
        self._dtls: DtlsChannel | None = None
        self._dtls_compressor: ChannelCompressor | None = None
        # Packets one channel delivered while receive_packet() was returning the other's.
        self._pending: collections.deque[bytes] | None = None
        self._decoder = cstp.CstpDecoder()
        if initial_data:
            self._decoder.receive_data(initial_data)
        self._compressor = (
            ChannelCompressor(config.encoding) if config.encoding is not None else None
        )
        self._send_lock = trio.Lock()
        self._closed = False
        now = trio.current_time()
        self._last_received = now
        self._last_sent = now
        self._last_dpd_sent: float | None = None
        # packets sent, compressed sent, packets received, compressed received, DPD responses,
        # DTLS packets sent, DTLS packets received
        self._stats = [0, 0, 0, 0, 0, 0, 0]

    def statistics(self) -> CstpStatistics:
        return CstpStatistics(*self._stats)

    def export_psk(self) -> bytes:
        """The 32-byte DTLS PSK of this connection (protocol.md 7.3.1)."""
        return self.stream.export_keying_material(PSK_EXPORTER_LABEL, 32, None)

    async def _send_frame(self, frame: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise TunnelClosed("tunnel is closed")
        async with self._send_lock:
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TunnelClosed(f"sending failed: {exc}") from None
            self._last_sent = trio.current_time()

    # -- DTLS ------------------------------------------------------------------------------

    @property
    def dtls_active(self) -> bool:
        return self._dtls is not None and not self._dtls.closed

    @property
    def dtls_handshake(self) -> HandshakeComplete | None:
        """Suite, version and mode of the running DTLS channel, None while there is none."""
        return self._dtls.handshake if self._dtls is not None else None

    def _dtls_engine(self) -> DtlsPskClient | DtlsLegacyClient:
        offer = self.config.dtls
        if offer is None:
            raise DtlsFailed("the server offered no DTLS")
        if offer.psk_negotiate and offer.app_id is not None:
            return DtlsPskClient(self.export_psk(), bytes.fromhex(offer.app_id))
        if offer.session_id is None or not self._master_secret:
            raise DtlsFailed("legacy DTLS needs the session id and our X-DTLS-Master-Secret")
        table = DTLS12_SUITES if offer.dtls12 else LEGACY_SUITES
        code = next((row.suite_code for row in table if row.name == offer.cipher_suite), None)
        if code is None:
            raise DtlsFailed(f"unknown DTLS cipher suite {offer.cipher_suite!r}")
        return DtlsLegacyClient(self._master_secret, bytes.fromhex(offer.session_id), code)

    async def start_dtls(
        self, *, handshake_seconds: float = DEFAULT_HANDSHAKE_TIMEOUT
    ) -> HandshakeComplete:
        """Run the DTLS handshake to the server's X-DTLS-Port (PSK-NEGOTIATE with our TLS
        exporter, or the legacy resumption with our master secret). Raises DtlsFailed."""
        if self._closed:
            raise TunnelClosed("tunnel is closed")
        self.stop_dtls()
        engine = self._dtls_engine()
        offer = self.config.dtls
        assert offer is not None
        transport = self.stream.transport_stream
        if not isinstance(transport, trio.SocketStream):
            raise DtlsFailed("DTLS needs the tunnel to run over a socket")
        host = transport.socket.getpeername()[0]
        try:
            channel = await DtlsChannel.open(
                (host, offer.port), engine, handshake_seconds=handshake_seconds
            )
        except DtlsChannelError as exc:
            raise DtlsFailed(str(exc)) from None
        self._dtls = channel
        self._dtls_compressor = (
            ChannelCompressor(offer.encoding) if offer.encoding is not None else None
        )
        return channel.handshake

    def stop_dtls(self) -> None:
        """Close the DTLS channel (close_notify); packets go over CSTP again."""
        channel, self._dtls = self._dtls, None
        if channel is not None:
            channel.close()

    async def send_dtls_dpd(self, size: int = 0) -> None:
        """A DTLS DPD request (an MTU probe with `size` bytes of padding)."""
        if self._dtls is None:
            raise DtlsFailed("DTLS is not running")
        try:
            await self._dtls.send_dpd(size)
        except DtlsChannelError as exc:
            self._dtls = None
            raise DtlsFailed(str(exc)) from None

    # -- packets -----------------------------------------------------------------------------

    async def send_packet(self, packet: bytes | bytearray | memoryview) -> None:
        """Send one IP packet (COMPRESSED when negotiated and worth it, else DATA), over DTLS
        while it is up, else over CSTP."""
        dtls = self._dtls
        if dtls is not None and not self._closed:
            if self._dtls_compressor is not None and self.compress_outgoing:
                message = self._dtls_compressor.dtls_message(packet)
            else:
                message = cstp.encode_dtls_message(CstpPacketType.DATA, packet)
            try:
                await dtls.send_message(message)
            except DtlsChannelError:
                self._dtls = None  # openconnect: "Falling back to SSL"
            else:
                self._stats[0] += 1
                self._stats[1] += message[0] == CstpPacketType.COMPRESSED
                self._stats[5] += 1
                return
        if self._compressor is not None and self.compress_outgoing:
            frame = self._compressor.cstp_frame(packet)
        else:
            frame = cstp.encode_frame(CstpPacketType.DATA, packet)
        await self._send_frame(frame)
        self._stats[0] += 1
        self._stats[1] += frame[6] == CstpPacketType.COMPRESSED

    async def send_dpd(self) -> None:
        self._last_dpd_sent = trio.current_time()
        await self._send_frame(cstp.encode_frame(CstpPacketType.DPD_REQUEST))

    async def send_keepalive(self) -> None:
        await self._send_frame(cstp.encode_frame(CstpPacketType.KEEPALIVE))

    async def _next_frame(self) -> CstpFrame:
        while True:
            try:
                frame = self._decoder.next_frame()
            except cstp.CstpProtocolError as exc:
                await self.aclose()
                raise TunnelProtocolError(str(exc)) from None
            if frame is not None:
                self._last_received = trio.current_time()
                return frame
            if self._closed:
                raise TunnelClosed("tunnel is closed")
            try:
                data = await self.stream.receive_some(_CSTP_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.aclose()
                raise TunnelClosed(f"TLS stream failed: {exc}") from None
            if not data:
                await self.aclose()
                raise TunnelClosed("server closed the TLS stream")
            self._decoder.receive_data(data)

    async def receive_packet(self) -> bytes:
        """The next IP packet from the server (CSTP or DTLS), handling control frames on the
        way."""
        if self._pending:
            return self._pending.popleft()
        if self._dtls is None:
            return await self._receive_cstp_packet()
        received: collections.deque[bytes] = collections.deque()
        failure: list[ClientError] = []
        async with trio.open_nursery() as nursery:

            async def from_cstp() -> None:
                try:
                    received.append(await self._receive_cstp_packet())
                except ClientError as exc:
                    failure.append(exc)
                nursery.cancel_scope.cancel()

            async def from_dtls() -> None:
                try:
                    received.append(await self._receive_dtls_packet())
                except ClientError as exc:
                    failure.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(from_cstp)
            nursery.start_soon(from_dtls)
        if received:
            packet = received.popleft()
            if received:
                self._pending = self._pending or collections.deque()
                self._pending.extend(received)
            return packet
        raise failure[0]

    async def _receive_dtls_packet(self) -> bytes:
        """The next IP packet over DTLS; if DTLS fails, wait on CSTP only (by sleeping: the
        CSTP branch of receive_packet() is still running)."""
        dtls = self._dtls
        assert dtls is not None
        try:
            frame = await dtls.receive_frame()
        except DtlsChannelError:
            self._dtls = None
            await trio.sleep_forever()
            raise AssertionError("unreachable") from None
        if frame.packet_type == CstpPacketType.DISCONNECT:
            reason = cstp.parse_disconnect(frame.payload)
            with trio.CancelScope(shield=True):
                await self.disconnect("Server request")
            raise ServerDisconnected(reason)
        try:
            packet = ip_packet_from(frame, self._dtls_compressor)
        except CompressionError as exc:
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise TunnelProtocolError(f"bad compressed DTLS packet: {exc}") from None
        self._stats[2] += 1
        self._stats[3] += frame.packet_type == CstpPacketType.COMPRESSED
        self._stats[6] += 1
        return packet

    async def _receive_cstp_packet(self) -> bytes:
        while True:
            frame = await self._next_frame()
            kind = frame.packet_type
            if kind in (CstpPacketType.DATA, CstpPacketType.COMPRESSED):
                try:
                    packet = ip_packet_from(frame, self._compressor)
                except CompressionError as exc:
                    await self.aclose()
                    raise TunnelProtocolError(f"bad compressed packet: {exc}") from None
                self._stats[2] += 1
                self._stats[3] += kind == CstpPacketType.COMPRESSED
                return packet
            if kind == CstpPacketType.DPD_REQUEST:
                # Shielded: cancelling a TLS write half-way would break the stream.
                with trio.CancelScope(shield=True):
                    await self._send_frame(cstp.dpd_response_for(frame))
            elif kind == CstpPacketType.DPD_RESPONSE:
                self._stats[4] += 1
            elif kind == CstpPacketType.KEEPALIVE:
                continue
            elif kind == CstpPacketType.DISCONNECT:
                reason = cstp.parse_disconnect(frame.payload)
                await self.disconnect("Server request")
                raise ServerDisconnected(reason)
            elif kind == CstpPacketType.TERMINATE:
                await self.aclose()
                raise ServerDisconnected(None, terminate=True)
            else:
                # openconnect quits on any packet type it does not know (6).
                await self.aclose()
                raise TunnelProtocolError(f"unknown CSTP packet type {kind:#04x}")

    async def run_timers(self) -> None:
        """DPD and keepalive per protocol.md 8.1 until cancelled; raises DeadPeer."""
        while not self._closed:
            now = trio.current_time()
            action = cstp_timer_action(
                now,
                last_received=self._last_received,
                last_sent=self._last_sent,
                last_dpd_sent=self._last_dpd_sent,
                dpd=self.config.dpd,
                keepalive=self.config.keepalive,
            )
            if action is TimerAction.DEAD_PEER:
                await self.aclose()
                raise DeadPeer(f"nothing received for {2 * self.config.dpd} s")
            if action is TimerAction.SEND_DPD:
                await self.send_dpd()
                continue
            if action is TimerAction.SEND_KEEPALIVE:
                await self.send_keepalive()
                continue
            deadline = next_timer_deadline(
                last_received=self._last_received,
                last_sent=self._last_sent,
                last_dpd_sent=self._last_dpd_sent,
                dpd=self.config.dpd,
                keepalive=self.config.keepalive,
            )
            if deadline is None:
                await trio.sleep_forever()  # both timers are off for this tunnel
            else:
                # Re-check at least every second: sends and receives move the deadlines.
                await trio.sleep_until(min(deadline, now + 1.0))

    async def disconnect(self, reason: str = "Aborted by caller") -> None:
        """Send openconnect's BYE (DISCONNECT, 0xB0 + reason) and close. A server treats this as
        a logout and invalidates the cookie (protocol.md 4.3)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.move_on_after(5):
                await self._send_frame(cstp.encode_disconnect(reason))
        except TunnelClosed:
            pass
        await self.aclose()

    async def aclose(self) -> None:
        """Close without BYE (openconnect on SIGHUP): the cookie stays usable for a reconnect."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self.stop_dtls()
        # close_notify goes out if the peer is still reading; a dead one cannot hold us up.
        with trio.move_on_after(2) as scope:
            await self.stream.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self.stream)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> CstpTunnel:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.disconnect()
