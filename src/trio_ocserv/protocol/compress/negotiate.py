"""Choosing the compression algorithm per channel at CONNECT time (protocol.md §9.1).

The client offers `X-CSTP-Accept-Encoding` / `X-DTLS-Accept-Encoding` (comma-separated); with
`compression = true` the server answers each offered channel with the offered algorithm of the
highest server priority (`oc-lz4` 90 > `lzs` 80 unless `compression-algo-priority` changes it)
in `X-CSTP-Content-Encoding` / `X-DTLS-Content-Encoding`. `deflate` is never chosen, as ocserv.
Pure functions over header values and settings; the HTTP layer reads and writes the headers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

CSTP_ACCEPT_HEADER = "X-CSTP-Accept-Encoding"
DTLS_ACCEPT_HEADER = "X-DTLS-Accept-Encoding"
CSTP_CONTENT_HEADER = "X-CSTP-Content-Encoding"
DTLS_CONTENT_HEADER = "X-DTLS-Content-Encoding"


class CompressionAlgorithm(enum.Enum):
    """Algorithms the server can select; the value is the wire name."""

    OC_LZ4 = "oc-lz4"
    LZS = "lzs"


DEFAULT_PRIORITIES: Mapping[CompressionAlgorithm, int] = {
    CompressionAlgorithm.OC_LZ4: 90,
    CompressionAlgorithm.LZS: 80,
}


def parse_algorithm_priorities(setting: str) -> dict[CompressionAlgorithm, int]:
    """Parse a `compression-algo-priority` value such as `lzs:100` (several `name:priority`
    pairs may follow each other, colon-separated) over the defaults.

    Raises ValueError naming the bad part; the config layer adds file and line.
    """
    priorities = dict(DEFAULT_PRIORITIES)
    parts = [part.strip() for part in setting.split(":")]
    if len(parts) % 2 or not all(parts):
        raise ValueError(f"compression-algo-priority: {setting!r} is not name:priority pairs")
    for name, number in zip(parts[0::2], parts[1::2], strict=True):
        try:
            algorithm = CompressionAlgorithm(name.lower())
        except ValueError:
            known = ", ".join(a.value for a in CompressionAlgorithm)
            raise ValueError(
                f"compression-algo-priority: unknown algorithm {name!r} (known: {known})"
            ) from None
        if not number.isdigit():
            raise ValueError(f"compression-algo-priority: priority {number!r} is not a number")
        priorities[algorithm] = int(number)
    return priorities


def parse_accept_encoding(header_value: str) -> tuple[str, ...]:
    """The algorithm names a client offers, lowercased, in its order (`oc-lz4,lzs`)."""
    return tuple(name for part in header_value.split(",") if (name := part.strip().lower()))


def choose_algorithm(
    offered: str | None,
    *,
    enabled: bool,
    priorities: Mapping[CompressionAlgorithm, int] = DEFAULT_PRIORITIES,
) -> CompressionAlgorithm | None:
    """The algorithm to answer for one channel's Accept-Encoding header, or None for none.

    Ties keep the default order (oc-lz4 before lzs); priority 0 or below disables one.
    """
    if not enabled or offered is None:
        return None
    names = set(parse_accept_encoding(offered))
    best: CompressionAlgorithm | None = None
    best_priority = 0
    for algorithm in CompressionAlgorithm:
        priority = priorities.get(algorithm, 0)
        if algorithm.value in names and priority > best_priority:
            best, best_priority = algorithm, priority
    return best


@attrs.frozen(slots=True)
class NegotiatedCompression:
    """The outcome for both channels of one tunnel."""

    cstp: CompressionAlgorithm | None
    dtls: CompressionAlgorithm | None

    def response_headers(self) -> list[tuple[str, str]]:
        """Response headers in ocserv's order (DTLS first, then CSTP; §5.3 rows 35-36).
        The DTLS one is sent even when DTLS is otherwise off."""
        headers: list[tuple[str, str]] = []
        if self.dtls is not None:
            headers.append((DTLS_CONTENT_HEADER, self.dtls.value))
        if self.cstp is not None:
            headers.append((CSTP_CONTENT_HEADER, self.cstp.value))
        return headers


def negotiate_compression(
    cstp_accept: str | None,
    dtls_accept: str | None,
    *,
    enabled: bool,
    priorities: Mapping[CompressionAlgorithm, int] = DEFAULT_PRIORITIES,
) -> NegotiatedCompression:
    """Negotiate both channels from the client's two Accept-Encoding header values."""
    return NegotiatedCompression(
        cstp=choose_algorithm(cstp_accept, enabled=enabled, priorities=priorities),
        dtls=choose_algorithm(dtls_accept, enabled=enabled, priorities=priorities),
    )
