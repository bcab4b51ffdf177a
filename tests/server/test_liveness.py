"""Tunnel timers with explicit times (protocol.md §8.2)."""

from __future__ import annotations

from trio_ocserv.server.liveness import LivenessAction, TunnelLiveness


def test_dpd_request_at_twice_dpd_then_dead_at_three_times() -> None:
    t = TunnelLiveness.start(0.0, dpd=10, idle_timeout=None, session_deadline=None)
    assert t.next_deadline() == 20
    assert t.poll(19.9) is None
    assert t.poll(20) is LivenessAction.SEND_DPD_REQUEST
    assert t.poll(21) is None  # one request per silence
    assert t.next_deadline() == 30
    assert t.poll(30) is LivenessAction.PEER_DEAD


def test_any_frame_resets_dpd() -> None:
    t = TunnelLiveness.start(0.0, dpd=10, idle_timeout=None, session_deadline=None)
    assert t.poll(20) is LivenessAction.SEND_DPD_REQUEST
    t.frame_received(25)
    assert t.next_deadline() == 45
    assert t.poll(44) is None
    assert t.poll(45) is LivenessAction.SEND_DPD_REQUEST


def test_idle_timeout_counts_only_data() -> None:
    t = TunnelLiveness.start(0.0, dpd=0, idle_timeout=100, session_deadline=None)
    t.frame_received(90)  # a DPD or keepalive: not data
    assert t.poll(99) is None
    assert t.poll(100) is LivenessAction.IDLE_TIMEOUT
    t2 = TunnelLiveness.start(0.0, dpd=0, idle_timeout=100, session_deadline=None)
    t2.data_moved(60)
    assert t2.next_deadline() == 160
    assert t2.poll(159) is None


def test_session_deadline_wins_and_nothing_due_without_timers() -> None:
    t = TunnelLiveness.start(0.0, dpd=10, idle_timeout=5, session_deadline=5)
    assert t.poll(5) is LivenessAction.SESSION_TIMEOUT
    none = TunnelLiveness.start(0.0, dpd=0, idle_timeout=None, session_deadline=None)
    assert none.next_deadline() is None
    assert none.poll(1e9) is None
