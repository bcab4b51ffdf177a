"""ICMP echo packets for tunnel tests: checksums, round trips, and refusal of bad input."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.testing import packets
from trio_ocserv.testing.packets import PacketError


def test_rfc1071_checksum_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, complement 220d.
    assert packets.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # An odd trailing byte is padded with zero.
    assert packets.internet_checksum(b"\x01") == packets.internet_checksum(b"\x01\x00")


def test_echo_request_layout_and_checksums() -> None:
    packet = packets.build_echo_request(
        "192.168.99.50", "192.168.99.1", identifier=0x1234, sequence=7, payload=b"abc", ip_id=9
    )
    assert len(packet) == 20 + 8 + 3
    version_ihl, _, total, ip_id, flags, ttl, proto = struct.unpack_from(">BBHHHBB", packet)
    assert (version_ihl, total, ip_id, flags, ttl, proto) == (0x45, 31, 9, 0x4000, 64, 1)
    assert packet[12:16] == ipaddress.IPv4Address("192.168.99.50").packed
    assert packet[16:20] == ipaddress.IPv4Address("192.168.99.1").packed
    # A correct checksum makes the one's-complement sum over the covered bytes zero.
    assert packets.internet_checksum(packet[:20]) == 0
    assert packets.internet_checksum(packet[20:]) == 0
    assert packet[20:22] == b"\x08\x00"


@settings(max_examples=100, deadline=None)
@given(
    identifier=st.integers(0, 0xFFFF),
    sequence=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=200),
)
def test_round_trip_and_reply(identifier: int, sequence: int, payload: bytes) -> None:
    request = packets.build_echo_request(
        "10.0.0.1", "10.0.0.2", identifier=identifier, sequence=sequence, payload=payload
    )
    parsed = packets.parse_icmp_echo(request)
    assert parsed.is_request and not parsed.is_reply
    assert (parsed.identifier, parsed.sequence, parsed.payload) == (identifier, sequence, payload)
    reply = packets.parse_icmp_echo(packets.reply_to(parsed))
    assert reply.is_reply
    assert (reply.source, reply.destination) == (parsed.destination, parsed.source)
    assert (reply.identifier, reply.sequence, reply.payload) == (identifier, sequence, payload)


def test_trailing_bytes_beyond_total_length_are_ignored() -> None:
    packet = packets.build_echo_reply("10.0.0.2", "10.0.0.1", identifier=1, sequence=2)
    assert packets.parse_icmp_echo(packet + b"\x00" * 4).sequence == 2


def _corrupt(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1 :]


def _rewrite_header(packet: bytes, offset: int, value: int) -> bytes:
    """Change one IPv4 header byte and fix the header checksum, so only that change is wrong."""
    header = bytearray(_corrupt(packet, offset, value)[:20])
    header[10:12] = b"\x00\x00"
    header[10:12] = struct.pack(">H", packets.internet_checksum(header))
    return bytes(header) + packet[20:]


GOOD = packets.build_echo_request("10.0.0.1", "10.0.0.2", identifier=1, sequence=1)


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (GOOD[:19], "shorter than an IPv4 header"),
        (_corrupt(GOOD, 0, 0x65), "version 6"),
        (_corrupt(GOOD, 8, 0x01), "header checksum"),  # TTL changed, checksum not
        (_corrupt(GOOD, 27, GOOD[27] ^ 0xFF), "ICMP checksum"),
        (GOOD[:-2], "exceeds"),
        (_rewrite_header(GOOD, 9, 17), "protocol 17 is not ICMP"),
        (_rewrite_header(GOOD, 6, 0x20), "fragmented"),  # more-fragments flag
        (_rewrite_header(GOOD, 0, 0x44), "bad IPv4 header"),  # IHL 4 < 5
        (_rewrite_header(_rewrite_header(GOOD, 2, 0), 3, 24), "shorter than an echo header"),
    ],
)
def test_bad_packets(packet: bytes, error: str) -> None:
    with pytest.raises(PacketError, match=error):
        packets.parse_icmp_echo(packet)


def test_out_of_range_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        packets.build_echo_request("10.0.0.1", "10.0.0.2", identifier=70000, sequence=1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_packet_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        parsed = packets.parse_icmp_echo(data)
        assert parsed.icmp_type in (packets.ICMP_ECHO_REQUEST, packets.ICMP_ECHO_REPLY)
