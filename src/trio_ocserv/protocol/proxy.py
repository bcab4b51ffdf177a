"""PROXY protocol v1 (text) and v2 (binary) headers before the TLS ClientHello (protocol.md §11).

`ProxyHeaderReader` is an incremental parser: feed it the first bytes of a TCP connection; it
returns None while it needs more, then a `ProxyHeader` with the client's real addresses and the
bytes that followed the header (the start of the TLS handshake). Anything that is not a valid
header raises `ProxyProtocolError`, and the connection must be dropped (ocserv discards
connections without a header when `listen-proxy-proto = true`). The read timeout is the
caller's. TLS details in v2 TLVs are exposed, but only a listener whose proxy terminates TLS
(ocserv: the UNIX socket listener) may trust them.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the longest valid v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
V2_MAX_BODY_LENGTH = 520  # what ocserv accepts after the 16-byte header

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_INET_STREAM = 0x11
_V2_INET6_STREAM = 0x21
_V2_UNIX_STREAM = 0x31
_V2_ADDRESS_LENGTHS = {_V2_INET_STREAM: 12, _V2_INET6_STREAM: 36, _V2_UNIX_STREAM: 216}

PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_CN = 0x22
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY header; drop it."""


class ProxyCommand(enum.Enum):
    PROXY = "proxy"  # relayed connection: the addresses are the client's
    LOCAL = "local"  # the proxy's own connection (health check): use the socket addresses


@attrs.frozen(slots=True)
class InetEndpoint:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int


@attrs.frozen(slots=True)
class UnixEndpoint:
    path: bytes


Endpoint = InetEndpoint | UnixEndpoint


@attrs.frozen(slots=True)
class ProxyTlv:
    type: int
    value: bytes


@attrs.frozen(slots=True)
class ProxyHeader:
    """A parsed header. `source`/`destination` are None when the header carries no usable
    addresses (LOCAL, or an unsupported family such as UDP): use the socket's own then."""

    version: int
    command: ProxyCommand
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: tuple[ProxyTlv, ...]
    trailing_data: bytes  # bytes after the header: the start of the TLS handshake

    def tlv(self, tlv_type: int) -> ProxyTlv | None:
        return next((t for t in self.tlvs if t.type == tlv_type), None)

    @property
    def ssl_client_verified(self) -> bool:
        """The proxy terminated TLS and the client sent a certificate that verified
        (PP2_TYPE_SSL with SSL and CERT_SESS flags and verify == 0)."""
        ssl = self.tlv(PP2_TYPE_SSL)
        if ssl is None:
            return False
        flags = ssl.value[0]
        verify = int.from_bytes(ssl.value[1:5], "big")
        wanted = PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS
        return flags & wanted == wanted and verify == 0

    @property
    def ssl_client_common_name(self) -> str | None:
        """The client certificate's CN from PP2_SUBTYPE_SSL_CN, inside PP2_TYPE_SSL where the
        PROXY spec puts it, or at top level."""
        ssl = self.tlv(PP2_TYPE_SSL)
        candidates = list(_parse_tlvs(ssl.value[5:])) if ssl is not None else []
        candidates.extend(self.tlvs)
        for tlv in candidates:
            if tlv.type == PP2_SUBTYPE_SSL_CN:
                return tlv.value.decode("utf-8", errors="replace")
        return None


