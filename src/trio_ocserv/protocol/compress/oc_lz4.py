"""`oc-lz4`: one raw LZ4 block per packet, no size prefix, no frame, no checksum (protocol.md §9.3).

The codec itself is the `lz4` package (C); this module only fixes the framing and turns every
failure into `CompressionError`.
"""

from __future__ import annotations

import lz4.block

from trio_ocserv.protocol.compress.errors import CompressionError


def compress(data: bytes | bytearray | memoryview) -> bytes:
    """Compress one packet as a bare LZ4 block (the peer learns the size by decoding)."""
    result: bytes = lz4.block.compress(data, store_size=False)
    return result


def compress_smaller(data: bytes | bytearray | memoryview) -> bytes | None:
    """The compressed block if it is smaller than the packet, else None."""
    result = compress(data)
    return result if len(result) < len(data) else None


def decompress(data: bytes | bytearray | memoryview, max_output: int) -> bytes:
    """Decode one LZ4 block into at most `max_output` bytes."""
    if not data:
        # An LZ4 block always has at least one token byte.
        raise CompressionError("empty LZ4 block")
    if max_output <= 0:
        raise CompressionError("LZ4 output limit must be positive")
    try:
        # python-lz4 treats uncompressed_size as the output capacity and returns what was decoded.
        result: bytes = lz4.block.decompress(data, uncompressed_size=max_output)
    except lz4.block.LZ4BlockError as exc:
        raise CompressionError(f"corrupt LZ4 block or output above {max_output} bytes") from exc
    return result
