"""The 64-entry anti-replay window of RFC 6347 §4.1.2.6.

Rules: `check` never changes state; only `mark` (called after the record authenticated) does, so a
forged record cannot move the window.
"""

from __future__ import annotations

from typing import Protocol

WINDOW_SIZE = 64
_WINDOW_MASK = (1 << WINDOW_SIZE) - 1


class ReplayCheck(Protocol):
    """What the engine needs of a window; the C data path's object offers the same two calls, so
    one window serves both paths."""

    def check(self, seq: int) -> bool: ...

    def mark(self, seq: int) -> None: ...


class ReplayWindow:
    """Sequence numbers seen in one epoch: the highest one and a bitmap of the 63 below it."""

    __slots__ = ("_bitmap", "_highest")

    def __init__(self) -> None:
        self._highest = -1
        self._bitmap = 0  # bit i set = sequence number (highest - i) was seen

    def check(self, seq: int) -> bool:
        """True if `seq` is new and not too old to judge."""
        if seq > self._highest:
            return True
        offset = self._highest - seq
        if offset >= WINDOW_SIZE:
            return False
        return not (self._bitmap >> offset) & 1

    def mark(self, seq: int) -> None:
        if seq > self._highest:
            shift = seq - self._highest
            # Sequence numbers are 48-bit: never shift by more than the window.
            self._bitmap = (
                1 if shift >= WINDOW_SIZE else ((self._bitmap << shift) | 1) & _WINDOW_MASK
            )
            self._highest = seq
        else:
            self._bitmap |= 1 << (self._highest - seq)

    def state(self) -> tuple[int, int]:
        """(highest sequence seen or -1, bitmap), to hand the window over."""
        return self._highest, self._bitmap