class ProxyHeaderReader:
    """Incremental parser for one connection's PROXY header (v1 or v2)."""

    __slots__ = ("_buffer", "_error", "_result")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._result: ProxyHeader | None = None
        self._error: ProxyProtocolError | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        """Add bytes; return the header once complete, None while more bytes are needed."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            raise RuntimeError("the PROXY header is already complete")
        self._buffer += data
        try:
            self._result = self._parse()
        except ProxyProtocolError as exc:
            self._error = exc
            raise
        return self._result

    def _parse(self) -> ProxyHeader | None:
        buffer = bytes(self._buffer)
        if not buffer:
            return None
        # The first byte tells the versions apart ('P' or CR); the rest of the magic must follow.
        if V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
            return _parse_v1(buffer) if len(buffer) >= len(V1_PREFIX) else None
        if V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
            return _parse_v2(buffer)
        raise ProxyProtocolError("connection does not start with a PROXY protocol header")


def _parse_v1(buffer: bytes) -> ProxyHeader | None:
    end = buffer.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(buffer) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        if b"\r" in buffer[:-1]:
            raise ProxyProtocolError("PROXY v1 line has a CR that is not followed by LF")
        return None
    if end == 0 or buffer[end - 1] != 0x0D:
        raise ProxyProtocolError("PROXY v1 line ends with LF without CR")
    line = buffer[: end - 1]
    if b"\r" in line:
        raise ProxyProtocolError("PROXY v1 line has a CR that is not followed by LF")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # ocserv drops these too: without the client address, banning and accounting break.
        raise ProxyProtocolError("PROXY v1 UNKNOWN is not accepted")
    if len(fields) != 6:
        raise ProxyProtocolError(f"PROXY v1 line has {len(fields)} fields, not 6: {text!r}")
    _, protocol, source_text, destination_text, source_port, destination_port = fields
    version: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    if protocol == "TCP4":
        version = ipaddress.IPv4Address
    elif protocol == "TCP6":
        version = ipaddress.IPv6Address
    else:
        raise ProxyProtocolError(f"PROXY v1 protocol {protocol!r} is not TCP4 or TCP6")
    if "%" in source_text or "%" in destination_text:
        raise ProxyProtocolError("PROXY v1 address has a scope id")
    try:
        source_address = version(source_text)
        destination_address = version(destination_text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address is not a valid {protocol} address") from None
    return ProxyHeader(
        version=1,
        command=ProxyCommand.PROXY,
        source=InetEndpoint(source_address, _parse_v1_port(source_port)),
        destination=InetEndpoint(destination_address, _parse_v1_port(destination_port)),
        tlvs=(),
        trailing_data=buffer[end + 1 :],
    )


def _parse_v1_port(text: str) -> int:
    leading_zero = len(text) > 1 and text[0] == "0"
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or leading_zero:
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a decimal port number")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 port {port} is above 65535")
    return port


def _parse_v2(buffer: bytes) -> ProxyHeader | None:
    if len(buffer) < V2_HEADER_LENGTH:
        return None
    version_command = buffer[12]
    family_transport = buffer[13]
    body_length = int.from_bytes(buffer[14:16], "big")
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version_command >> 4}")
    command_code = version_command & 0x0F
    if command_code == _V2_COMMAND_LOCAL:
        command = ProxyCommand.LOCAL
    elif command_code == _V2_COMMAND_PROXY:
        command = ProxyCommand.PROXY
    else:
        raise ProxyProtocolError(f"PROXY v2 command {command_code} is neither LOCAL nor PROXY")
    if body_length > V2_MAX_BODY_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 length {body_length} is above {V2_MAX_BODY_LENGTH}")
    end = V2_HEADER_LENGTH + body_length
    if len(buffer) < end:
        return None
    body = buffer[V2_HEADER_LENGTH:end]
    address_length = _V2_ADDRESS_LENGTHS.get(family_transport)
    source: Endpoint | None = None
    destination: Endpoint | None = None
    tlv_bytes = b""
    if address_length is not None:
        if body_length < address_length:
            raise ProxyProtocolError(
                f"PROXY v2 length {body_length} is too short for family {family_transport:#04x}"
            )
        if command is ProxyCommand.PROXY:
            source, destination = _v2_endpoints(family_transport, body)
        tlv_bytes = body[address_length:]
    # Other families (UNSPEC, UDP, UNIX datagram) carry nothing we can use: the socket's
    # addresses stand, and their address bytes cannot be told apart from TLVs, so skip all.
    return ProxyHeader(
        version=2,
        command=command,
        source=source,
        destination=destination,
        tlvs=tuple(_parse_tlvs(tlv_bytes)),
        trailing_data=buffer[end:],
    )


def _v2_endpoints(family_transport: int, body: bytes) -> tuple[Endpoint, Endpoint]:
    if family_transport == _V2_INET_STREAM:
        return (
            InetEndpoint(ipaddress.IPv4Address(body[0:4]), int.from_bytes(body[8:10], "big")),
            InetEndpoint(ipaddress.IPv4Address(body[4:8]), int.from_bytes(body[10:12], "big")),
        )
    if family_transport == _V2_INET6_STREAM:
        return (
            InetEndpoint(ipaddress.IPv6Address(body[0:16]), int.from_bytes(body[32:34], "big")),
            InetEndpoint(ipaddress.IPv6Address(body[16:32]), int.from_bytes(body[34:36], "big")),
        )
    return (
        UnixEndpoint(body[0:108].split(b"\x00", 1)[0]),
        UnixEndpoint(body[108:216].split(b"\x00", 1)[0]),
    )


def _parse_tlvs(data: bytes) -> list[ProxyTlv]:
    tlvs: list[ProxyTlv] = []
    position = 0
    while position < len(data):
        if position + 3 > len(data):
            raise ProxyProtocolError("PROXY v2 TLV header is truncated")
        tlv_type = data[position]
        length = int.from_bytes(data[position + 1 : position + 3], "big")
        value = data[position + 3 : position + 3 + length]
        if len(value) != length:
            raise ProxyProtocolError(f"PROXY v2 TLV {tlv_type:#04x} overruns the header")
        if tlv_type == PP2_TYPE_SSL:
            if length < 5:
                raise ProxyProtocolError("PROXY v2 SSL TLV is shorter than 5 bytes")
            _parse_tlvs(value[5:])  # its sub-TLVs must be well formed too
        tlvs.append(ProxyTlv(tlv_type, value))
        position += 3 + length
    return tlvs
