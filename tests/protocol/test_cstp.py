"""CSTP framing: observed frames from protocol.md §6, reassembly across any chunking, the
length bound, and garbage that must only ever raise CstpProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.cstp import (
    HEADER_LENGTH,
    CstpDecoder,
    CstpFrame,
    CstpFrameBuffer,
    CstpPacketType,
    CstpProtocolError,
    DisconnectKind,
    decode_dtls_message,
    dpd_response_for,
    encode_data_frames,
    encode_data_header,
    encode_disconnect,
    encode_dtls_message,
    encode_frame,
    parse_disconnect,
)

# Frames as observed on the wire (protocol.md §6, decrypted captures).
KEEPALIVE = bytes.fromhex("5354460100000700")
DPD_REQUEST = bytes.fromhex("5354460100000300")
DPD_RESPONSE = bytes.fromhex("5354460100000400")
SERVER_DISCONNECT = bytes.fromhex("5354460100000500")
CLIENT_BYE = bytes.fromhex("5354460100120500b041626f727465642062792063616c6c6572")


def decode_all(stream: bytes, chunk_sizes: list[int] | None = None) -> list[CstpFrame]:
    decoder = CstpDecoder()
    frames: list[CstpFrame] = []
    position = 0
    sizes = iter(chunk_sizes or [])
    while position < len(stream):
        size = next(sizes, len(stream) - position) or 1
        decoder.receive_data(stream[position : position + size])
        position += size
        frames.extend(decoder.frames())
    assert decoder.buffered_length == 0
    return frames


def test_encoder_reproduces_observed_control_frames() -> None:
    assert encode_frame(CstpPacketType.KEEPALIVE) == KEEPALIVE
    assert encode_frame(CstpPacketType.DPD_REQUEST) == DPD_REQUEST
    assert encode_frame(CstpPacketType.DPD_RESPONSE) == DPD_RESPONSE
    assert encode_disconnect() == SERVER_DISCONNECT
    assert encode_disconnect("Aborted by caller") == CLIENT_BYE


def test_decoder_reads_observed_frames_in_one_stream() -> None:
    frames = decode_all(KEEPALIVE + DPD_REQUEST + CLIENT_BYE + SERVER_DISCONNECT)
    assert [f.packet_type for f in frames] == [
        CstpPacketType.KEEPALIVE,
        CstpPacketType.DPD_REQUEST,
        CstpPacketType.DISCONNECT,
        CstpPacketType.DISCONNECT,
    ]
    assert frames[2].payload == b"\xb0Aborted by caller"
    assert all(f.is_known_type for f in frames)


def test_data_header_matches_observed_icmp_frame() -> None:
    # "53 54 46 01 00 54 00 00  45 00 00 54": DATA with an 84-byte IPv4 packet.
    assert encode_data_header(84) == bytes.fromhex("5354460100540000")


def test_every_packet_type_round_trips() -> None:
    stream = b"".join(encode_frame(t, bytes([t]) * t) for t in CstpPacketType)
    frames = decode_all(stream, [1] * len(stream))
    assert [(f.packet_type, f.payload) for f in frames] == [
        (t, bytes([t]) * t) for t in CstpPacketType
    ]


def test_unknown_type_is_returned_as_int_not_rejected() -> None:
    # ocserv logs and ignores unknown types, so the decoder hands them up.
    (frame,) = decode_all(encode_frame(0x42, b"x"))
    assert frame.packet_type == 0x42
    assert not frame.is_known_type


def test_bad_magic_is_rejected_on_first_byte() -> None:
    decoder = CstpDecoder()
    decoder.receive_data(b"G")
    with pytest.raises(CstpProtocolError, match="magic"):
        decoder.next_frame()


def test_non_zero_reserved_byte_is_rejected() -> None:
    decoder = CstpDecoder()
    decoder.receive_data(bytes.fromhex("5354460100000701"))
    with pytest.raises(CstpProtocolError, match="reserved"):
        decoder.next_frame()


def test_length_above_bound_is_rejected_from_header_alone() -> None:
    decoder = CstpDecoder(max_payload_length=1500)
    decoder.receive_data(encode_data_header(1501))
    with pytest.raises(CstpProtocolError, match="1501"):
        decoder.next_frame()


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = CstpDecoder()
    decoder.receive_data(b"XXXXXXXX")
    with pytest.raises(CstpProtocolError):
        decoder.next_frame()
    with pytest.raises(CstpProtocolError):
        decoder.receive_data(KEEPALIVE)
    with pytest.raises(CstpProtocolError):
        decoder.next_frame()


def test_partial_frame_waits_for_more_data() -> None:
    frame = encode_frame(CstpPacketType.DATA, b"\x45" * 100)
    decoder = CstpDecoder()
    decoder.receive_data(frame[:50])
    assert decoder.next_frame() is None
    assert decoder.buffered_length == 50
    decoder.receive_data(frame[50:])
    assert decoder.next_frame() == CstpFrame(CstpPacketType.DATA, b"\x45" * 100)


def test_frame_buffer_writes_header_in_front_of_payload_without_copy() -> None:
    buffer = CstpFrameBuffer(max_payload_length=1500)
    packet = bytes(range(84))
    buffer.payload[: len(packet)] = packet
    frame = buffer.frame(len(packet))
    assert bytes(frame) == encode_frame(CstpPacketType.DATA, packet)
    # The view shares memory with the payload area: no second copy of the packet.
    buffer.payload[0] = 0x60
    assert frame[HEADER_LENGTH] == 0x60
    assert bytes(buffer.frame(0, CstpPacketType.DPD_REQUEST)) == DPD_REQUEST


def test_frame_buffer_refuses_oversized_payload() -> None:
    buffer = CstpFrameBuffer(max_payload_length=100)
    with pytest.raises(ValueError, match="exceeds"):
        buffer.frame(101)


def test_encoder_refuses_lengths_the_header_cannot_hold() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_data_header(65536)
    with pytest.raises(ValueError, match="one byte"):
        encode_frame(256)


def test_dpd_response_echoes_the_request_payload() -> None:
    request = CstpFrame(CstpPacketType.DPD_REQUEST, b"\x98\xc5\x1e\x13")
    assert dpd_response_for(request) == encode_frame(CstpPacketType.DPD_RESPONSE, request.payload)


@pytest.mark.parametrize(
    ("payload", "kind", "text"),
    [
        (b"", DisconnectKind.TEMPORARY, ""),
        (b"\xb0Aborted by caller", DisconnectKind.USER_LOGOUT, "Aborted by caller"),
        (b"\x01oops", DisconnectKind.UNRECOGNISED, "oops"),
    ],
)
def test_disconnect_payload_classification(payload: bytes, kind: DisconnectKind, text: str) -> None:
    reason = parse_disconnect(payload)
    assert reason.kind is kind
    assert reason.text == text


def test_dtls_messages_use_one_type_byte() -> None:
    # §7.6: "08 a0 60 00 ..." is a COMPRESSED message; "07" alone a keepalive.
    assert encode_dtls_message(CstpPacketType.KEEPALIVE) == b"\x07"
    message = decode_dtls_message(bytes.fromhex("08a060"))
    assert message == CstpFrame(CstpPacketType.COMPRESSED, b"\xa0\x60")
    with pytest.raises(CstpProtocolError):
        decode_dtls_message(b"")


frame_strategy = st.tuples(
    st.sampled_from(list(CstpPacketType)) | st.integers(0, 255), st.binary(max_size=300)
)


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(frame_strategy, max_size=8),
    chunk_sizes=st.lists(st.integers(1, 64), max_size=40),
)
def test_round_trip_across_any_chunking(
    frames: list[tuple[int, bytes]], chunk_sizes: list[int]
) -> None:
    stream = b"".join(encode_frame(t, p) for t, p in frames)
    decoded = decode_all(stream, chunk_sizes)
    assert [(int(f.packet_type), f.payload) for f in decoded] == [(int(t), p) for t, p in frames]


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=10), limit=st.integers(0, 100))
def test_garbage_only_raises_cstp_protocol_error(chunks: list[bytes], limit: int) -> None:
    decoder = CstpDecoder(max_payload_length=limit)
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            for frame in decoder.frames():
                assert len(frame.payload) <= limit
    except CstpProtocolError:
        return


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.lists(frame_strategy, max_size=3),
    garbage=st.binary(min_size=1, max_size=20).filter(lambda b: not b"STF\x01".startswith(b[:4])),
)
def test_valid_frames_then_garbage_yields_frames_then_error(
    prefix: list[tuple[int, bytes]], garbage: bytes
) -> None:
    decoder = CstpDecoder()
    decoder.receive_data(b"".join(encode_frame(t, p) for t, p in prefix) + garbage)
    for _ in prefix:
        assert decoder.next_frame() is not None
    with pytest.raises(CstpProtocolError):
        decoder.next_frame()


# -- the hot-path API: feed() yields (type code, payload view) pairs ---------------------------


def feed_all(
    stream: bytes, chunk_sizes: list[int], limit: int = 16384
) -> tuple[CstpDecoder, list[tuple[int, bytes]]]:
    decoder = CstpDecoder(max_payload_length=limit)
    out: list[tuple[int, bytes]] = []
    position = 0
    sizes = iter(chunk_sizes)
    while position < len(stream):
        size = next(sizes, len(stream) - position) or 1
        out.extend((code, bytes(view)) for code, view in decoder.feed(stream[position:][:size]))
        position += size
    return decoder, out


@settings(max_examples=150, deadline=None)
@given(
    frames=st.lists(frame_strategy, max_size=8),
    chunk_sizes=st.lists(st.integers(1, 64), max_size=40),
)
def test_feed_round_trips_across_any_chunking(
    frames: list[tuple[int, bytes]], chunk_sizes: list[int]
) -> None:
    stream = b"".join(encode_frame(t, p) for t, p in frames)
    decoder, decoded = feed_all(stream, chunk_sizes)
    assert decoded == [(int(t), p) for t, p in frames]
    assert decoder.buffered_length == 0


def test_feed_payloads_are_views_of_the_chunk_not_copies() -> None:
    chunk = encode_frame(CstpPacketType.DATA, b"\x45" * 60) + KEEPALIVE
    (data_code, data), (keepalive_code, empty) = list(CstpDecoder().feed(chunk))
    assert (data_code, keepalive_code) == (CstpPacketType.DATA, CstpPacketType.KEEPALIVE)
    assert data.obj is chunk and data.readonly and data == b"\x45" * 60
    assert len(empty) == 0


def test_feed_completes_a_frame_cut_in_its_header_and_payload() -> None:
    frame = encode_frame(CstpPacketType.DATA, bytes(range(100)))
    decoder = CstpDecoder()
    assert list(decoder.feed(frame[:3])) == []
    assert list(decoder.feed(frame[3:50])) == []
    assert decoder.buffered_length == 50
    [(code, payload)] = decoder.feed(frame[50:] + KEEPALIVE[:5])
    assert (code, bytes(payload)) == (CstpPacketType.DATA, bytes(range(100)))
    [(code, payload)] = decoder.feed(KEEPALIVE[5:])
    assert (code, bytes(payload)) == (CstpPacketType.KEEPALIVE, b"")


def test_feed_rejects_bad_magic_on_first_byte_and_stays_failed() -> None:
    decoder = CstpDecoder()
    with pytest.raises(CstpProtocolError, match="magic"):
        list(decoder.feed(b"G"))
    with pytest.raises(CstpProtocolError):
        list(decoder.feed(KEEPALIVE))


def test_feed_applies_the_length_bound_and_reserved_byte_from_the_header() -> None:
    with pytest.raises(CstpProtocolError, match="exceeds the limit"):
        list(CstpDecoder(max_payload_length=1500).feed(encode_data_header(1501)))
    with pytest.raises(CstpProtocolError, match="reserved"):
        list(CstpDecoder().feed(bytes.fromhex("5354460100000701")))


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.lists(frame_strategy, max_size=3),
    garbage=st.binary(min_size=1, max_size=20).filter(lambda b: not b"STF\x01".startswith(b[:4])),
)
def test_feed_yields_valid_frames_then_raises(
    prefix: list[tuple[int, bytes]], garbage: bytes
) -> None:
    frames = CstpDecoder().feed(b"".join(encode_frame(t, p) for t, p in prefix) + garbage)
    for packet_type, payload in prefix:
        code, view = next(frames)
        assert (code, bytes(view)) == (int(packet_type), payload)
    with pytest.raises(CstpProtocolError):
        next(frames)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=10), limit=st.integers(0, 100))
def test_feed_garbage_only_raises_cstp_protocol_error(chunks: list[bytes], limit: int) -> None:
    decoder = CstpDecoder(max_payload_length=limit)
    try:
        for chunk in chunks:
            for _code, payload in decoder.feed(chunk):
                assert len(payload) <= limit
    except CstpProtocolError:
        return


def test_encode_data_frames_is_one_data_frame_per_packet() -> None:
    packets: list[bytes | bytearray | memoryview] = [
        b"\x45" * 20,
        bytearray(b"\x60" * 40),
        memoryview(b"--\x45\x00--")[2:4],
        b"",
    ]
    frames = encode_data_frames(packets)
    assert frames == [encode_frame(CstpPacketType.DATA, p) for p in packets]
    assert all(type(f) is bytes for f in frames)  # what TlsStream.send_records sends uncopied
    with pytest.raises(ValueError, match="outside"):
        encode_data_frames([bytes(0x10000)])
