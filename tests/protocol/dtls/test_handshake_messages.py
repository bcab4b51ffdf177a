"""Handshake framing, reassembly and message parsers (all reachable by unauthenticated peers)."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.dtls.errors import DtlsDecodeError
from trio_ocserv.protocol.dtls.handshake_messages import (
    CLIENT_HELLO,
    ClientHello,
    HandshakeFragment,
    HandshakeReassembler,
    ServerHello,
    encode_handshake,
    parse_fragments,
    parse_psk_client_key_exchange,
)
from trio_ocserv.protocol.dtls.record import split_records

from .captures import dtls_sessions


def _captured_client_hello() -> bytes:
    (session,) = dtls_sessions("psk-default.pcap")
    return split_records(session.from_client()[0])[0].body


def test_captured_client_hello_parses_as_documented() -> None:
    (fragment,) = parse_fragments(_captured_client_hello())
    assert fragment.msg_type == CLIENT_HELLO and fragment.length == 143
    hello = ClientHello.parse(fragment.data)
    assert hello.client_version == 0xFEFD
    assert hello.cipher_suites == (0x00A9, 0xCCAB, 0xC0A5, 0x008D, 0x00A8, 0xC0A4, 0x008C, 0x00AE)
    assert [t for t, _ in hello.extensions] == [13, 35, 0xFF01, 28]
    assert hello.encode() == fragment.data  # lossless round trip
    assert encode_handshake(CLIENT_HELLO, 0, hello.encode()) == _captured_client_hello()


def test_reassembly_from_shuffled_overlapping_fragments() -> None:
    body = bytes(range(200))
    fragments = [
        HandshakeFragment(CLIENT_HELLO, len(body), 0, start, body[start : start + 30])
        for start in range(0, 200, 20)  # 30-byte pieces every 20 bytes: they overlap
    ]
    first = fragments.pop(0)
    random.Random(5).shuffle(fragments)
    reassembler = HandshakeReassembler()
    for fragment in fragments:
        reassembler.add(fragment)
    assert reassembler.pop_ready() is None  # bytes 0-19 are still missing
    reassembler.add(first)
    ready = reassembler.pop_ready()
    assert ready is not None and ready[0].body == body and ready[1] == 0
    assert reassembler.next_seq == 1


def test_reassembler_ignores_far_future_and_past_messages() -> None:
    reassembler = HandshakeReassembler()
    reassembler.add(HandshakeFragment(1, 1, 50, 0, b"x"))
    assert reassembler.pop_ready() is None
    reassembler.add(HandshakeFragment(1, 1, 1, 0, b"b"))
    reassembler.add(HandshakeFragment(1, 1, 0, 0, b"a"))
    first, second = reassembler.pop_ready(), reassembler.pop_ready()
    assert first is not None and second is not None
    assert (first[0].body, second[0].body) == (b"a", b"b")


def test_conflicting_fragments_are_a_decode_error() -> None:
    reassembler = HandshakeReassembler()
    reassembler.add(HandshakeFragment(1, 10, 0, 0, b"abc"))
    with pytest.raises(DtlsDecodeError):
        reassembler.add(HandshakeFragment(2, 10, 0, 3, b"def"))


def test_fragment_outside_its_message_is_rejected() -> None:
    bad = (
        bytes((1,))
        + (4).to_bytes(3, "big")
        + b"\x00\x00"
        + (3).to_bytes(3, "big")
        + (2).to_bytes(3, "big")
        + b"ab"
    )
    with pytest.raises(DtlsDecodeError):
        parse_fragments(bad)


def test_psk_client_key_exchange() -> None:
    assert parse_psk_client_key_exchange(b"\x00\x03psk") == b"psk"
    with pytest.raises(DtlsDecodeError):
        parse_psk_client_key_exchange(b"\x00\x05psk")


PARSERS = [parse_fragments, ClientHello.parse, ServerHello.parse, parse_psk_client_key_exchange]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__qualname__)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_parsers_raise_only_decode_error(parser: object, data: bytes) -> None:
    with contextlib.suppress(DtlsDecodeError):
        parser(data)  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 154), value=st.integers(0, 255), cut=st.integers(0, 155))
def test_mutated_client_hello_raises_only_decode_error(position: int, value: int, cut: int) -> None:
    body = bytearray(_captured_client_hello())
    body[position] = value
    with contextlib.suppress(DtlsDecodeError):
        for fragment in parse_fragments(bytes(body[:cut])):
            assert ClientHello.parse(fragment.data).random


@pytest.mark.parametrize(
    "extensions_block",
    [
        bytes.fromhex("0006001c00044000"),  # an extension longer than the block
        bytes.fromhex("0003001c00"),  # a block that ends inside an extension header
    ],
    ids=["body", "header"],
)
def test_truncated_extension_is_a_decode_error(extensions_block: bytes) -> None:
    hello = ClientHello(0xFEFD, bytes(32), b"", b"", (0x00A9,), b"\x00", ())
    with pytest.raises(DtlsDecodeError):
        ClientHello.parse(hello.encode() + extensions_block)


def test_extensions_round_trip_in_order() -> None:
    extensions = ((0xFF01, b"\x00"), (28, b"\x40\x00"), (35, b""))
    hello = ClientHello(0xFEFD, bytes(32), b"id", b"", (0x00A9, 0x00A8), b"\x00", extensions)
    assert ClientHello.parse(hello.encode()).extensions == extensions
