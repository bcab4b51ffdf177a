"""Stac LZS (ANSI X3.241 style) as used per packet by the `lzs` encoding (protocol.md §9.4).

Our own encoder and decoder, written from the bit layout in §9.4. Every packet is compressed on
its own (no history between packets). The bit stream is read and written most significant bit
first; tokens are not byte aligned:

    0 + 8 bits              literal byte
    1 1 + 7-bit offset      match, offset 1..127      (1 1 0000000 is the end marker)
    1 0 + 11-bit offset     match, offset 1..2047
    length code after every match offset:
        00 -> 2, 01 -> 3, 10 -> 4, 1100 -> 5, 1101 -> 6, 1110 -> 7,
        1111 + nibbles -> 8 + sum of nibbles, where each 1111 nibble adds 15 and continues.

The decoder reads each token through one 18-bit peek into a table of 32-bit windows (a token
header is at most 13 bits, plus the first 4 bits of its length code; or two literal tokens at
once), so the Python work is a handful of operations per token. Whatever the input, it returns
at most `max_output` bytes (matches are checked before they are copied; literals, which cannot
outgrow the input, are checked at the end) and its work is linear in input plus output.
"""

from __future__ import annotations

import itertools
import struct

from trio_ocserv.protocol.compress.errors import CompressionError

WINDOW_SIZE = 2047  # largest offset the long form can express
SHORT_OFFSET_LIMIT = 127
MIN_MATCH_LENGTH = 2
# Candidates tried per position: enough for IP headers and text, bounded for hostile data.
MAX_CHAIN_LENGTH = 16
# compress_smaller() stops when this much input has been read without any saving.
GIVE_UP_PROBE_LENGTH = 512

# (length, bits consumed, extended?) for the first 4 bits of a length code.
_LENGTH_CODES: tuple[tuple[int, int, bool], ...] = tuple(
    (2, 2, False)
    if nibble < 0b0100
    else (3, 2, False)
    if nibble < 0b1000
    else (4, 2, False)
    if nibble < 0b1100
    else (5 + (nibble & 0b11), 4, nibble == 0b1111)
    for nibble in range(16)
)


