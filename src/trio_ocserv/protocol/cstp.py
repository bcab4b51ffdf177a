"""CSTP framing on the TLS control channel after CONNECT (protocol.md §6), and the 1-byte framing
of the same packet types inside DTLS records (§7.6).

This module owns the byte layout only: the frame encoder, an incremental decoder that reassembles
frames from arbitrary chunks of the TLS byte stream, and a reusable buffer for the hot path
(tun packet -> header written in place -> one TLS write). What a packet type means for a session
(DPD answers, disconnects, compression) is decided by the tunnel code that drives it.
No sockets, no clocks.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from typing import NoReturn

import attrs

MAGIC = b"STF\x01"
HEADER_LENGTH = 8
# The length field is 16 bits; a session bounds it further to what it is willing to buffer.
MAX_WIRE_PAYLOAD_LENGTH = 0xFFFF
# ocserv and openconnect both size receive buffers at 16 KiB (protocol.md §9.2); nothing larger
# is legitimate on a tunnel whose MTU is below 1500.
DEFAULT_MAX_PAYLOAD_LENGTH = 16384

# A client DISCONNECT payload starts with this reason byte for a user logout (§8.6).
DISCONNECT_REASON_USER_LOGOUT = 0xB0

_HEADER = struct.Struct(">4sHBB")


class CstpProtocolError(Exception):
    """The peer sent bytes that are not a valid CSTP stream; the session must be closed."""


class CstpPacketType(enum.IntEnum):
    """Packet type codes shared by CSTP frames and DTLS messages."""

    DATA = 0x00
    DPD_REQUEST = 0x03
    DPD_RESPONSE = 0x04
    DISCONNECT = 0x05
    KEEPALIVE = 0x07
    COMPRESSED = 0x08
    TERMINATE = 0x09


_KNOWN_TYPES: dict[int, CstpPacketType] = {t.value: t for t in CstpPacketType}
_DATA_CODE = int(CstpPacketType.DATA)


def packet_type_of(code: int) -> CstpPacketType | int:
    """The enum member for a known code; unknown codes stay plain ints (ocserv ignores them)."""
    return _KNOWN_TYPES.get(code, code)


@attrs.frozen(slots=True)
class CstpFrame:
    """One decoded frame: its type code and payload (the header is gone)."""

    packet_type: CstpPacketType | int
    payload: bytes

    @property
    def is_known_type(self) -> bool:
        return isinstance(self.packet_type, CstpPacketType)


class DisconnectKind(enum.Enum):
    """How ocserv reads a DISCONNECT payload (§8.6)."""

    USER_LOGOUT = "user-logout"  # 0xB0 + reason text: the cookie is invalidated
    TEMPORARY = "temporary"  # empty: the client will reconnect with its cookie
    UNRECOGNISED = "unrecognised"  # anything else: logged and ignored as an error


@attrs.frozen(slots=True)
class DisconnectReason:
    kind: DisconnectKind
    reason_code: int | None
    text: str


def _check_type_code(packet_type: int) -> None:
    if not 0 <= packet_type <= 0xFF:
        raise ValueError(f"CSTP packet type {packet_type} does not fit in one byte")


def encode_header(packet_type: int, payload_length: int) -> bytes:
    """The 8-byte frame header for a payload of `payload_length` bytes."""
    _check_type_code(packet_type)
    if not 0 <= payload_length <= MAX_WIRE_PAYLOAD_LENGTH:
        raise ValueError(f"CSTP payload length {payload_length} is outside 0..65535")
    return _HEADER.pack(MAGIC, payload_length, packet_type, 0)


def encode_data_header(payload_length: int) -> bytes:
    """Header for a DATA frame: send it and the packet in one TLS write (`header + packet`)."""
    return encode_header(CstpPacketType.DATA, payload_length)


def encode_data_frames(packets: Iterable[bytes | bytearray | memoryview]) -> list[bytes]:
    """One DATA frame per IP packet, each for its own TLS record (the tun -> CSTP hot path)."""
    pack = _HEADER.pack
    try:
        return [pack(MAGIC, len(packet), _DATA_CODE, 0) + packet for packet in packets]
    except struct.error as exc:
        raise ValueError(f"CSTP payload length is outside 0..65535 ({exc})") from None


def encode_frame(packet_type: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """A complete frame: header and payload, ready for a single TLS write."""
    return encode_header(packet_type, len(payload)) + payload


def encode_disconnect(reason: str | None = None) -> bytes:
    """A DISCONNECT frame. The server sends it empty (ocserv, §8.6); with a reason it is the
    client form `0xB0 + UTF-8 text`, which openconnect prints as the server's reason."""
    if reason is None:
        return encode_frame(CstpPacketType.DISCONNECT)
    payload = bytes([DISCONNECT_REASON_USER_LOGOUT]) + reason.encode("utf-8")
    return encode_frame(CstpPacketType.DISCONNECT, payload)


