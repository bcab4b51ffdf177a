"""The CSTP tunnel task group over in-memory streams and an in-memory tun.

Rules: no root, no sockets beyond a socketpair, every test under a hard `fail_after`; timer tests
use trio's `autojump_clock`, so minutes of DPD silence take no wall time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.compress import ChannelCompressor, CompressionAlgorithm
from trio_ocserv.protocol.cstp import CstpPacketType
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd

PING = bytes.fromhex("4500001c000100004001f78ec0a86302c0a86301" "0800f7ff00000000")


class Harness:
    def __init__(self, tunnel: CstpTunnel, client: trio.abc.Stream, tun: MemoryTun) -> None:
        self.tunnel, self.client, self.tun = tunnel, client, tun
        self.decoder = cstp.CstpDecoder()
        self.result: TunnelEnd | None = None
        self.done = trio.Event()

    async def next_frame(self) -> cstp.CstpFrame:
        while (frame := self.decoder.next_frame()) is None:
            data = await self.client.receive_some(65536)
            if not data:
                raise AssertionError("stream closed while waiting for a frame")
            self.decoder.receive_data(data)
        return frame


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    marker = request.node.get_closest_marker("tunnel")
    options = dict(marker.kwargs) if marker else {}
    server_stream, client_stream = trio.testing.memory_stream_pair()
    tun = MemoryTun()
    liveness = TunnelLiveness.start(
        trio.current_time(),
        dpd=options.pop("dpd", 0),
        idle_timeout=options.pop("idle_timeout", None),
        session_deadline=options.pop("session_deadline", None),
    )
    tunnel = CstpTunnel(server_stream, tun, liveness, **options)
    h = Harness(tunnel, client_stream, tun)

    async def run() -> None:
        h.result = await tunnel.run()
        h.done.set()

    # Virtual seconds under autojump_clock, real ones otherwise.
    limit = 100_000 if "autojump_clock" in request.fixturenames else 10
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            yield h
            tunnel.stop()
    tun.close()


async def test_packets_flow_both_ways(harness: Harness) -> None:
    await harness.client.send_all(cstp.encode_frame(CstpPacketType.DATA, PING))
    assert await harness.tun.receive_written() == PING
    harness.tun.inject(PING[::-1])
    frame = await harness.next_frame()
    assert (frame.packet_type, frame.payload) == (CstpPacketType.DATA, PING[::-1])
    counters = harness.tunnel.counters
    assert (counters.packets_in, counters.bytes_in) == (1, len(PING))
    assert (counters.packets_out, counters.bytes_out) == (1, len(PING))


async def test_many_frames_in_one_read_and_split_frames(harness: Harness) -> None:
    wire = b"".join(cstp.encode_frame(CstpPacketType.DATA, PING + bytes([i])) for i in range(50))
    await harness.client.send_all(wire[:13])
    await harness.client.send_all(wire[13:])
    got = [await harness.tun.receive_written() for _ in range(50)]
    assert got == [PING + bytes([i]) for i in range(50)]


async def test_dpd_request_is_echoed(harness: Harness) -> None:
    await harness.client.send_all(cstp.encode_frame(CstpPacketType.DPD_REQUEST, b"xyz"))
    frame = await harness.next_frame()
    assert (frame.packet_type, frame.payload) == (CstpPacketType.DPD_RESPONSE, b"xyz")


async def test_client_logout_ends_with_user_logout(harness: Harness) -> None:
    await harness.client.send_all(cstp.encode_disconnect("Aborted by caller"))
    await harness.done.wait()
    assert harness.result is TunnelEnd.USER_LOGOUT


async def test_empty_client_disconnect_is_temporary(harness: Harness) -> None:
    await harness.client.send_all(cstp.encode_frame(CstpPacketType.DISCONNECT))
    await harness.done.wait()
    assert harness.result is TunnelEnd.CLIENT_DISCONNECT


async def test_garbage_is_a_protocol_error(harness: Harness) -> None:
    await harness.client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    await harness.done.wait()
    assert harness.result is TunnelEnd.PROTOCOL_ERROR


async def test_connection_loss(harness: Harness) -> None:
    await harness.client.aclose()
    await harness.done.wait()
    assert harness.result is TunnelEnd.CONNECTION_LOST


async def test_server_stop_sends_empty_disconnect(harness: Harness) -> None:
    harness.tunnel.stop(TunnelEnd.SERVER_DISCONNECT)
    frame = await harness.next_frame()
    assert (frame.packet_type, frame.payload) == (CstpPacketType.DISCONNECT, b"")
    await harness.done.wait()
    assert harness.result is TunnelEnd.SERVER_DISCONNECT


@pytest.mark.tunnel(dpd=60)
async def test_silent_client_gets_dpd_then_is_dead(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    frame = await harness.next_frame()
    assert frame.packet_type == CstpPacketType.DPD_REQUEST
    assert trio.current_time() - start == pytest.approx(120)
    frame = await harness.next_frame()
    assert frame.packet_type == CstpPacketType.DISCONNECT
    await harness.done.wait()
    assert harness.result is TunnelEnd.DPD_TIMEOUT
    assert trio.current_time() - start == pytest.approx(180)


@pytest.mark.tunnel(dpd=60)
async def test_keepalives_keep_a_client_alive(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    for _ in range(10):
        await trio.sleep(100)
        await harness.client.send_all(cstp.encode_frame(CstpPacketType.KEEPALIVE))
    await trio.sleep(1)
    assert not harness.done.is_set()


@pytest.mark.tunnel(idle_timeout=300)
async def test_idle_timeout_ignores_keepalives(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    for _ in range(5):
        await trio.sleep(50)
        await harness.client.send_all(cstp.encode_frame(CstpPacketType.KEEPALIVE))
    await harness.done.wait()
    assert harness.result is TunnelEnd.IDLE_TIMEOUT
    assert trio.current_time() - start == pytest.approx(300)


@pytest.mark.tunnel(session_deadline=1000.0)
async def test_session_timeout_at_the_absolute_deadline(
    harness: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await harness.done.wait()
    assert harness.result is TunnelEnd.SESSION_TIMEOUT
    assert trio.current_time() == pytest.approx(1000)


LZ4 = ChannelCompressor(CompressionAlgorithm.OC_LZ4, no_compress_limit=64)


@pytest.mark.tunnel(compressor=LZ4)
async def test_compressed_packets_both_ways(harness: Harness) -> None:
    packet = PING + bytes(400)  # compressible, above the limit
    harness.tun.inject(packet)
    frame = await harness.next_frame()
    assert frame.packet_type == CstpPacketType.COMPRESSED and len(frame.payload) < len(packet)
    await harness.client.send_all(cstp.encode_frame(CstpPacketType.COMPRESSED, frame.payload))
    assert await harness.tun.receive_written() == packet
