"""What keeps a DTLS login quick in `DtlsChannel`: each handshake step is answered inside the
datagram handler, the PSK keys are derived right after our flight leaves, and re-arming the
retransmission timer moves the timer task's deadline instead of waking that task.

Rules: no sockets (a recording endpoint), trio's autojump clock for the retransmission, and a
hard fail_after on every test.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.protocol.dtls.client import DtlsPskClient
from trio_ocserv.protocol.dtls.server import PskServerParameters
from trio_ocserv.server import dtls_fastpath
from trio_ocserv.server.dtls_channel import DtlsChannel
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tunnel import TunnelCounters

PSK = bytes(range(32))
APP_ID = bytes(32 * [0x5A])
PEER = ("198.18.0.2", 40000)


@attrs.define
class RecordingEndpoint:
    """The part of `UdpEndpoint` a channel uses during a handshake; keeps what it sends."""

    sent: list[tuple[bytes, tuple[str, int]]] = attrs.Factory(list)
    routed: dict[tuple[str, int], object] = attrs.Factory(dict)

    def send(self, datagram: bytes, address: tuple[str, int]) -> bool:
        self.sent.append((datagram, address))
        return True

    def route_address(self, address: tuple[str, int], sink: object) -> None:
        self.routed[address] = sink

    def unroute_fast(self, sink: object) -> None:
        pass

    def forget(self, sink: object) -> None:
        self.routed = {a: s for a, s in self.routed.items() if s is not sink}


class StepCounter(trio.abc.Instrument):
    """Counts the steps each task takes (by task name)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


def _channel(endpoint: RecordingEndpoint) -> DtlsChannel:
    return DtlsChannel(
        endpoint,  # type: ignore[arg-type]
        PskServerParameters(PSK),
        tun=MemoryTun(),
        counters=TunnelCounters(),
        liveness=TunnelLiveness.start(trio.current_time(), 0, None, None),
        compressor=None,
        dpd=0,
        mtu=1400,
        label="test",
    )


@pytest.fixture(autouse=True)
def _python_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtls_fastpath, "fastpath", None)  # no UDP socket for the C path here


async def test_each_handshake_step_is_answered_inside_the_datagram_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoint = RecordingEndpoint()
    channel = _channel(endpoint)
    client = DtlsPskClient(PSK, APP_ID)
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.run_timers, name="channel-timers")
                await trio.testing.wait_all_tasks_blocked()
                timer_steps = counter.steps["channel-timers"]
                client.start(trio.current_time())
                (hello,) = client.datagrams_to_send()
                channel.client_hello(hello, PEER, trio.current_time())
                flight = [d for d, _ in endpoint.sent]
                assert len(flight) == 1 and channel.handshake is not None
                # Keys for the client's answer exist before that answer arrives.
                assert channel.handshake._epoch_keys is not None
                for datagram in flight:
                    client.receive_datagram(datagram, trio.current_time())
                for datagram in client.datagrams_to_send():
                    channel.datagram(datagram, PEER, trio.current_time())
                for datagram, _ in endpoint.sent[1:]:
                    client.receive_datagram(datagram, trio.current_time())
                assert client.established and channel.active is not None and channel.path_up
                await trio.testing.wait_all_tasks_blocked()
                # The retransmission timer was armed and the path came up without the timer
                # task running in between.
                assert counter.steps["channel-timers"] == timer_steps
                nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)


async def test_a_lost_server_flight_is_resent_from_the_moved_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    endpoint = RecordingEndpoint()
    channel = _channel(endpoint)
    client = DtlsPskClient(PSK, APP_ID)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_timers)
            await trio.testing.wait_all_tasks_blocked()
            client.start(trio.current_time())
            (hello,) = client.datagrams_to_send()
            started = trio.current_time()
            channel.client_hello(hello, PEER, started)
            assert len(endpoint.sent) == 1  # ... and lost on the way
            while len(endpoint.sent) < 2:
                await trio.sleep(0.05)
            resent_after = trio.current_time() - started
            assert 0.4 <= resent_after < 0.5  # the engine's first retransmission timeout
            first, again = (d for d, _ in endpoint.sent)
            assert first[:1] == again[:1] == b"\x16" and len(first) == len(again)
            nursery.cancel_scope.cancel()
