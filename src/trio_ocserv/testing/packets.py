"""IPv4 ICMP echo packets for tests: build requests/replies with correct checksums and parse them,
so a test can ping through a tunnel without a kernel tun device.

Pure functions over bytes. Only what a ping needs: a 20-byte IPv4 header (no options on the
packets we build; options are skipped when parsing) and an ICMP echo message.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

__all__ = [
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "IcmpEcho",
    "PacketError",
    "build_echo_reply",
    "build_echo_request",
    "internet_checksum",
    "parse_icmp_echo",
    "reply_to",
]

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
IPPROTO_ICMP = 1
_IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
_ICMP_ECHO_HEADER = struct.Struct(">BBHHH")
_DEFAULT_TTL = 64


class PacketError(ValueError):
    """The bytes are not a well-formed IPv4 ICMP echo packet."""


@attrs.frozen
class IcmpEcho:
    """An ICMP echo request or reply carried in IPv4."""

    source: ipaddress.IPv4Address
    destination: ipaddress.IPv4Address
    icmp_type: int
    identifier: int
    sequence: int
    payload: bytes
    ttl: int = _DEFAULT_TTL

    @property
    def is_request(self) -> bool:
        return self.icmp_type == ICMP_ECHO_REQUEST

    @property
    def is_reply(self) -> bool:
        return self.icmp_type == ICMP_ECHO_REPLY


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 one's-complement sum of 16-bit words (odd length padded with a zero byte)."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    total: int = sum(struct.unpack(f">{len(raw) // 2}H", raw))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _build(
    icmp_type: int,
    source: str | ipaddress.IPv4Address,
    destination: str | ipaddress.IPv4Address,
    identifier: int,
    sequence: int,
    payload: bytes,
    ttl: int,
    ip_id: int,
) -> bytes:
    src = ipaddress.IPv4Address(source)
    dst = ipaddress.IPv4Address(destination)
    if not (0 <= identifier <= 0xFFFF and 0 <= sequence <= 0xFFFF and 0 <= ip_id <= 0xFFFF):
        raise ValueError("identifier, sequence and ip_id are 16-bit values")
    icmp = _ICMP_ECHO_HEADER.pack(icmp_type, 0, 0, identifier, sequence) + payload
    icmp = icmp[:2] + struct.pack(">H", internet_checksum(icmp)) + icmp[4:]
    total_length = _IPV4_HEADER.size + len(icmp)
    if total_length > 0xFFFF:
        raise ValueError(f"packet of {total_length} bytes does not fit IPv4")
    header = _IPV4_HEADER.pack(
        0x45, 0, total_length, ip_id, 0x4000, ttl, IPPROTO_ICMP, 0, src.packed, dst.packed
    )
    header = header[:10] + struct.pack(">H", internet_checksum(header)) + header[12:]
    return header + icmp


def build_echo_request(
    source: str | ipaddress.IPv4Address,
    destination: str | ipaddress.IPv4Address,
    *,
    identifier: int,
    sequence: int,
    payload: bytes = b"trio-ocserv ping",
    ttl: int = _DEFAULT_TTL,
    ip_id: int = 0,
) -> bytes:
    """An IPv4 packet holding an ICMP echo request (DF set, as ping does)."""
    return _build(ICMP_ECHO_REQUEST, source, destination, identifier, sequence, payload, ttl, ip_id)


def build_echo_reply(
    source: str | ipaddress.IPv4Address,
    destination: str | ipaddress.IPv4Address,
    *,
    identifier: int,
    sequence: int,
    payload: bytes = b"",
    ttl: int = _DEFAULT_TTL,
    ip_id: int = 0,
) -> bytes:
    return _build(ICMP_ECHO_REPLY, source, destination, identifier, sequence, payload, ttl, ip_id)


def reply_to(request: IcmpEcho) -> bytes:
    """The echo reply a host would send for `request` (addresses swapped, payload echoed)."""
    return build_echo_reply(
        request.destination,
        request.source,
        identifier=request.identifier,
        sequence=request.sequence,
        payload=request.payload,
    )


def parse_icmp_echo(packet: bytes | bytearray | memoryview) -> IcmpEcho:
    """Parse an IPv4 ICMP echo request/reply; checksums are verified. Raises PacketError."""
    data = bytes(packet)
    if len(data) < _IPV4_HEADER.size:
        raise PacketError(f"{len(data)} bytes is shorter than an IPv4 header")
    (
        version_ihl,
        _tos,
        total_length,
        _ip_id,
        flags_fragment,
        ttl,
        protocol,
        _checksum,
        src,
        dst,
    ) = _IPV4_HEADER.unpack_from(data)
    if version_ihl >> 4 != 4:
        raise PacketError(f"IP version {version_ihl >> 4} is not 4")
    header_length = (version_ihl & 0x0F) * 4
    if header_length < _IPV4_HEADER.size or total_length < header_length:
        raise PacketError("bad IPv4 header or total length")
    if total_length > len(data):
        raise PacketError(f"IPv4 total length {total_length} exceeds the {len(data)} bytes given")
    if internet_checksum(data[:header_length]) != 0:
        raise PacketError("bad IPv4 header checksum")
    if protocol != IPPROTO_ICMP:
        raise PacketError(f"IP protocol {protocol} is not ICMP")
    if flags_fragment & 0x3FFF:
        raise PacketError("fragmented ICMP packets are not supported")
    icmp = data[header_length:total_length]
    if len(icmp) < _ICMP_ECHO_HEADER.size:
        raise PacketError("ICMP message shorter than an echo header")
    if internet_checksum(icmp) != 0:
        raise PacketError("bad ICMP checksum")
    icmp_type, code, _sum, identifier, sequence = _ICMP_ECHO_HEADER.unpack_from(icmp)
    if icmp_type not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) or code != 0:
        raise PacketError(f"ICMP type {icmp_type} code {code} is not an echo message")
    return IcmpEcho(
        source=ipaddress.IPv4Address(src),
        destination=ipaddress.IPv4Address(dst),
        icmp_type=icmp_type,
        identifier=identifier,
        sequence=sequence,
        payload=icmp[_ICMP_ECHO_HEADER.size :],
        ttl=ttl,
    )
