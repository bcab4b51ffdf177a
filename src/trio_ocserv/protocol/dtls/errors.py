"""The DTLS engine's own error types.

Rules: parsers raise `DtlsDecodeError` for malformed peer bytes; the engines catch it and turn it
into a dropped datagram or an alert event, so nothing but `DtlsError` subclasses ever escapes a
parser, and nothing at all escapes `receive_datagram`. `DtlsLocalError` marks a misuse by our own
code (a bug).
"""

from __future__ import annotations


class DtlsError(Exception):
    """Base class of every error this package raises."""


class DtlsDecodeError(DtlsError):
    """The peer sent bytes that do not parse (truncated, bad lengths, bad padding/MAC)."""


class DtlsLocalError(DtlsError):
    """Our own code used the engine wrongly (e.g. sending data before the handshake finished)."""
