"""Compression negotiation (protocol.md §9.1): what ocserv answers for each channel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.compress import (
    DEFAULT_PRIORITIES,
    CompressionAlgorithm,
    NegotiatedCompression,
    choose_algorithm,
    negotiate_compression,
    parse_accept_encoding,
    parse_algorithm_priorities,
)

LZ4 = CompressionAlgorithm.OC_LZ4
LZS = CompressionAlgorithm.LZS
OPENCONNECT_OFFER = "oc-lz4,lzs"  # observed in both Accept-Encoding headers


def test_default_priorities_pick_lz4_on_both_channels() -> None:
    # Observed: "SSL + LZ4 connected and DTLS + LZ4 connected".
    result = negotiate_compression(OPENCONNECT_OFFER, OPENCONNECT_OFFER, enabled=True)
    assert result == NegotiatedCompression(cstp=LZ4, dtls=LZ4)
    assert result.response_headers() == [
        ("X-DTLS-Content-Encoding", "oc-lz4"),
        ("X-CSTP-Content-Encoding", "oc-lz4"),
    ]


def test_lzs_priority_100_picks_lzs() -> None:
    # Observed with compression-algo-priority = lzs:100: "SSL + LZS ... DTLS + LZS".
    priorities = parse_algorithm_priorities("lzs:100")
    result = negotiate_compression(
        OPENCONNECT_OFFER, OPENCONNECT_OFFER, enabled=True, priorities=priorities
    )
    assert result == NegotiatedCompression(cstp=LZS, dtls=LZS)


def test_compression_off_answers_nothing() -> None:
    result = negotiate_compression(OPENCONNECT_OFFER, OPENCONNECT_OFFER, enabled=False)
    assert result == NegotiatedCompression(cstp=None, dtls=None)
    assert result.response_headers() == []


def test_channel_without_offer_gets_no_compression() -> None:
    # openconnect --compression=off sends neither header; --no-dtls omits the DTLS one.
    result = negotiate_compression(OPENCONNECT_OFFER, None, enabled=True)
    assert result == NegotiatedCompression(cstp=LZ4, dtls=None)
    assert result.response_headers() == [("X-CSTP-Content-Encoding", "oc-lz4")]


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ("oc-lz4,lzs,deflate", LZ4),  # --compression=all: deflate is never chosen
        ("deflate", None),
        ("lzs", LZS),
        ("LZS, OC-LZ4", LZ4),
        ("", None),
        ("gzip,br", None),
    ],
)
def test_choice_for_offers(offer: str, expected: CompressionAlgorithm | None) -> None:
    assert choose_algorithm(offer, enabled=True) is expected


def test_zero_priority_disables_an_algorithm() -> None:
    priorities = parse_algorithm_priorities("oc-lz4:0")
    assert choose_algorithm(OPENCONNECT_OFFER, enabled=True, priorities=priorities) is LZS
    assert choose_algorithm("oc-lz4", enabled=True, priorities=priorities) is None


def test_priority_pairs_parse_over_defaults() -> None:
    assert parse_algorithm_priorities("lzs:100") == {LZ4: 90, LZS: 100}
    assert parse_algorithm_priorities("lzs:10:oc-lz4:20") == {LZ4: 20, LZS: 10}
    assert DEFAULT_PRIORITIES == {LZ4: 90, LZS: 80}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lzs", "pairs"),
        ("lzs:", "pairs"),
        ("zstd:100", "unknown algorithm 'zstd'"),
        ("lzs:high", "not a number"),
        ("lzs:-5", "not a number"),
    ],
)
def test_bad_priority_settings_name_the_problem(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_algorithm_priorities(setting)


def test_accept_encoding_keeps_client_order() -> None:
    assert parse_accept_encoding(" oc-lz4 ,lzs,,deflate ") == ("oc-lz4", "lzs", "deflate")


@settings(max_examples=100, deadline=None)
@given(
    offered=st.lists(st.sampled_from(["oc-lz4", "lzs", "deflate", "x"]), max_size=4),
    lz4_priority=st.integers(0, 200),
    lzs_priority=st.integers(0, 200),
)
def test_choice_is_the_offered_algorithm_with_highest_positive_priority(
    offered: list[str], lz4_priority: int, lzs_priority: int
) -> None:
    priorities = {LZ4: lz4_priority, LZS: lzs_priority}
    chosen = choose_algorithm(",".join(offered), enabled=True, priorities=priorities)
    candidates = [a for a in (LZ4, LZS) if a.value in offered and priorities[a] > 0]
    if not candidates:
        assert chosen is None
    else:
        assert chosen is not None
        assert chosen.value in offered
        assert priorities[chosen] == max(priorities[a] for a in candidates)