def decompress(data: bytes | bytearray | memoryview, max_output: int) -> bytes:
    """Decode one LZS packet. Raises `CompressionError` for corrupt, truncated or
    over-long input; the result is never longer than `max_output`."""
    raw = bytes(data)
    total_bits = len(raw) * 8
    windows = _byte_windows(raw)
    out = bytearray()
    append = out.append
    length_codes = _LENGTH_CODES
    last_token_start = total_bits - 9
    last_pair_start = total_bits - 18
    position = 0
    while True:
        if position > last_token_start:
            raise CompressionError("LZS stream ends without an end marker")
        # 18 bits: two literal tokens at once when both flag bits are 0 (the common case).
        peek = (windows[position >> 3] >> (14 - (position & 7))) & 0x3FFFF
        if not peek & 0x20100 and position <= last_pair_start:
            # Literals never outgrow the input; the output bound is checked at matches/end.
            append((peek >> 9) & 0xFF)
            append(peek & 0xFF)
            position += 18
            continue
        peek >>= 1  # the next 17 bits: one token header plus 4 bits of a length code
        if peek < 0x10000:  # leading 0: literal
            append(peek >> 8)
            position += 9
            continue
        if peek & 0x8000:  # 1 1: short offset
            offset = (peek >> 8) & 0x7F
            if offset == 0:
                break  # end marker; the rest is padding
            position += 9
            length, used, extended = length_codes[(peek >> 4) & 0xF]
        else:  # 1 0: long offset
            offset = (peek >> 4) & 0x7FF
            if offset == 0:
                raise CompressionError("LZS long match with offset 0")
            position += 13
            length, used, extended = length_codes[peek & 0xF]
        position += used
        produced = len(out)
        if extended:
            while True:
                if position + 4 > total_bits:
                    raise CompressionError("LZS stream truncated inside a length code")
                nibble = (windows[position >> 3] >> (28 - (position & 7))) & 0xF
                position += 4
                length += nibble
                if nibble != 0xF or produced + length > max_output:
                    break
        if position > total_bits:
            raise CompressionError("LZS stream truncated inside a match")
        if offset > produced:
            raise CompressionError(f"LZS match offset {offset} reaches before the packet start")
        if produced + length > max_output:
            raise CompressionError(f"LZS output exceeds {max_output} bytes")
        start = produced - offset
        if offset >= length:
            out += out[start : start + length]
        else:
            # Overlapping copy: the last `offset` bytes repeat.
            out += (out[start:] * (length // offset + 1))[:length]
    if len(out) > max_output:
        raise CompressionError(f"LZS output exceeds {max_output} bytes")
    return bytes(out)


def _byte_windows(raw: bytes) -> list[int]:
    """windows[i] = bytes i..i+3 as a big-endian int (zero past the end), for i in 0..len(raw).

    Any 17 bits starting inside byte i lie in windows[i]. Built with four strided
    `struct.unpack_from` calls so the per-byte work stays in C.
    """
    count = len(raw) + 1
    padded = raw + bytes(8)
    windows = [0] * count
    for phase in range(4):
        words = len(range(phase, count, 4))
        windows[phase::4] = struct.unpack_from(f">{words}I", padded, phase)
    return windows


def compress(data: bytes | bytearray | memoryview) -> bytes:
    """Encode one packet with greedy longest matches over a 2-byte hash chain."""
    encoded = _encode(bytes(data), give_up=False)
    assert encoded is not None  # only a give-up returns None
    return encoded


def compress_smaller(data: bytes | bytearray | memoryview) -> bytes | None:
    """Encode one packet if that makes it smaller, else None.

    Gives up early on data that does not compress (encrypted traffic inside the tunnel is the
    common case): once the output reaches the input size, or when the first
    `GIVE_UP_PROBE_LENGTH` or more input bytes produced no saving at all.
    """
    return _encode(bytes(data), give_up=True)


def _encode(src: bytes, *, give_up: bool) -> bytes | None:
    size = len(src)
    out = bytearray()
    bits = 0  # pending output bits, flushed 64 bytes at a time to keep the int small
    bit_count = 0
    keys = [(a << 8) | b for a, b in itertools.pairwise(src)]
    heads: dict[int, int] = {}
    previous = [-1] * size
    position = 0
    while position < size:
        best_length = 0
        best_offset = 0
        remaining = size - position
        if remaining >= MIN_MATCH_LENGTH:
            key = keys[position]
            candidate = heads.get(key, -1)
            previous[position] = candidate
            heads[key] = position
            chain = MAX_CHAIN_LENGTH
            while candidate >= 0 and chain and position - candidate <= WINDOW_SIZE:
                # A candidate can only win if it also matches at the current best length.
                if src[candidate + best_length] == src[position + best_length]:
                    length = MIN_MATCH_LENGTH
                    # Compare 8 bytes at a time in C, then finish byte by byte.
                    while (
                        length + 8 <= remaining
                        and src[candidate + length : candidate + length + 8]
                        == src[position + length : position + length + 8]
                    ):
                        length += 8
                    while length < remaining and src[candidate + length] == src[position + length]:
                        length += 1
                    if length > best_length:
                        best_length = length
                        best_offset = position - candidate
                        if length == remaining:
                            break
                candidate = previous[candidate]
                chain -= 1
        if best_length:
            if best_offset <= SHORT_OFFSET_LIMIT:
                bits = (bits << 9) | 0x180 | best_offset
                bit_count += 9
            else:
                bits = (bits << 13) | 0x1000 | best_offset
                bit_count += 13
            code, code_bits = _encode_length(best_length)
            bits = (bits << code_bits) | code
            bit_count += code_bits
            end = position + best_length
            # Positions inside the match become candidates for later matches too.
            for index in range(position + 1, min(end, size - 1)):
                key = keys[index]
                previous[index] = heads.get(key, -1)
                heads[key] = index
            position = end
        else:
            bits = (bits << 9) | src[position]
            bit_count += 9
            position += 1
        if bit_count >= 512:
            bit_count -= 512
            out += (bits >> bit_count).to_bytes(64, "big")
            bits &= (1 << bit_count) - 1
            if give_up and (
                len(out) >= size or (position >= GIVE_UP_PROBE_LENGTH and len(out) >= position)
            ):
                return None
    # End marker 1 1 0000000 and seven zero bits, as openconnect writes it, then pad to a byte.
    bits = (bits << 16) | 0xC000
    bit_count += 16
    padding = -bit_count % 8
    out += (bits << padding).to_bytes((bit_count + padding) // 8, "big")
    if give_up and len(out) >= size:
        return None
    return bytes(out)


def _encode_length(length: int) -> tuple[int, int]:
    """The length code for a match as (bits, bit count)."""
    if length <= 4:
        return length - 2, 2
    if length <= 7:
        return 0b1100 | (length - 5), 4
    extra = length - 8
    full_nibbles, last = divmod(extra, 15)
    code = 0b1111
    for _ in range(full_nibbles):
        code = (code << 4) | 0xF
    return (code << 4) | last, 4 * (full_nibbles + 2)