def parse_disconnect(payload: bytes) -> DisconnectReason:
    """Classify a received DISCONNECT payload the way ocserv does (§8.6)."""
    if not payload:
        return DisconnectReason(DisconnectKind.TEMPORARY, None, "")
    text = payload[1:].decode("utf-8", errors="replace")
    if payload[0] == DISCONNECT_REASON_USER_LOGOUT:
        return DisconnectReason(DisconnectKind.USER_LOGOUT, payload[0], text)
    return DisconnectReason(DisconnectKind.UNRECOGNISED, payload[0], text)


def dpd_response_for(request: CstpFrame) -> bytes:
    """The answer to a DPD request: the same payload with the type changed (§6)."""
    return encode_frame(CstpPacketType.DPD_RESPONSE, request.payload)


class CstpFrameBuffer:
    """A preallocated frame buffer for the tun -> CSTP hot path.

    Read a packet into `payload` (e.g. `os.readv(fd, [buf.payload])`), then `frame(n)` writes
    the header in front of it and returns a view of the whole frame for one TLS write; the
    packet bytes are never copied by us.
    """

    __slots__ = ("_buffer", "_view", "payload")

    def __init__(self, max_payload_length: int = DEFAULT_MAX_PAYLOAD_LENGTH) -> None:
        if not 0 <= max_payload_length <= MAX_WIRE_PAYLOAD_LENGTH:
            raise ValueError(f"max payload length {max_payload_length} is outside 0..65535")
        self._buffer = bytearray(HEADER_LENGTH + max_payload_length)
        self._view = memoryview(self._buffer)
        self.payload = self._view[HEADER_LENGTH:]

    def frame(self, payload_length: int, packet_type: int = CstpPacketType.DATA) -> memoryview:
        if payload_length > len(self.payload):
            raise ValueError(
                f"payload length {payload_length} exceeds the buffer ({len(self.payload)})"
            )
        _check_type_code(packet_type)
        _HEADER.pack_into(self._buffer, 0, MAGIC, payload_length, packet_type, 0)
        return self._view[: HEADER_LENGTH + payload_length]


