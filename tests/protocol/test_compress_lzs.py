"""LZS codec (protocol.md §9.4): bit layouts from the spec, exact encoder output for the
length-code examples, cross-checks against the team's independent reference codec, real IP
packets from the captures, and hostile input that may only raise CompressionError."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.compress import CompressionError, lzs

DATA = Path(__file__).parent / "data"
LIMIT = 16384


def load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_lzs", DATA / "reference_lzs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_reference()


def captured_ip_packets() -> list[bytes]:
    lines = (DATA / "ip_packets_captured.txt").read_text().splitlines()
    return [bytes.fromhex(line.split()[2]) for line in lines if not line.startswith("#")]


def bit_string(*groups: str) -> bytes:
    """Bytes from spec-style bit groups ("0 01000001", ...), zero-padded to a byte."""
    bits = "".join("".join(groups).split())
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


END_MARKER = "11 0000000"
END_MARKER_AS_WRITTEN = "11 0000000 0000000"  # marker + 7 zero bits, as openconnect writes it
# Length codes as listed in §9.4, including its examples for 8, 22, 23 and 38.
LENGTH_CODES = {
    2: "00",
    3: "01",
    4: "10",
    5: "1100",
    6: "1101",
    7: "1110",
    8: "1111 0000",
    22: "1111 1110",
    23: "1111 1111 0000",
    38: "1111 1111 1111 0000",
}


def test_literal_only_stream() -> None:
    stream = bit_string("0 01000001", "0 01000010", END_MARKER)
    assert lzs.decompress(stream, LIMIT) == b"AB"


def test_short_offset_match_with_overlap() -> None:
    # 'a', then a match 1 back of length 5: the copy overlaps itself byte by byte.
    stream = bit_string("0 01100001", "11 0000001", LENGTH_CODES[5], END_MARKER)
    assert lzs.decompress(stream, LIMIT) == b"a" * 6


def test_long_offset_match() -> None:
    literals = bytes(range(200))
    stream = bit_string(
        *(f"0 {byte:08b}" for byte in literals), "10 00011001000", LENGTH_CODES[4], END_MARKER
    )  # offset 200 = 0b00011001000
    assert lzs.decompress(stream, LIMIT) == literals + literals[:4]


@pytest.mark.parametrize("length", sorted(LENGTH_CODES))
def test_encoder_emits_spec_length_codes(length: int) -> None:
    # Greedy parse of a run: one literal, then one match of the rest at offset 1.
    expected = bit_string("0 01100001", "11 0000001", LENGTH_CODES[length], END_MARKER_AS_WRITTEN)
    assert lzs.compress(b"a" * (1 + length)) == expected
    assert lzs.decompress(expected, LIMIT) == b"a" * (1 + length)


def test_empty_packet_is_just_the_end_marker() -> None:
    assert lzs.compress(b"") == bit_string(END_MARKER_AS_WRITTEN)
    assert lzs.decompress(bit_string(END_MARKER), LIMIT) == b""


def test_bits_after_the_end_marker_are_ignored() -> None:
    assert lzs.decompress(bit_string("0 01000001", END_MARKER) + b"\xff\xff", LIMIT) == b"A"


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"", "end marker"),
        (bit_string("0 01000001"), "end marker"),  # no end marker
        (bit_string("11 0000001", "00", END_MARKER), "before the packet start"),
        (bit_string("0 01000001", "11 0000010", "00", END_MARKER), "before the packet start"),
        (bit_string("0 01000001", "10 00000000000", "00", END_MARKER), "offset 0"),
        # 48 bits: three literals, a match, "1111 1111 1111" and no final nibble.
        (bit_string(*["0 01000001"] * 3, "11 0000001", "1111 1111 1111"), "length code"),
        # 24 bits: the long match's 4-bit length code "11.." runs past the end.
        (bit_string("0 01000001", "10 00000000001", "11"), "inside a match"),
    ],
)
def test_corrupt_streams_raise_compression_error(stream: bytes, message: str) -> None:
    with pytest.raises(CompressionError, match=message):
        lzs.decompress(stream, LIMIT)


def test_output_limit_is_enforced_for_matches_and_literals() -> None:
    run = bit_string("0 01100001", "11 0000001", "1111 " + "1111 " * 200 + "0000", END_MARKER)
    with pytest.raises(CompressionError, match="exceeds 1500"):
        lzs.decompress(run, 1500)
    literals = bit_string(*["0 01100001"] * 20, END_MARKER)
    with pytest.raises(CompressionError, match="exceeds 19"):
        lzs.decompress(literals, 19)
    assert lzs.decompress(literals, 20) == b"a" * 20


def test_exactly_the_limit_is_allowed() -> None:
    packet = b"a" * 1500
    assert lzs.decompress(lzs.compress(packet), 1500) == packet


@pytest.mark.parametrize("packet", captured_ip_packets(), ids=lambda p: f"{len(p)}B")
def test_captured_ip_packets_cross_check_with_reference(packet: bytes) -> None:
    ours = lzs.compress(packet)
    assert reference.lzs_decompress(ours) == packet
    assert lzs.decompress(reference.lzs_compress(packet), LIMIT) == packet


def test_compresses_typical_packets() -> None:
    # A ping payload (incrementing bytes repeated) must shrink, or LZS is pointless.
    packet = captured_ip_packets()[2]
    padded = packet + packet[20:] * 10
    assert len(lzs.compress(padded)) < len(padded) // 2


def test_matches_reach_back_the_full_window() -> None:
    block = os.urandom(2047)
    packet = block + block[:100]
    compressed = lzs.compress(packet)
    assert len(compressed) < len(lzs.compress(block)) + 10
    assert lzs.decompress(compressed, LIMIT) == packet


packets = st.one_of(
    st.binary(max_size=1600),
    st.lists(st.sampled_from([b"\x00", b"ab", b"abc", b"\x45\x00", b"xyzzy"]), max_size=400).map(
        b"".join
    ),
)


@settings(max_examples=150, deadline=None)
@given(packet=packets)
def test_round_trip_and_cross_check(packet: bytes) -> None:
    ours = lzs.compress(packet)
    assert lzs.decompress(ours, LIMIT) == packet
    assert reference.lzs_decompress(ours) == packet
    assert lzs.decompress(reference.lzs_compress(packet), LIMIT) == packet


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), limit=st.integers(1, 3000))
def test_random_input_only_raises_compression_error(data: bytes, limit: int) -> None:
    try:
        out = lzs.decompress(data, limit)
    except CompressionError:
        return
    assert len(out) <= limit


@settings(max_examples=200, deadline=None)
@given(packet=st.binary(min_size=1, max_size=300), flip=st.integers(0, 10_000))
def test_bit_flips_only_raise_compression_error(packet: bytes, flip: int) -> None:
    compressed = bytearray(lzs.compress(packet))
    bit = flip % (len(compressed) * 8)
    compressed[bit // 8] ^= 0x80 >> (bit % 8)
    try:
        out = lzs.decompress(bytes(compressed), 1500)
    except CompressionError:
        return
    assert len(out) <= 1500


def test_compress_smaller_gives_up_on_incompressible_data() -> None:
    assert lzs.compress_smaller(os.urandom(1400)) is None
    assert lzs.compress_smaller(b"") is None  # the end marker alone is 2 bytes


@settings(max_examples=100, deadline=None)
@given(packet=packets)
def test_compress_smaller_is_smaller_or_none(packet: bytes) -> None:
    compressed = lzs.compress_smaller(packet)
    if compressed is None:
        # It gave up: either the full encoding is not smaller, or the probe saw no saving.
        full = lzs.compress(packet)
        assert len(full) >= len(packet) or len(packet) > lzs.GIVE_UP_PROBE_LENGTH
    else:
        assert len(compressed) < len(packet)
        assert compressed == lzs.compress(packet)
