"""DTLS handshake message framing and the few handshake messages our engines exchange.

Rules:
* A handshake fragment is msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)
  followed by the fragment bytes; `encode_handshake` always writes whole messages (ours are small).
* `HandshakeReassembler` rebuilds whole messages from fragments in any order; it never holds more
  than a few messages or more than `MAX_MESSAGE_LENGTH` bytes each, so a peer cannot make it grow.
* Parsers raise only `DtlsDecodeError`.
"""

from __future__ import annotations

import struct

import attrs

from .errors import DtlsDecodeError

HELLO_REQUEST = 0
CLIENT_HELLO = 1
SERVER_HELLO = 2
SERVER_HELLO_DONE = 14
CLIENT_KEY_EXCHANGE = 16
FINISHED = 20

#: Not a TLS message type (those are one byte): stands for a 0x0100 CCS in the reassembler.
CHANGE_CIPHER_SPEC_MARKER = 0x100

HANDSHAKE_HEADER_LENGTH = 12
MAX_MESSAGE_LENGTH = 16384
#: How far ahead of the next expected message_seq we keep fragments.
MAX_MESSAGES_AHEAD = 4

EXT_RECORD_SIZE_LIMIT = 28
EXT_SESSION_TICKET = 35
EXT_RENEGOTIATION_INFO = 0xFF01
#: Deprecated openconnect extension carrying the App-ID as <1-byte length><id> (protocol.md §7.3.2).
EXT_OPENCONNECT_APP_ID = 48018


@attrs.frozen(slots=True)
class HandshakeFragment:
    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    data: bytes


@attrs.frozen(slots=True)
class HandshakeMessage:
    msg_type: int
    message_seq: int
    body: bytes

    def encode(self) -> bytes:
        """The whole message with its 12-byte header, as the DTLS 1.2 transcript hashes it."""
        return encode_handshake(self.msg_type, self.message_seq, self.body)


def _u24(value: int) -> bytes:
    return value.to_bytes(3, "big")


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    n = _u24(len(body))
    return bytes((msg_type,)) + n + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + n + body


def parse_fragments(record_body: bytes) -> list[HandshakeFragment]:
    """All handshake fragments of one handshake record."""
    fragments = []
    pos = 0
    while pos < len(record_body):
        if len(record_body) - pos < HANDSHAKE_HEADER_LENGTH:
            raise DtlsDecodeError("truncated handshake header")
        msg_type = record_body[pos]
        length = int.from_bytes(record_body[pos + 1 : pos + 4], "big")
        message_seq = int.from_bytes(record_body[pos + 4 : pos + 6], "big")
        offset = int.from_bytes(record_body[pos + 6 : pos + 9], "big")
        frag_length = int.from_bytes(record_body[pos + 9 : pos + 12], "big")
        start = pos + HANDSHAKE_HEADER_LENGTH
        pos = start + frag_length
        if pos > len(record_body):
            raise DtlsDecodeError("truncated handshake fragment")
        if length > MAX_MESSAGE_LENGTH or offset + frag_length > length:
            raise DtlsDecodeError("handshake fragment outside its message")
        fragments.append(
            HandshakeFragment(msg_type, length, message_seq, offset, record_body[start:pos])
        )
    return fragments


class _PartialMessage:
    __slots__ = ("buffer", "epoch", "filled", "length", "missing", "msg_type")

    def __init__(self, msg_type: int, length: int, epoch: int) -> None:
        self.msg_type = msg_type
        self.epoch = epoch
        self.length = length
        self.buffer = bytearray(length)
        self.filled = bytearray(length)  # 1 where a byte has arrived
        self.missing = length


class HandshakeReassembler:
    """Collects fragments and releases whole messages strictly in message_seq order."""

    __slots__ = ("_partial", "next_seq")

    def __init__(self) -> None:
        self.next_seq = 0
        self._partial: dict[int, _PartialMessage] = {}

    def add(self, fragment: HandshakeFragment, epoch: int = 0) -> None:
        """Store a fragment of the next few messages (the caller filters out older ones)."""
        seq = fragment.message_seq
        if not self.next_seq <= seq < self.next_seq + MAX_MESSAGES_AHEAD:
            return
        partial = self._partial.get(seq)
        if partial is None:
            partial = self._partial[seq] = _PartialMessage(
                fragment.msg_type, fragment.length, epoch
            )
        elif (
            partial.msg_type != fragment.msg_type
            or partial.length != fragment.length
            or partial.epoch != epoch
        ):
            raise DtlsDecodeError("handshake fragments disagree about their message")
        start = fragment.fragment_offset
        end = start + len(fragment.data)
        partial.buffer[start:end] = fragment.data
        partial.missing -= partial.filled[start:end].count(0)
        partial.filled[start:end] = b"\x01" * (end - start)

    def pop_ready(self) -> tuple[HandshakeMessage, int] | None:
        """The next whole message and the epoch its records came in, if it is complete."""
        partial = self._partial.get(self.next_seq)
        if partial is None or partial.missing:
            return None
        del self._partial[self.next_seq]
        message = HandshakeMessage(partial.msg_type, self.next_seq, bytes(partial.buffer))
        self.next_seq += 1
        return message, partial.epoch

    def add_change_cipher_spec(self, seq: int) -> None:
        """Hold the place of a 0x0100 ChangeCipherSpec, which consumes a message_seq: it is released
        by `pop_ready` in order, as a `CHANGE_CIPHER_SPEC_MARKER` message, like any other."""
        if self.next_seq <= seq < self.next_seq + MAX_MESSAGES_AHEAD and seq not in self._partial:
            self._partial[seq] = _PartialMessage(CHANGE_CIPHER_SPEC_MARKER, 0, 0)


