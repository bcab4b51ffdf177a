"""oc-lz4 (protocol.md §9.3): LZ4-compressed packets from the captures (openconnect and ocserv),
the bare-block framing, the output bound, and hostile input."""

from __future__ import annotations

import struct
from pathlib import Path

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.compress import CompressionError, oc_lz4

DATA = Path(__file__).parent / "data"


def captured() -> list[tuple[str, int, bytes]]:
    rows = []
    for line in (DATA / "lz4_captured_packets.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        capture, frame, sender, length, payload = line.split()
        rows.append((f"{capture}-{frame}-{sender}", int(length), bytes.fromhex(payload)))
    return rows


def ip_packet_length(packet: bytes) -> int:
    """The length an IP packet declares for itself."""
    if packet[0] >> 4 == 4:
        return int(struct.unpack_from(">H", packet, 2)[0])
    assert packet[0] >> 4 == 6
    return 40 + int(struct.unpack_from(">H", packet, 4)[0])


@pytest.mark.parametrize(("name", "length", "payload"), captured(), ids=lambda v: str(v)[:30])
def test_captured_packets_decode_to_whole_ip_packets(
    name: str, length: int, payload: bytes
) -> None:
    packet = oc_lz4.decompress(payload, 16384)
    assert len(packet) == length
    assert ip_packet_length(packet) == len(packet)


@pytest.mark.parametrize(("name", "length", "payload"), captured(), ids=lambda v: str(v)[:30])
def test_our_encoding_of_captured_packets_round_trips(
    name: str, length: int, payload: bytes
) -> None:
    packet = oc_lz4.decompress(payload, 16384)
    assert oc_lz4.decompress(oc_lz4.compress(packet), length) == packet


def test_block_has_no_size_prefix() -> None:
    packet = bytes(range(64)) * 8
    with_size = lz4.block.compress(packet, store_size=True)
    assert with_size[:4] == len(packet).to_bytes(4, "little")
    assert oc_lz4.compress(packet) == with_size[4:]


def test_output_above_the_limit_is_an_error() -> None:
    block = oc_lz4.compress(bytes(2000))
    assert oc_lz4.decompress(block, 2000) == bytes(2000)
    with pytest.raises(CompressionError):
        oc_lz4.decompress(block, 1999)


@pytest.mark.parametrize("payload", [b"", b"\xff" * 10, b"\x10a\x01\x00"])
def test_corrupt_blocks_raise_compression_error(payload: bytes) -> None:
    with pytest.raises(CompressionError):
        oc_lz4.decompress(payload, 1500)


@settings(max_examples=100, deadline=None)
@given(packet=st.binary(max_size=2000))
def test_round_trip(packet: bytes) -> None:
    assert oc_lz4.decompress(oc_lz4.compress(packet), 2000) == packet


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), limit=st.integers(1, 3000))
def test_random_input_only_raises_compression_error(data: bytes, limit: int) -> None:
    try:
        out = oc_lz4.decompress(data, limit)
    except CompressionError:
        return
    assert len(out) <= limit


def test_compress_smaller_refuses_expansion() -> None:
    assert oc_lz4.compress_smaller(bytes(range(256))) is None
    compressed = oc_lz4.compress_smaller(bytes(512))
    assert compressed is not None
    assert len(compressed) < 512
