"""The UDP endpoint and a tunnel's DTLS channel over real loopback UDP, with our DTLS client.

Rules: loopback only, port 0, a MemoryTun instead of a kernel tun, a hard fail_after on every test.
Covers the demultiplexer (by App-ID for ClientHellos, by address after that), roaming to a new
port, stale ClientHello retransmissions, garbage, DPD echo and DISCONNECT.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import attrs
import pytest
import trio

from tests.conftest import require_fastpath
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.protocol.dtls.client import DtlsPskClient
from trio_ocserv.protocol.dtls.events import ApplicationData
from trio_ocserv.protocol.dtls.server import PskServerParameters
from trio_ocserv.server import dtls_fastpath
from trio_ocserv.server.dtls_channel import DtlsChannel
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tunnel import TunnelCounters
from trio_ocserv.server.udp import UdpEndpoint

PSK = bytes(range(32))
APP_ID = bytes(32 * [0x5A])
PACKET = bytes.fromhex("4500001c00010000400100000a0000020a000001") + b"\x08\x00" + bytes(6)


@attrs.define
class Peer:
    """A DTLS client on its own UDP socket (a new one = a new source port)."""

    sock: trio.socket.SocketType
    engine: DtlsPskClient

    async def flush(self, server: tuple[str, int]) -> None:
        for datagram in self.engine.datagrams_to_send():
            await self.sock.sendto(datagram, server)

    async def pump_until_established(self, server: tuple[str, int]) -> None:
        self.engine.start(trio.current_time())
        await self.flush(server)
        while not self.engine.established:
            with trio.move_on_after(0.5):
                data = await self.sock.recv(65536)
                self.engine.receive_datagram(data, trio.current_time())
            self.engine.handle_timer(trio.current_time())
            await self.flush(server)

    async def receive_payload(self) -> bytes:
        while True:
            event = self.engine.next_event()
            if isinstance(event, ApplicationData):
                return event.payload
            if event is None:
                data = await self.sock.recv(65536)
                self.engine.receive_datagram(data, trio.current_time())


@attrs.define
class Setup:
    endpoint: UdpEndpoint
    channel: DtlsChannel
    tun: MemoryTun
    disconnects: list[bytes]
    mode: str

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.endpoint.port)

    async def new_peer(self) -> Peer:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        return Peer(sock, DtlsPskClient(PSK, APP_ID))


@pytest.fixture(params=["c-receive-thread", "c-in-trio-task", "python-data-path"])
async def setup(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    if request.param.startswith("c-"):
        require_fastpath()
        thread = "1" if request.param == "c-receive-thread" else "0"
        monkeypatch.setenv("TRIO_OCSERV_DTLS_THREAD", thread)
    else:
        monkeypatch.setattr(dtls_fastpath, "fastpath", None)
    endpoint = UdpEndpoint.bind("127.0.0.1", 0)
    tun = MemoryTun()
    disconnects: list[bytes] = []
    channel = DtlsChannel(
        endpoint,
        PskServerParameters(PSK),
        tun=tun,
        counters=TunnelCounters(),
        liveness=TunnelLiveness.start(trio.current_time(), 0, None, None),
        compressor=None,
        dpd=0,
        mtu=1400,
        on_disconnect=disconnects.append,
        label="test",
    )
    endpoint.register(APP_ID, channel)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.serve)
            nursery.start_soon(channel.run_timers)
            yield Setup(endpoint, channel, tun, disconnects, request.param)
            nursery.cancel_scope.cancel()
    channel.close()
    tun.close()
    endpoint.sock.close()


async def test_handshake_then_packets_both_ways(setup: Setup) -> None:
    peer = await setup.new_peer()
    await peer.pump_until_established(setup.address)
    await peer.sock.sendto(peer.engine.send_application_data(b"\x00" + PACKET), setup.address)
    assert await setup.tun.receive_written() == PACKET
    while not setup.channel.path_up:
        await trio.sleep(0.01)
    assert setup.channel.send_packets([PACKET[::-1]])
    assert await peer.receive_payload() == b"\x00" + PACKET[::-1]
    # With the C receive thread, Python hears of data records within 20 ms, not at once.
    while setup.channel.counters.packets_in < 1:
        await trio.sleep(0.005)
    assert setup.channel.counters.packets_in == 1
    # The same through the C path, when in use: the receive thread reads the tun by itself
    # (no tun reader task needed), or forward_tun does.
    uses_c = dtls_fastpath.fastpath is not None
    threaded = uses_c and dtls_fastpath.receive_thread_enabled()
    assert (setup.channel.fast is not None) == uses_c
    assert setup.channel.tun_watched_elsewhere == threaded
    setup.tun.inject(PACKET)
    setup.tun.inject(PACKET[::-1])
    if not uses_c:
        assert setup.channel.forward_tun() is None
        assert setup.channel.send_packets(setup.tun.read_batch())
    elif not threaded:
        assert setup.channel.forward_tun() == 2
        assert setup.channel.forward_tun() == 0  # drained
    assert await peer.receive_payload() == b"\x00" + PACKET
    assert await peer.receive_payload() == b"\x00" + PACKET[::-1]
    # The C path counts what it moves; with send_packets the tunnel counts what it read.
    while setup.channel.counters.packets_out < (2 if uses_c else 0):
        await trio.sleep(0.005)
    assert setup.channel.counters.packets_out == (2 if uses_c else 0)
    # A burst from the client: all of it reaches the tun, in order, counted.
    burst = [PACKET[:-1] + bytes([i]) for i in range(200)]
    for packet in burst:
        await peer.sock.sendto(peer.engine.send_application_data(b"\x00" + packet), setup.address)
    assert [await setup.tun.receive_written() for _ in burst] == burst
    while setup.channel.counters.packets_in < 201:
        await trio.sleep(0.01)
    assert setup.channel.counters.bytes_in == 201 * len(PACKET)


async def test_login_handshake_is_answered_by_the_receive_thread(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """With the receive thread, both server flights come from it (the engine only checks);
    without it, from the engine. Either way the session is up and carries data."""
    caplog.set_level("INFO", logger="trio_ocserv")
    peer = await setup.new_peer()
    await peer.pump_until_established(setup.address)
    await peer.sock.sendto(peer.engine.send_application_data(b"\x00" + PACKET), setup.address)
    assert await setup.tun.receive_written() == PACKET
    assert "DTLS psk up" in caplog.text
    threaded = setup.mode == "c-receive-thread"
    assert ("(answered by the receive thread)" in caplog.text) == threaded


async def test_a_resent_hello_hands_the_handshake_back_to_the_engine(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Our first flight is lost and the client sends its hello again: the engine resends (with
    new record numbers) and, from then on, answers alone; the thread stays silent."""
    caplog.set_level("INFO", logger="trio_ocserv")
    peer = await setup.new_peer()
    peer.engine.start(trio.current_time())
    (hello,) = peer.engine.datagrams_to_send()
    await peer.sock.sendto(hello, setup.address)
    lost = await peer.sock.recv(65536)
    await peer.sock.sendto(hello, setup.address)
    resent = await peer.sock.recv(65536)
    assert resent != lost and len(resent) == len(lost)
    peer.engine.receive_datagram(resent, trio.current_time())
    await peer.flush(setup.address)
    while not peer.engine.established:
        peer.engine.receive_datagram(await peer.sock.recv(65536), trio.current_time())
    await peer.sock.sendto(peer.engine.send_application_data(b"\x00" + PACKET), setup.address)
    assert await setup.tun.receive_written() == PACKET
    assert "DTLS psk up" in caplog.text and "answered by the receive thread" not in caplog.text