class _Reader:
    """Bounds-checked cursor over a message body."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._data):
            raise DtlsDecodeError("handshake message truncated")
        self._pos = end
        return self._data[pos:end]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos


_EXTENSION_HEADER = struct.Struct("!HH")


def _parse_extensions(reader: _Reader) -> tuple[tuple[int, bytes], ...]:
    # Walked with offsets rather than a nested reader: a ClientHello has many small extensions,
    # and it is parsed while the client waits for our first flight.
    if reader.remaining == 0:
        return ()
    block = reader.vector(2)
    extensions = []
    pos, end = 0, len(block)
    while pos < end:
        if end - pos < _EXTENSION_HEADER.size:
            raise DtlsDecodeError("handshake message truncated")
        ext_type, length = _EXTENSION_HEADER.unpack_from(block, pos)
        start = pos + _EXTENSION_HEADER.size
        pos = start + length
        if pos > end:
            raise DtlsDecodeError("handshake message truncated")
        extensions.append((ext_type, block[start:pos]))
    return tuple(extensions)


def _encode_extensions(extensions: tuple[tuple[int, bytes], ...]) -> bytes:
    if not extensions:
        return b""
    body = b"".join(struct.pack("!HH", ext_type, len(data)) + data for ext_type, data in extensions)
    return len(body).to_bytes(2, "big") + body


@attrs.frozen(slots=True)
class ClientHello:
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]

    @classmethod
    def parse(cls, body: bytes) -> ClientHello:
        reader = _Reader(body)
        client_version = reader.uint(2)
        random = reader.take(32)
        session_id = reader.vector(1)
        cookie = reader.vector(1)
        suites_raw = reader.vector(2)
        if len(suites_raw) % 2:
            raise DtlsDecodeError("odd cipher suite list")
        suites = struct.unpack(f"!{len(suites_raw) // 2}H", suites_raw)
        compression = reader.vector(1)
        extensions = _parse_extensions(reader)
        if len(session_id) > 32 or len(cookie) > 255:
            raise DtlsDecodeError("oversized session id")
        return cls(client_version, random, session_id, cookie, suites, compression, extensions)

    def encode(self) -> bytes:
        return (
            self.client_version.to_bytes(2, "big")
            + self.random
            + bytes((len(self.session_id),))
            + self.session_id
            + bytes((len(self.cookie),))
            + self.cookie
            + (2 * len(self.cipher_suites)).to_bytes(2, "big")
            + struct.pack(f"!{len(self.cipher_suites)}H", *self.cipher_suites)
            + bytes((len(self.compression_methods),))
            + self.compression_methods
            + _encode_extensions(self.extensions)
        )

    def extension(self, ext_type: int) -> bytes | None:
        for found_type, data in self.extensions:
            if found_type == ext_type:
                return data
        return None


@attrs.frozen(slots=True)
class ServerHello:
    server_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: tuple[tuple[int, bytes], ...]

    @classmethod
    def parse(cls, body: bytes) -> ServerHello:
        reader = _Reader(body)
        version = reader.uint(2)
        random = reader.take(32)
        session_id = reader.vector(1)
        suite = reader.uint(2)
        compression = reader.uint(1)
        extensions = _parse_extensions(reader)
        return cls(version, random, session_id, suite, compression, extensions)

    def encode(self) -> bytes:
        return (
            self.server_version.to_bytes(2, "big")
            + self.random
            + bytes((len(self.session_id),))
            + self.session_id
            + self.cipher_suite.to_bytes(2, "big")
            + bytes((self.compression_method,))
            + _encode_extensions(self.extensions)
        )


def parse_psk_client_key_exchange(body: bytes) -> bytes:
    """The psk_identity of a plain-PSK ClientKeyExchange (the server ignores its value)."""
    reader = _Reader(body)
    identity = reader.vector(2)
    if reader.remaining:
        raise DtlsDecodeError("trailing bytes after psk_identity")
    return identity


#: The psk_identity openconnect sends (and so does our client): a constant, the PSK itself is
#: the session's exporter value.
PSK_IDENTITY = b"psk"


def encode_psk_client_key_exchange(identity: bytes) -> bytes:
    return len(identity).to_bytes(2, "big") + identity
