"""Connect/disconnect events fanned out to every `ctl show events` listener.

The server publishes synchronously from the tunnel code (never blocks, never fails); each
listener has a bounded queue, and a listener that does not keep up loses events rather than
slowing tunnels down (it is told how many it missed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio

from trio_ocserv.ctl.records import TunnelEvent

__all__ = ["EventFeed", "EventSubscription"]

_QUEUE_LENGTH = 256


class EventSubscription:
    """One listener's queue; iterate `receive` for events."""

    def __init__(self, queue_length: int) -> None:
        self._send, self.receive = trio.open_memory_channel[TunnelEvent](queue_length)
        self.dropped = 0

    def offer(self, event: TunnelEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def close(self) -> None:
        self._send.close()


class EventFeed:
    def __init__(self, queue_length: int = _QUEUE_LENGTH) -> None:
        if queue_length < 1:
            raise ValueError("queue_length must be at least 1")
        self.queue_length = queue_length
        self._subscriptions: set[EventSubscription] = set()

    @property
    def listeners(self) -> int:
        return len(self._subscriptions)

    def publish(self, event: TunnelEvent) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[EventSubscription]:
        subscription = EventSubscription(self.queue_length)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription.close()