async def test_an_answer_the_engine_disagrees_with_drops_that_handshake(
    setup: Setup, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: should the thread's flight ever differ from the engine's (here: the
    engine draws other randoms), the client gets an alert and starts over with the engine."""
    monkeypatch.setattr(DtlsChannel, "_random_source", lambda self: os.urandom)
    peer = await setup.new_peer()
    peer.engine.start(trio.current_time())
    await peer.flush(setup.address)
    await peer.sock.recv(65536)  # the ServerHello flight
    if setup.mode == "c-receive-thread":
        alert = await peer.sock.recv(65536)
        assert alert[0] == 21  # an alert record: the handshake is over
        assert "differs from the engine's" in caplog.text
    retry = await setup.new_peer()
    await retry.pump_until_established(setup.address)
    await retry.sock.sendto(retry.engine.send_application_data(b"\x00" + PACKET), setup.address)
    assert await setup.tun.receive_written() == PACKET


async def test_dpd_request_is_echoed_exactly_and_disconnect_reported(setup: Setup) -> None:
    peer = await setup.new_peer()
    await peer.pump_until_established(setup.address)
    probe = b"\x03" + b"\x98\xc5\x1e\x13" + bytes(1000)
    await peer.sock.sendto(peer.engine.send_application_data(probe), setup.address)
    assert await peer.receive_payload() == b"\x04" + probe[1:]
    await peer.sock.sendto(peer.engine.send_application_data(b"\x05\xb0bye"), setup.address)
    while not setup.disconnects:
        await trio.sleep(0.01)
    assert setup.disconnects == [b"\xb0bye"]


async def test_roaming_client_keeps_its_session(setup: Setup) -> None:
    first = await setup.new_peer()
    await first.pump_until_established(setup.address)
    # The client comes back from another port (NAT rebinding, new socket): a new handshake
    # naming the same App-ID takes over, and data flows from and to the new address.
    second = await setup.new_peer()
    await second.pump_until_established(setup.address)
    await second.sock.sendto(second.engine.send_application_data(b"\x00" + PACKET), setup.address)
    assert await setup.tun.receive_written() == PACKET
    assert setup.channel.active_peer == second.sock.getsockname()
    assert setup.channel.send_packets([PACKET])
    assert await second.receive_payload() == b"\x00" + PACKET


async def test_garbage_and_strangers_are_dropped(setup: Setup) -> None:
    stranger = await setup.new_peer()
    for junk in (b"x" * 20, b"\x17\xfe\xfd" + bytes(40), b"\x16\xfe\xfd" + bytes(100)):
        await stranger.sock.sendto(junk, setup.address)
    other = DtlsPskClient(PSK, bytes(32 * [1]))  # an App-ID nobody registered
    other.start(trio.current_time())
    for datagram in other.datagrams_to_send():
        await stranger.sock.sendto(datagram, setup.address)
    while setup.endpoint.dropped < 4:
        await trio.sleep(0.01)
    assert setup.channel.active is None and setup.channel.handshake is None
    # ...and a real client still gets in afterwards. (It may be up before the channel: the
    # receive thread answers its handshake, and the engine follows from the queue.)
    peer = await setup.new_peer()
    await peer.pump_until_established(setup.address)
    with trio.fail_after(5):
        while setup.channel.active_peer != peer.sock.getsockname():
            await trio.sleep(0.005)


async def test_closing_endpoint_gives_the_tun_back_to_the_reader(setup: Setup) -> None:
    """When the UDP listener goes (a reload that changes udp-port), every C path is detached and
    a tun reader waiting for its tun gets it back at once."""
    peer = await setup.new_peer()
    await peer.pump_until_established(setup.address)
    while not setup.channel.path_up:
        await trio.sleep(0.01)
    threaded = dtls_fastpath.fastpath is not None and dtls_fastpath.receive_thread_enabled()
    assert setup.channel.tun_watched_elsewhere == threaded
    returned = trio.Event()

    async def tun_reader_waits() -> None:
        await setup.channel.wait_tun_returned()
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tun_reader_waits)
        await trio.sleep(0.05)
        assert returned.is_set() == (not threaded)
        for key in list(setup.endpoint.fast_routes):
            setup.endpoint._drop_fast_route(key)  # what serve() does on its way out
        with trio.fail_after(1):
            await returned.wait()
    assert not setup.channel.tun_watched_elsewhere
    if dtls_fastpath.fastpath is not None:
        assert setup.channel.forward_tun() is None  # detached: the Python path takes over
