"""A tunnel's clocks: DPD, idle timeout and session timeout, as a pure object (protocol.md §8.2).

The tunnel tells it what happened (`frame_received`, `data_moved`) with the current time, asks
`next_deadline()` how long it may sleep, and calls `poll(now)` when it wakes; `poll` says what to
do. No clock reads and no I/O here, so every rule is tested with explicit times.

Rules (ocserv checks these every ~30 s; we are exact, which admins get as "better, not worse"):
* CSTP: nothing received for 2 x dpd -> send one DPD request; nothing for 3 x dpd -> dead.
* idle-timeout: no data packet (DATA/COMPRESSED, either direction) for that long -> end.
  DPD and keepalive frames do not count.
* session-timeout: the absolute deadline given at start (a reconnect cannot extend it).
The server never sends KEEPALIVE (ocserv does not).
"""

from __future__ import annotations

import enum

import attrs


class LivenessAction(enum.Enum):
    SEND_DPD_REQUEST = "send-dpd-request"
    PEER_DEAD = "peer-dead"
    IDLE_TIMEOUT = "idle-timeout"
    SESSION_TIMEOUT = "session-timeout"


@attrs.define
class TunnelLiveness:
    dpd: float  # 0: no DPD
    idle_timeout: float | None  # None: none
    session_deadline: float | None  # absolute time; None: none
    last_received: float
    last_data: float
    dpd_sent_for: float | None = None  # the `last_received` a DPD request was already sent for

    @classmethod
    def start(
        cls, now: float, dpd: float, idle_timeout: float | None, session_deadline: float | None
    ) -> TunnelLiveness:
        return cls(dpd, idle_timeout or None, session_deadline, last_received=now, last_data=now)

    def frame_received(self, now: float) -> None:
        self.last_received = now

    def data_moved(self, now: float) -> None:
        self.last_data = now

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        if self.dpd > 0:
            if self.dpd_sent_for != self.last_received:
                deadlines.append(self.last_received + 2 * self.dpd)
            deadlines.append(self.last_received + 3 * self.dpd)
        if self.idle_timeout:
            deadlines.append(self.last_data + self.idle_timeout)
        if self.session_deadline is not None:
            deadlines.append(self.session_deadline)
        return min(deadlines) if deadlines else None

    def poll(self, now: float) -> LivenessAction | None:
        """The one thing to do now, most final first; None when nothing is due."""
        if self.session_deadline is not None and now >= self.session_deadline:
            return LivenessAction.SESSION_TIMEOUT
        if self.dpd > 0 and now >= self.last_received + 3 * self.dpd:
            return LivenessAction.PEER_DEAD
        if self.idle_timeout and now >= self.last_data + self.idle_timeout:
            return LivenessAction.IDLE_TIMEOUT
        if (
            self.dpd > 0
            and now >= self.last_received + 2 * self.dpd
            and self.dpd_sent_for != self.last_received
        ):
            self.dpd_sent_for = self.last_received
            return LivenessAction.SEND_DPD_REQUEST
        return None
