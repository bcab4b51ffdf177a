"""How occtl writes values: dates, durations, byte counts and rates.

Formats as observed from occtl 1.1.6 (tests/ctl/data): dates are local time `YYYY-MM-DD HH:MM`;
durations are 7-column right-aligned texts (`    4s`, ` 5m:00s`, ` 2h:05m`, ` 3days`); byte
counts below 1000 are `N bytes`, above that one decimal in decimal units (`26.6 KB`).
Pure functions; the caller passes the current time.
"""

from __future__ import annotations

import time

__all__ = ["format_bytes", "format_date", "format_duration", "format_rate"]

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_UNITS = ("KB", "MB", "GB", "TB")


def format_date(epoch_seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch_seconds))


def format_duration(seconds: float) -> str:
    """A span as occtl shows it: `    4s`, ` 5m:00s`, ` 2h:05m`, ` 3days`."""
    t = max(0, int(seconds))
    if t >= 2 * _DAY:
        return f"{t // _DAY:2d}days"
    if t >= _HOUR:
        return f"{t // _HOUR:2d}h:{(t // _MINUTE) % 60:02d}m"
    if t > _MINUTE:
        return f"{t // _MINUTE:2d}m:{t % _MINUTE:02d}s"
    return f"{t:5d}s"


def format_bytes(count: int | float, suffix: str = "") -> str:
    """`300 bytes`, `26.6 KB` (1000-based, as occtl)."""
    if count < 1000:
        return f"{int(count)} bytes{suffix}"
    value = float(count)
    for unit in _UNITS:
        value /= 1000
        if value < 1000 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}{suffix}"
    raise AssertionError("unreachable")


def format_rate(count: int, seconds: float) -> str:
    """Average bytes per second over `seconds` (at least one), e.g. `8.9 KB/sec`."""
    return format_bytes(count // max(1, int(seconds)), "/sec")