class CstpDecoder:
    """Incremental CSTP decoder: feed the TLS byte stream, take complete frames out.

    Frames may be split or coalesced across `receive_data` calls in any way. A violation
    (bad magic, non-zero reserved byte, a length above the bound) raises `CstpProtocolError`
    and poisons the decoder: the stream cannot be resynchronised.

    Two ways to use it; pick one per decoder: `receive_data` + `next_frame` (CstpFrame objects
    with their own payload bytes), or `feed` (the tunnel's hot path: (type code, payload view)
    pairs that point into the chunk fed, no copy and no object per frame).
    """

    __slots__ = ("_buffer", "_error", "_start", "max_payload_length")

    def __init__(self, max_payload_length: int = DEFAULT_MAX_PAYLOAD_LENGTH) -> None:
        if not 0 <= max_payload_length <= MAX_WIRE_PAYLOAD_LENGTH:
            raise ValueError(f"max payload length {max_payload_length} is outside 0..65535")
        self.max_payload_length = max_payload_length
        self._buffer = bytearray()
        self._start = 0  # consumed prefix of _buffer, dropped lazily to avoid O(n^2) moves
        self._error: CstpProtocolError | None = None

    @property
    def buffered_length(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame at most)."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_frame(self) -> CstpFrame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        start = self._start
        available = len(buffer) - start
        if available < HEADER_LENGTH:
            # Reject a bad magic as soon as its bytes are here, not only once 8 have arrived.
            if not MAGIC.startswith(buffer[start : start + min(available, len(MAGIC))]):
                self._fail(f"bad CSTP magic {bytes(buffer[start : start + 4])!r}")
            self._compact()
            return None
        magic, length, code, reserved = _HEADER.unpack_from(buffer, start)
        if magic != MAGIC or reserved or length > self.max_payload_length:
            self._reject_header(magic, length, reserved)
        end = start + HEADER_LENGTH + length
        if len(buffer) < end:
            self._compact()
            return None
        payload = bytes(buffer[start + HEADER_LENGTH : end])
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        else:
            self._start = end
        return CstpFrame(_KNOWN_TYPES.get(code, code), payload)

    def frames(self) -> list[CstpFrame]:
        """All frames that are complete now."""
        out: list[CstpFrame] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, memoryview]]:
        """Add `data` and yield every frame it completes as (type code, payload view).

        A generator: iterate it to the end before the next `feed` (the bytes of a frame cut
        at the end of `data` are kept only then). Payloads are read-only views of `data`, or
        of a private copy for a frame that straddles two chunks; they stay valid as long as
        the caller holds them. A violation raises `CstpProtocolError` after the frames before
        it have been yielded, as `next_frame` does. Do not modify a mutable `data` while its
        payload views are held.
        """
        if self._error is not None:
            raise self._error
        view = memoryview(data).toreadonly()
        position = 0
        if self._buffer:
            # The start of a frame that straddles from the previous chunk: complete it.
            buffer = self._buffer
            missing = HEADER_LENGTH - len(buffer)
            if missing > 0:
                buffer += view[:missing]
                position = min(missing, len(view))
                if len(buffer) < HEADER_LENGTH:
                    self._check_magic_prefix(buffer)
                    return
            magic, length, code, reserved = _HEADER.unpack_from(buffer)
            if magic != MAGIC or reserved or length > self.max_payload_length:
                self._reject_header(magic, length, reserved)
            missing = HEADER_LENGTH + length - len(buffer)
            buffer += view[position : position + missing]
            position = min(position + missing, len(view))
            if len(buffer) < HEADER_LENGTH + length:
                return
            payload = memoryview(buffer[HEADER_LENGTH:]).toreadonly()  # a private copy
            buffer.clear()
            yield code, payload
        end = len(view)
        unpack = _HEADER.unpack_from
        limit = self.max_payload_length
        while end - position >= HEADER_LENGTH:
            magic, length, code, reserved = unpack(view, position)
            if magic != MAGIC or reserved or length > limit:
                self._reject_header(magic, length, reserved)
            stop = position + HEADER_LENGTH + length
            if stop > end:
                break
            yield code, view[position + HEADER_LENGTH : stop]
            position = stop
        if position < end:
            tail = view[position:]
            self._check_magic_prefix(tail)
            self._buffer += tail

    def _check_magic_prefix(self, partial: bytes | bytearray | memoryview) -> None:
        # Reject a bad magic as soon as its bytes are here, not only once 8 have arrived.
        head = bytes(partial[: len(MAGIC)])
        if not MAGIC.startswith(head):
            self._fail(f"bad CSTP magic {head!r}")

    def _reject_header(self, magic: bytes, length: int, reserved: int) -> NoReturn:
        if magic != MAGIC:
            self._fail(f"bad CSTP magic {magic!r}")
        if reserved != 0:
            self._fail(f"CSTP reserved header byte is {reserved:#04x}, not 0")
        self._fail(f"CSTP payload length {length} exceeds the limit {self.max_payload_length}")

    def _compact(self) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0

    def _fail(self, message: str) -> NoReturn:
        self._error = CstpProtocolError(message)
        raise self._error


def encode_dtls_message(packet_type: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """A DTLS application-data plaintext: one type byte, then the payload (§7.6)."""
    _check_type_code(packet_type)
    return bytes((packet_type,)) + payload


def decode_dtls_message(plaintext: bytes) -> CstpFrame:
    """Split a DTLS plaintext into type and payload; the record length delimits the payload."""
    if not plaintext:
        raise CstpProtocolError("empty DTLS message has no packet type")
    code = plaintext[0]
    return CstpFrame(_KNOWN_TYPES.get(code, code), plaintext[1:])
