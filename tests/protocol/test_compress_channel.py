"""Per-channel compression policy and COMPRESSED framing (protocol.md §9.2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.compress import (
    ChannelCompressor,
    CompressionAlgorithm,
    CompressionError,
    effective_no_compress_limit,
    ip_packet_from,
)
from trio_ocserv.protocol.cstp import (
    CstpDecoder,
    CstpFrame,
    CstpPacketType,
    decode_dtls_message,
    encode_frame,
)

DATA = Path(__file__).parent / "data"
COMPRESSIBLE = bytes.fromhex("4500") + bytes(600)


def test_no_compress_limit_never_goes_below_64() -> None:
    assert effective_no_compress_limit(10) == 64
    assert effective_no_compress_limit(256) == 256
    assert ChannelCompressor(CompressionAlgorithm.LZS, no_compress_limit=0).no_compress_limit == 64


@pytest.mark.parametrize("algorithm", list(CompressionAlgorithm))
def test_packets_up_to_the_limit_go_uncompressed(algorithm: CompressionAlgorithm) -> None:
    compressor = ChannelCompressor(algorithm, no_compress_limit=256)
    assert compressor.compress(bytes(256)) is None
    assert compressor.compress(bytes(257)) is not None
    assert compressor.cstp_frame(bytes(256)) == encode_frame(CstpPacketType.DATA, bytes(256))


@pytest.mark.parametrize("algorithm", list(CompressionAlgorithm))
def test_incompressible_packets_go_uncompressed(algorithm: CompressionAlgorithm) -> None:
    packet = bytes((i * 97 + 13) % 251 for i in range(1400))
    compressor = ChannelCompressor(algorithm, no_compress_limit=64)
    compressed = compressor.compress(packet)
    assert compressed is None or len(compressed) < len(packet)
    random_packet = bytes.fromhex("45") + os.urandom(1399)
    assert compressor.compress(random_packet) is None
    assert compressor.dtls_message(random_packet) == b"\x00" + random_packet


@pytest.mark.parametrize("algorithm", list(CompressionAlgorithm))
def test_cstp_frame_round_trips_through_the_decoder(algorithm: CompressionAlgorithm) -> None:
    compressor = ChannelCompressor(algorithm)
    decoder = CstpDecoder()
    decoder.receive_data(compressor.cstp_frame(COMPRESSIBLE))
    (frame,) = decoder.frames()
    assert frame.packet_type is CstpPacketType.COMPRESSED
    assert len(frame.payload) < len(COMPRESSIBLE)
    assert ip_packet_from(frame, compressor) == COMPRESSIBLE


@pytest.mark.parametrize("algorithm", list(CompressionAlgorithm))
def test_dtls_message_round_trips(algorithm: CompressionAlgorithm) -> None:
    compressor = ChannelCompressor(algorithm)
    message = compressor.dtls_message(COMPRESSIBLE)
    assert message[0] == CstpPacketType.COMPRESSED
    assert ip_packet_from(decode_dtls_message(message), compressor) == COMPRESSIBLE


def test_captured_lz4_dtls_message_decodes() -> None:
    line = next(
        line
        for line in (DATA / "lz4_captured_packets.txt").read_text().splitlines()
        if line.startswith("psk-default 50 server")
    )
    payload = bytes.fromhex(line.split()[4])
    frame = decode_dtls_message(b"\x08" + payload)
    packet = ip_packet_from(frame, ChannelCompressor(CompressionAlgorithm.OC_LZ4))
    assert len(packet) == 1028
    assert packet[0] == 0x45


def test_data_frames_pass_through_without_a_compressor() -> None:
    assert ip_packet_from(CstpFrame(CstpPacketType.DATA, b"\x45abc"), None) == b"\x45abc"


def test_compressed_frame_without_negotiation_is_an_error() -> None:
    with pytest.raises(CompressionError, match="without negotiated"):
        ip_packet_from(CstpFrame(CstpPacketType.COMPRESSED, b"\x00"), None)


def test_control_frames_carry_no_ip_packet() -> None:
    with pytest.raises(ValueError, match="does not carry"):
        ip_packet_from(CstpFrame(CstpPacketType.KEEPALIVE, b""), None)


@pytest.mark.parametrize("algorithm", list(CompressionAlgorithm))
def test_decompressed_size_limit(algorithm: CompressionAlgorithm) -> None:
    sender = ChannelCompressor(algorithm)
    receiver = ChannelCompressor(algorithm, max_decompressed_size=500)
    compressed = sender.compress(bytes(600))
    assert compressed is not None
    with pytest.raises(CompressionError):
        receiver.decompress(compressed)


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(list(CompressionAlgorithm)),
    packet=st.binary(max_size=1500) | st.integers(0, 1500).map(bytes),
    limit=st.integers(0, 600),
)
def test_policy_round_trip(algorithm: CompressionAlgorithm, packet: bytes, limit: int) -> None:
    compressor = ChannelCompressor(algorithm, no_compress_limit=limit)
    decoder = CstpDecoder()
    decoder.receive_data(compressor.cstp_frame(packet))
    (frame,) = decoder.frames()
    if frame.packet_type is CstpPacketType.COMPRESSED:
        assert len(packet) > compressor.no_compress_limit
        assert len(frame.payload) < len(packet)
    assert ip_packet_from(frame, compressor) == packet


@settings(max_examples=200, deadline=None)
@given(algorithm=st.sampled_from(list(CompressionAlgorithm)), data=st.binary(max_size=200))
def test_hostile_compressed_payloads_only_raise_compression_error(
    algorithm: CompressionAlgorithm, data: bytes
) -> None:
    compressor = ChannelCompressor(algorithm, max_decompressed_size=1500)
    try:
        packet = ip_packet_from(CstpFrame(CstpPacketType.COMPRESSED, data), compressor)
    except CompressionError:
        return
    assert len(packet) <= 1500
