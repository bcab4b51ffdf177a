"""The 64-entry anti-replay window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.dtls.replay import WINDOW_SIZE, ReplayWindow


def test_new_numbers_pass_and_repeats_fail() -> None:
    window = ReplayWindow()
    for seq in (0, 1, 5, 3):
        assert window.check(seq)
        window.mark(seq)
        assert not window.check(seq)
    assert window.check(2) and window.check(4) and window.check(6)


def test_numbers_older_than_the_window_fail() -> None:
    window = ReplayWindow()
    window.mark(100)
    assert window.check(100 - WINDOW_SIZE + 1)
    assert not window.check(100 - WINDOW_SIZE)
    window.mark(99)
    window.mark(100 + WINDOW_SIZE * 3)  # a big jump leaves no stale bits behind
    assert all(window.check(100 + WINDOW_SIZE * 3 - i) for i in range(1, WINDOW_SIZE))


def test_check_does_not_change_state() -> None:
    window = ReplayWindow()
    window.check(10)
    assert window.check(10)
    window.mark(10)
    assert window.check(9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200))
def test_matches_a_set_model(sequence: list[int]) -> None:
    window = ReplayWindow()
    seen: set[int] = set()
    highest = -1
    for seq in sequence:
        expected = seq not in seen and seq > highest - WINDOW_SIZE
        assert window.check(seq) == expected
        if expected:
            window.mark(seq)
            seen.add(seq)
            highest = max(highest, seq)


def test_huge_jump_is_cheap() -> None:
    """Found by fuzzing: a forged 48-bit sequence number must not build a 2**48-bit integer."""
    window = ReplayWindow()
    window.mark(0)
    window.mark((1 << 48) - 1)
    assert not window.check(0)
    assert window.check((1 << 48) - 2)
