"""occtl's value formats: durations in every range, byte counts in every unit."""

from __future__ import annotations

import pytest

from trio_ocserv.ctl.value_format import format_bytes, format_date, format_duration, format_rate


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "    0s"),
        (4, "    4s"),
        (60, "   60s"),
        (61, " 1m:01s"),
        (300, " 5m:00s"),
        (3599, "59m:59s"),
        (3600, " 1h:00m"),
        (2 * 86400 - 1, "47h:59m"),
        (2 * 86400, " 2days"),
        (-5, "    0s"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 bytes"),
        (999, "999 bytes"),
        (1000, "1.0 KB"),
        (26608, "26.6 KB"),
        (1_234_567, "1.2 MB"),
        (5_000_000_000, "5.0 GB"),
        (7 * 10**15, "7000.0 TB"),
    ],
)
def test_byte_counts(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_rates_never_divide_by_zero() -> None:
    assert format_rate(500, 0) == "500 bytes/sec"
    assert format_rate(604, 4) == "151 bytes/sec"


def test_dates_are_minutes_in_local_time(utc: None) -> None:
    assert format_date(1795690702) == "2026-11-26 10:58"
