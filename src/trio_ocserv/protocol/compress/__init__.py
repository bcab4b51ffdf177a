"""Tunnel packet compression (protocol.md §9): negotiation, policy and the two stateless codecs.

`negotiate` picks an algorithm per channel at CONNECT; `channel` applies the send policy and the
COMPRESSED framing; `lzs` is our own Stac LZS codec; `oc_lz4` wraps the `lz4` package. All of
it is pure: bytes in, bytes out, `CompressionError` for anything a peer can get wrong.
"""

from trio_ocserv.protocol.compress.channel import (
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    DEFAULT_NO_COMPRESS_LIMIT,
    MIN_NO_COMPRESS_LIMIT,
    ChannelCompressor,
    effective_no_compress_limit,
    ip_packet_from,
)
from trio_ocserv.protocol.compress.errors import CompressionError
from trio_ocserv.protocol.compress.negotiate import (
    DEFAULT_PRIORITIES,
    CompressionAlgorithm,
    NegotiatedCompression,
    choose_algorithm,
    negotiate_compression,
    parse_accept_encoding,
    parse_algorithm_priorities,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "DEFAULT_NO_COMPRESS_LIMIT",
    "DEFAULT_PRIORITIES",
    "MIN_NO_COMPRESS_LIMIT",
    "ChannelCompressor",
    "CompressionAlgorithm",
    "CompressionError",
    "NegotiatedCompression",
    "choose_algorithm",
    "effective_no_compress_limit",
    "ip_packet_from",
    "negotiate_compression",
    "parse_accept_encoding",
    "parse_algorithm_priorities",
]
