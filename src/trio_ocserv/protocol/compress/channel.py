"""Per-channel compression policy and framing of compressed packets (protocol.md §9.2).

A `ChannelCompressor` is built once per channel from the negotiated algorithm. It decides which
outgoing packets are worth compressing (larger than `no-compress-limit`, and only when the result
is smaller), frames them as COMPRESSED (type 0x08) for CSTP or DTLS, and turns received
DATA/COMPRESSED payloads back into IP packets under a hard size limit. Every packet is
compressed on its own (stateless), since DTLS loses and reorders packets.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.compress import lzs, oc_lz4
from trio_ocserv.protocol.compress.errors import CompressionError
from trio_ocserv.protocol.compress.negotiate import CompressionAlgorithm
from trio_ocserv.protocol.cstp import CstpFrame, CstpPacketType

DEFAULT_NO_COMPRESS_LIMIT = 256
MIN_NO_COMPRESS_LIMIT = 64  # ocserv raises smaller settings to this
# openconnect reserves max(16384, MTU) for a decompressed packet and ocserv 16 KiB.
DEFAULT_MAX_DECOMPRESSED_SIZE = 16384

_COMPRESSORS: dict[
    CompressionAlgorithm, Callable[[bytes | bytearray | memoryview], bytes | None]
] = {
    CompressionAlgorithm.OC_LZ4: oc_lz4.compress_smaller,
    CompressionAlgorithm.LZS: lzs.compress_smaller,
}
_DECOMPRESSORS: dict[
    CompressionAlgorithm, Callable[[bytes | bytearray | memoryview, int], bytes]
] = {
    CompressionAlgorithm.OC_LZ4: oc_lz4.decompress,
    CompressionAlgorithm.LZS: lzs.decompress,
}


def effective_no_compress_limit(configured: int) -> int:
    """The `no-compress-limit` ocserv actually applies (never below 64)."""
    return max(MIN_NO_COMPRESS_LIMIT, configured)


@attrs.frozen(slots=True)
class ChannelCompressor:
    """Compression for one channel (CSTP or DTLS) of one tunnel."""

    algorithm: CompressionAlgorithm
    no_compress_limit: int = attrs.field(
        default=DEFAULT_NO_COMPRESS_LIMIT, converter=effective_no_compress_limit
    )
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE

    def compress(self, packet: bytes | bytearray | memoryview) -> bytes | None:
        """The compressed payload, or None when the packet should go out uncompressed
        (not larger than the limit, or compression would not make it smaller)."""
        if len(packet) <= self.no_compress_limit:
            return None
        return _COMPRESSORS[self.algorithm](packet)

    def decompress(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Decode a COMPRESSED payload; raises CompressionError, never returns more than
        `max_decompressed_size` bytes. Any size of compressed packet is accepted."""
        return _DECOMPRESSORS[self.algorithm](payload, self.max_decompressed_size)

    def cstp_frame(self, packet: bytes | bytearray | memoryview) -> bytes:
        """A whole CSTP frame for an IP packet: COMPRESSED when that pays off, else DATA."""
        compressed = self.compress(packet)
        if compressed is None:
            return cstp.encode_frame(CstpPacketType.DATA, packet)
        return cstp.encode_frame(CstpPacketType.COMPRESSED, compressed)

    def dtls_message(self, packet: bytes | bytearray | memoryview) -> bytes:
        """A DTLS plaintext for an IP packet: type byte 0x08 + compressed, or 0x00 + packet."""
        compressed = self.compress(packet)
        if compressed is None:
            return cstp.encode_dtls_message(CstpPacketType.DATA, packet)
        return cstp.encode_dtls_message(CstpPacketType.COMPRESSED, compressed)


def ip_packet_from(frame: CstpFrame, compressor: ChannelCompressor | None) -> bytes:
    """The IP packet carried by a DATA or COMPRESSED frame (CSTP or DTLS).

    A COMPRESSED frame on a channel without negotiated compression is a CompressionError.
    """
    if frame.packet_type == CstpPacketType.DATA:
        return frame.payload
    if frame.packet_type != CstpPacketType.COMPRESSED:
        raise ValueError(f"packet type {frame.packet_type!r} does not carry an IP packet")
    if compressor is None:
        raise CompressionError("compressed packet on a channel without negotiated compression")
    return compressor.decompress(frame.payload)
