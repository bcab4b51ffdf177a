"""PROXY protocol v1/v2 header parsing (protocol.md §11): the spec's example, every family,
strict rejection, incremental feeding, and fuzzing that may only raise ProxyProtocolError.
The encoders below are written for these tests from the PROXY protocol layout."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.proxy import (
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    InetEndpoint,
    ProxyCommand,
    ProxyHeader,
    ProxyHeaderReader,
    ProxyProtocolError,
    UnixEndpoint,
)

CLIENT_HELLO_START = bytes.fromhex("160301")
# protocol.md §11 example: 203.0.113.9:40001 -> 198.18.0.1:443 (28 bytes).
SPEC_V2_EXAMPLE = bytes.fromhex(
    "0d0a0d0a000d0a515549540a 2111000c cb007109 c6120001 9c41 01bb".replace(" ", "")
)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def encode_v1(source: InetEndpoint, destination: InetEndpoint) -> bytes:
    protocol = "TCP4" if source.address.version == 4 else "TCP6"
    return (
        f"PROXY {protocol} {source.address} {destination.address} "
        f"{source.port} {destination.port}\r\n"
    ).encode("ascii")


def tlv(tlv_type: int, value: bytes) -> bytes:
    return bytes([tlv_type]) + len(value).to_bytes(2, "big") + value


def encode_v2(
    source: InetEndpoint | UnixEndpoint | None,
    destination: InetEndpoint | UnixEndpoint | None,
    *,
    command: int = 1,
    family: int | None = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    if isinstance(source, InetEndpoint) and isinstance(destination, InetEndpoint):
        body = (
            source.address.packed
            + destination.address.packed
            + source.port.to_bytes(2, "big")
            + destination.port.to_bytes(2, "big")
        )
        default_family = 0x11 if source.address.version == 4 else 0x21
    elif isinstance(source, UnixEndpoint) and isinstance(destination, UnixEndpoint):
        body = source.path.ljust(108, b"\x00") + destination.path.ljust(108, b"\x00")
        default_family = 0x31
    else:
        body = b""
        default_family = 0x00
    body += tlvs
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, default_family if family is None else family])
        + len(body).to_bytes(2, "big")
        + body
    )


def parse(data: bytes) -> ProxyHeader:
    header = ProxyHeaderReader().receive_data(data)
    assert header is not None
    return header


def test_spec_example_v2() -> None:
    header = parse(SPEC_V2_EXAMPLE + CLIENT_HELLO_START)
    assert header.version == 2
    assert header.command is ProxyCommand.PROXY
    assert header.source == InetEndpoint(ipaddress.IPv4Address("203.0.113.9"), 40001)
    assert header.destination == InetEndpoint(ipaddress.IPv4Address("198.18.0.1"), 443)
    assert header.trailing_data == CLIENT_HELLO_START


def test_v1_tcp4_and_tcp6() -> None:
    v4 = parse(b"PROXY TCP4 192.0.2.1 198.18.0.1 56324 443\r\n" + CLIENT_HELLO_START)
    assert v4.source == InetEndpoint(ipaddress.IPv4Address("192.0.2.1"), 56324)
    assert v4.destination == InetEndpoint(ipaddress.IPv4Address("198.18.0.1"), 443)
    assert v4.trailing_data == CLIENT_HELLO_START
    v6 = parse(b"PROXY TCP6 2001:db8::1 ::ffff:198.18.0.1 1 65535\r\n")
    assert v6.source == InetEndpoint(ipaddress.IPv6Address("2001:db8::1"), 1)
    assert v6.destination is not None
    assert v6.trailing_data == b""


def test_v1_longest_line_is_accepted() -> None:
    longest = (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    )
    assert len(longest) == 104
    assert parse(longest).version == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PROXY UNKNOWN\r\n", "UNKNOWN"),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "UNKNOWN"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r2\r\n", "CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "fields"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "fields"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "not TCP4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "valid TCP4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "valid TCP6"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "valid TCP4"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "above 65535"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "not a decimal"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "not a decimal"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a decimal"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "ASCII"),
        (b"PROXY " + b"x" * 101, "longer than 107"),
        (b"PROXZ TCP4", "does not start"),
        (b"\x16\x03\x01\x02\x00\x01", "does not start"),
    ],
)
def test_v1_strict_rejections(line: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        ProxyHeaderReader().receive_data(line)


def test_v2_tcp6_and_unix() -> None:
    source = InetEndpoint(ipaddress.IPv6Address("2001:db8::5"), 40000)
    destination = InetEndpoint(ipaddress.IPv6Address("2001:db8::1"), 443)
    header = parse(encode_v2(source, destination))
    assert (header.source, header.destination) == (source, destination)
    unix = parse(encode_v2(UnixEndpoint(b"/run/haproxy.sock"), UnixEndpoint(b"/run/ocserv")))
    assert unix.source == UnixEndpoint(b"/run/haproxy.sock")
    assert unix.destination == UnixEndpoint(b"/run/ocserv")


def test_v2_local_uses_socket_addresses() -> None:
    header = parse(encode_v2(None, None, command=0) + CLIENT_HELLO_START)
    assert header.command is ProxyCommand.LOCAL
    assert (header.source, header.destination) == (None, None)
    assert header.trailing_data == CLIENT_HELLO_START
    # LOCAL with addresses: they describe the proxy itself and are ignored.
    address = InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 1)
    assert parse(encode_v2(address, address, command=0)).source is None


def test_v2_unsupported_family_is_skipped() -> None:
    address = InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 53)
    header = parse(encode_v2(address, address, family=0x12) + b"rest")  # UDP over IPv4
    assert (header.source, header.destination) == (None, None)
    assert header.tlvs == ()
    assert header.trailing_data == b"rest"


def test_v2_tlvs_and_ssl_client_certificate() -> None:
    address = InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 1)
    ssl_value = bytes([0x01 | 0x04]) + (0).to_bytes(4, "big") + tlv(0x22, b"alice")
    header = parse(
        encode_v2(address, address, tlvs=tlv(0x04, b"\x00\x00") + tlv(PP2_TYPE_SSL, ssl_value))
    )
    assert [t.type for t in header.tlvs] == [0x04, PP2_TYPE_SSL]
    assert header.ssl_client_verified
    assert header.ssl_client_common_name == "alice"
    failed = bytes([0x01 | 0x04]) + (1).to_bytes(4, "big")
    unverified = parse(encode_v2(address, address, tlvs=tlv(PP2_TYPE_SSL, failed)))
    assert not unverified.ssl_client_verified
    assert unverified.ssl_client_common_name is None
    assert not parse(encode_v2(address, address)).ssl_client_verified


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (encode_v2(None, None, version=1), "version 1"),
        (encode_v2(None, None, command=2), "neither LOCAL nor PROXY"),
        (V2_SIGNATURE + b"\x21\x11\x02\x09", "above 520"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "too short"),
        (
            encode_v2(
                InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 1),
                InetEndpoint(ipaddress.IPv4Address("10.0.0.2"), 2),
                tlvs=b"\x04\x00\x05ab",
            ),
            "overruns",
        ),
        (
            encode_v2(
                InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 1),
                InetEndpoint(ipaddress.IPv4Address("10.0.0.2"), 2),
                tlvs=b"\x04\x00",
            ),
            "truncated",
        ),
        (
            encode_v2(
                InetEndpoint(ipaddress.IPv4Address("10.0.0.1"), 1),
                InetEndpoint(ipaddress.IPv4Address("10.0.0.2"), 2),
                tlvs=tlv(PP2_TYPE_SSL, b"\x05\x00"),
            ),
            "shorter than 5",
        ),
        (V2_SIGNATURE[:5] + b"X", "does not start"),
    ],
)
def test_v2_strict_rejections(header: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        ProxyHeaderReader().receive_data(header)


def test_byte_by_byte_feeding_and_needs_more_data() -> None:
    for whole in (SPEC_V2_EXAMPLE, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"):
        reader = ProxyHeaderReader()
        for byte in whole[:-1]:
            assert reader.receive_data(bytes([byte])) is None
        header = reader.receive_data(whole[-1:] + b"TLS")
        assert header is not None
        assert header.trailing_data == b"TLS"


def test_reader_stays_failed() -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyProtocolError):
        reader.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyProtocolError):
        reader.receive_data(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")


def feed_in_two(data: bytes, split: int) -> tuple[ProxyHeader, bytes]:
    """Feed `data` in two parts; return the header and every byte that followed it."""
    reader = ProxyHeaderReader()
    header = reader.receive_data(data[:split])
    if header is not None:
        return header, header.trailing_data + data[split:]
    header = reader.receive_data(data[split:])
    assert header is not None
    return header, header.trailing_data


addresses_v4 = st.ip_addresses(v=4)
addresses_v6 = st.ip_addresses(v=6)
ports = st.integers(0, 65535)


def endpoints(addresses: st.SearchStrategy[IPAddress]) -> st.SearchStrategy[InetEndpoint]:
    return st.builds(InetEndpoint, addresses, ports)


endpoint_pairs = st.tuples(endpoints(addresses_v4), endpoints(addresses_v4)) | st.tuples(
    endpoints(addresses_v6), endpoints(addresses_v6)
)


@settings(max_examples=150, deadline=None)
@given(pair=endpoint_pairs, trailing=st.binary(max_size=20), split=st.integers(0, 200))
def test_v1_round_trip(
    pair: tuple[InetEndpoint, InetEndpoint], trailing: bytes, split: int
) -> None:
    data = encode_v1(*pair) + trailing
    header, after = feed_in_two(data, split)
    assert (header.source, header.destination) == pair
    assert after == trailing


non_ssl_tlv_types = st.integers(0, 255).filter(lambda t: t != PP2_TYPE_SSL)


@settings(max_examples=150, deadline=None)
@given(
    pair=endpoint_pairs,
    tlvs=st.lists(st.tuples(non_ssl_tlv_types, st.binary(max_size=40)), max_size=4),
    trailing=st.binary(max_size=20),
    split=st.integers(0, 200),
)
def test_v2_round_trip(
    pair: tuple[InetEndpoint, InetEndpoint],
    tlvs: list[tuple[int, bytes]],
    trailing: bytes,
    split: int,
) -> None:
    data = encode_v2(*pair, tlvs=b"".join(tlv(t, v) for t, v in tlvs)) + trailing
    header, after = feed_in_two(data, split)
    assert (header.source, header.destination) == pair
    assert [(t.type, t.value) for t in header.tlvs] == tlvs
    assert after == trailing


prefixes = st.sampled_from(
    [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11"]
)


@settings(max_examples=400, deadline=None)
@given(prefix=prefixes, chunks=st.lists(st.binary(max_size=60), max_size=6))
def test_arbitrary_bytes_only_raise_proxy_protocol_error(
    prefix: bytes, chunks: list[bytes]
) -> None:
    reader = ProxyHeaderReader()
    try:
        for chunk in [prefix, *chunks]:
            if reader.receive_data(chunk) is not None:
                return
    except ProxyProtocolError:
        return
