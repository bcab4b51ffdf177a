"""The C data path of established CSTP tunnels (`_cstp_fastpath`), over real TLS on loopback TCP.

The server side is our `TlsStream`, handed to the C thread after the handshake; the client is
the stdlib's TLS (another implementation), so records are checked the way a peer reads them.
The tun is a MemoryTun (packet boundaries and EAGAIN like a tun fd). No root needed.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import require_c_module
from tests.server.test_tls import Pki, _server_ctx, _stdlib_client_ctx, pki  # noqa: F401
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.cstp import CstpPacketType
from trio_ocserv.server import cstp_fastpath
from trio_ocserv.server.cstp_fastpath import CstpDataPlane
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tls import TlsStream
from trio_ocserv.server.tunnel import CstpTunnel, TunnelEnd

PACKET = bytes.fromhex("4500001c00010000400100000a0000020a000001") + b"\x08\x00" + bytes(6)


def require_cstp_fastpath() -> ModuleType:
    return require_c_module("_cstp_fastpath")


@attrs.define(eq=False)
class Owner:
    """Records what the plane tells a tunnel."""

    events: list[tuple[int, int, bytes]] = attrs.Factory(list)
    counts: list[tuple[int, int, int, int, int]] = attrs.Factory(list)
    gone: bool = False
    changed: trio.Event = attrs.Factory(trio.Event)

    def cstp_counts(self, path: Any) -> None:
        self.counts.append(path.take_counts())
        self.changed.set()

    def cstp_event(self, path: Any, kind: int, code: int, payload: bytes) -> None:
        self.events.append((kind, code, payload))
        self.changed.set()

    def cstp_plane_gone(self) -> None:
        self.gone = True

    async def wait_for(self, predicate: Any) -> None:
        with trio.fail_after(5):
            while not predicate():
                self.changed = trio.Event()
                await self.changed.wait()

    def totals(self) -> tuple[int, ...]:
        return tuple(sum(column) for column in zip(*self.counts, strict=True)) or (0,) * 5


@attrs.define(eq=False)
class Rig:
    plane: CstpDataPlane
    server: TlsStream
    client: trio.SSLStream[trio.SocketStream]
    tun: MemoryTun
    decoder: cstp.CstpDecoder = attrs.Factory(cstp.CstpDecoder)

    async def client_frames(self, count: int) -> list[cstp.CstpFrame]:
        frames: list[cstp.CstpFrame] = []
        with trio.fail_after(5):
            while len(frames) < count:
                frames += self.decoder.frames()
                if len(frames) < count:
                    data = await self.client.receive_some(65536)
                    assert data, "the server closed the connection"
                    self.decoder.receive_data(data)
        return frames


@contextlib.asynccontextmanager
async def open_rig(pki: Pki) -> AsyncIterator[Rig]:  # noqa: F811
    """A plane serving in a nursery, and a TLS connection over loopback TCP, handshake done."""
    plane = CstpDataPlane.create()
    assert plane is not None
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.serve)
        client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
        server_tcp = await listeners[0].accept()
        server = TlsStream(server_tcp, _server_ctx(pki))
        client = trio.SSLStream(client_tcp, _stdlib_client_ctx(pki), server_hostname="vpn.example")
        async with trio.open_nursery() as handshake:
            handshake.start_soon(server.do_handshake)
            handshake.start_soon(client.do_handshake)
        tun = MemoryTun()
        try:
            yield Rig(plane, server, client, tun)
        finally:
            nursery.cancel_scope.cancel()
            tun.close()
            await client_tcp.aclose()
            await server_tcp.aclose()
            for listener in listeners:
                await listener.aclose()


@pytest.fixture
async def rig(pki: Pki) -> AsyncIterator[Rig]:  # noqa: F811
    require_cstp_fastpath()
    async with open_rig(pki) as made:
        yield made


def attach(rig: Rig, owner: Owner, max_payload: int = cstp.DEFAULT_MAX_PAYLOAD_LENGTH) -> Any:
    path = rig.plane.take_over(owner, rig.server, rig.tun.fileno(), max_payload)
    assert path is not None
    return path


async def test_data_frames_reach_the_tun_and_are_counted(rig: Rig) -> None:
    owner = Owner()
    attach(rig, owner).tun_watch = True
    packets = [PACKET, PACKET[:20] + bytes(1400), PACKET + b"x"]
    await rig.client.send_all(b"".join(cstp.encode_data_frames(packets)))
    with trio.fail_after(5):
        written = [await rig.tun.receive_written() for _ in packets]
    assert written == packets
    await owner.wait_for(lambda: owner.totals()[0] == 3)
    packets_in, bytes_in, packets_out, _, frames = owner.totals()
    assert (packets_in, bytes_in, packets_out, frames) == (3, sum(map(len, packets)), 0, 3)
    assert owner.events == []


async def test_tun_packets_leave_as_one_frame_per_record_while_watched(rig: Rig) -> None:
    owner = Owner()
    path = attach(rig, owner)
    path.tun_watch = True
    assert path.tun_watch
    sizes = [28, 1400, 60, 1]
    for size in sizes:
        rig.tun.inject(PACKET[:size] if size <= len(PACKET) else PACKET + bytes(size - len(PACKET)))
    frames = await rig.client_frames(len(sizes))
    assert [(f.packet_type, len(f.payload)) for f in frames] == [
        (CstpPacketType.DATA, size) for size in sizes
    ]
    await owner.wait_for(lambda: owner.totals()[2] == len(sizes))
    # Not watched: the thread leaves the tun alone (the tunnel's reader task has it).
    path.tun_watch = False
    rig.tun.inject(PACKET)
    await trio.sleep(0.05)
    assert rig.tun.read_batch() == [PACKET]


async def test_reply_queued_by_the_kernel_leaves_in_the_same_pass(rig: Rig) -> None:
    """The echo the 'kernel' queues when the request is written goes out without Python."""
    owner = Owner()
    path = attach(rig, owner)
    path.tun_watch = True
    await rig.client.send_all(cstp.encode_data_frames([PACKET])[0])
    request = await rig.tun.receive_written()
    rig.tun.inject(request[::-1])
    (reply,) = await rig.client_frames(1)
    assert reply.payload == PACKET[::-1]


async def test_control_frames_go_to_python_and_python_sends_through_the_thread(
    rig: Rig,
) -> None:
    owner = Owner()
    path = attach(rig, owner)
    await rig.client.send_all(
        cstp.encode_frame(CstpPacketType.KEEPALIVE)
        + cstp.encode_frame(CstpPacketType.DPD_REQUEST, b"probe")
        + cstp.encode_frame(CstpPacketType.DPD_RESPONSE)
        + cstp.encode_frame(0x42, b"unknown type")
    )
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_FRAME, CstpPacketType.DPD_REQUEST, b"probe")]
    assert path.send(cstp.encode_frame(CstpPacketType.DPD_RESPONSE, b"probe"))
    (frame,) = await rig.client_frames(1)
    assert frame == cstp.CstpFrame(CstpPacketType.DPD_RESPONSE, b"probe")
    await owner.wait_for(lambda: owner.totals()[4] == 4)  # every frame proves the peer alive


async def test_disconnect_stops_the_thread_reading(rig: Rig) -> None:
    owner = Owner()
    path = attach(rig, owner)
    await rig.client.send_all(
        cstp.encode_frame(CstpPacketType.DISCONNECT, b"\xb0bye")
        + b"".join(cstp.encode_data_frames([PACKET]))
    )
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_FRAME, CstpPacketType.DISCONNECT, b"\xb0bye")]
    await trio.sleep(0.05)
    assert rig.tun.written_nowait() == []  # nothing after the goodbye counts
    assert not path.send(cstp.encode_frame(CstpPacketType.KEEPALIVE))


@pytest.mark.parametrize(
    "junk",
    [b"XTF\x01\x00\x00\x00\x00", b"STF\x01\x00\x00\x00\x01", b"STF\x01\x40\x01\x00\x00"],
    ids=["bad-magic", "reserved-byte", "over-the-bound"],
)
async def test_bad_framing_ends_the_path(rig: Rig, junk: bytes) -> None:
    owner = Owner()
    attach(rig, owner)
    await rig.client.send_all(junk)
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_END, cstp_fastpath.END_PROTOCOL_ERROR, b"")]
    assert rig.tun.written_nowait() == []


async def test_frames_split_across_records_are_reassembled(rig: Rig) -> None:
    owner = Owner()
    attach(rig, owner).tun_watch = True
    frames = b"".join(cstp.encode_data_frames([PACKET, PACKET + b"tail"]))
    for start in range(0, len(frames), 5):  # one TLS record per 5 bytes
        await rig.client.send_all(frames[start : start + 5])
    with trio.fail_after(5):
        assert await rig.tun.receive_written() == PACKET
        assert await rig.tun.receive_written() == PACKET + b"tail"


async def test_data_while_the_tun_is_not_watched_goes_to_python(rig: Rig) -> None:
    """DTLS carries the tun: data on CSTP means the client's DTLS broke, which Python decides."""
    owner = Owner()
    path = attach(rig, owner)
    assert not path.tun_watch
    await rig.client.send_all(cstp.encode_data_frames([PACKET])[0])
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_FRAME, CstpPacketType.DATA, PACKET)]
    assert rig.tun.written_nowait() == []


async def test_a_forged_record_ends_the_path(rig: Rig) -> None:
    owner = Owner()
    attach(rig, owner)
    await rig.client.transport_stream.send_all(b"\x17\x03\x03\x00\x05hello")  # a forged record
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_END, cstp_fastpath.END_TLS_ERROR, b"")]


async def test_eof_ends_the_path(rig: Rig) -> None:
    owner = Owner()
    attach(rig, owner)
    await rig.client.transport_stream.send_eof()  # a FIN without close_notify
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_END, cstp_fastpath.END_EOF, b"")]


async def test_reset_ends_the_path(rig: Rig) -> None:
    owner = Owner()
    attach(rig, owner)
    # Closing with unread data (the server's session tickets) resets the connection.
    await rig.client.transport_stream.aclose()
    await owner.wait_for(lambda: owner.events)
    assert owner.events == [(cstp_fastpath.EVENT_END, cstp_fastpath.END_SOCKET_ERROR, b"")]


async def test_detach_gives_the_stream_back_in_order(rig: Rig) -> None:
    owner = Owner()
    path = attach(rig, owner)
    assert path.send(cstp.encode_frame(CstpPacketType.DPD_REQUEST, b"1"))
    path.detach()
    assert not path.attached
    path.detach()  # twice is harmless
    assert not path.send(cstp.encode_frame(CstpPacketType.KEEPALIVE))
    await rig.server.send_records([cstp.encode_frame(CstpPacketType.DISCONNECT)])
    frames = await rig.client_frames(2)
    assert [f.packet_type for f in frames] == [
        CstpPacketType.DPD_REQUEST, CstpPacketType.DISCONNECT,
    ]
    # The stream reads again in Python once detached.
    await rig.client.send_all(b"after")
    with trio.fail_after(5):
        assert await rig.server.receive_some(100) == b"after"


async def test_a_full_socket_holds_the_tun_until_it_drains(rig: Rig) -> None:
    """Backpressure: the thread stops reading the tun while the client does not read; nothing
    is lost, and everything arrives once it reads again."""
    owner = Owner()
    path = attach(rig, owner)
    path.tun_watch = True
    big = PACKET + bytes(1372)
    sent = 0
    with trio.move_on_after(2):
        while True:
            try:
                rig.tun.inject(big)
            except BlockingIOError:
                break  # the tun queue is full: the thread has stopped reading it
            sent += 1
            if sent % 256 == 0:
                await trio.sleep(0.01)
    assert sent > 2000  # more than the socket buffers hold
    frames = await rig.client_frames(sent)
    assert len(frames) == sent
    assert all(f.payload == big for f in frames)


async def test_plane_end_tells_owners(pki: Pki) -> None:  # noqa: F811
    require_cstp_fastpath()
    plane = CstpDataPlane.create()
    assert plane is not None
    owner = Owner()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tun = MemoryTun()
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.serve)
        client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
        server = TlsStream(await listeners[0].accept(), _server_ctx(pki))
        client = trio.SSLStream(client_tcp, _stdlib_client_ctx(pki), server_hostname="vpn.example")
        async with trio.open_nursery() as handshake:
            handshake.start_soon(server.do_handshake)
            handshake.start_soon(client.do_handshake)
        path = plane.take_over(owner, server, tun.fileno(), 16384)
        assert path is not None
        nursery.cancel_scope.cancel()
    assert owner.gone
    assert not path.attached
    assert plane.take_over(owner, server, tun.fileno(), 16384) is None  # not serving
    tun.close()
    await server.aclose()
    await client_tcp.aclose()
    for listener in listeners:
        await listener.aclose()


def reference_events(stream: bytes, max_payload: int = 16384) -> list[tuple[int, int, bytes]]:
    """What the thread must hand Python for `stream` while it does not hold the tun (protocol.md
    §6: magic, 16-bit length, type, a zero byte; a header is judged once all 8 bytes are in)."""
    events: list[tuple[int, int, bytes]] = []
    at = 0
    while len(stream) - at >= 8:
        header = stream[at : at + 8]
        length = int.from_bytes(header[4:6], "big")
        if header[:4] != cstp.MAGIC or header[7] or length > max_payload:
            events.append((cstp_fastpath.EVENT_END, cstp_fastpath.END_PROTOCOL_ERROR, b""))
            break
        if len(stream) - at < 8 + length:
            break
        code, payload = header[6], stream[at + 8 : at + 8 + length]
        at += 8 + length
        if code in (CstpPacketType.DATA, CstpPacketType.DPD_REQUEST, CstpPacketType.COMPRESSED,
                    CstpPacketType.DISCONNECT):
            events.append((cstp_fastpath.EVENT_FRAME, code, payload))
        if code == CstpPacketType.DISCONNECT:
            break
    return events


_frame_or_junk = st.one_of(
    st.builds(
        cstp.encode_frame,
        st.sampled_from([0, 3, 4, 5, 7, 8, 9, 0x42]),
        st.binary(max_size=300),
    ),
    st.binary(min_size=1, max_size=40),
)


@given(pieces=st.lists(_frame_or_junk, min_size=1, max_size=6))
@settings(max_examples=30, deadline=None)
def test_arbitrary_plaintext_is_served_or_refused_like_the_spec_says(
    pki: Pki, pieces: list[bytes]  # noqa: F811
) -> None:
    """Whatever an authenticated peer sends inside TLS, the thread serves the valid frames,
    ends the path at the first invalid header, never crashes, and writes nothing to a tun it
    does not hold."""
    require_cstp_fastpath()
    stream = b"".join(pieces)
    expected = reference_events(stream)

    async def scenario() -> list[tuple[int, int, bytes]]:
        async with open_rig(pki) as rig:
            owner = Owner()
            attach(rig, owner)
            for piece in pieces:  # one TLS record per piece
                await rig.client.send_all(piece)
            await owner.wait_for(lambda: len(owner.events) >= len(expected))
            await trio.sleep(0.01)  # nothing more may follow
            assert rig.tun.written_nowait() == []
            return owner.events

    assert trio.run(scenario) == expected


async def test_memory_is_released_over_many_attach_detach_cycles(rig: Rig) -> None:
    """Paths, queue items and partial-frame buffers are freed (RSS stays flat)."""
    for round_ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(3000):
            owner = Owner()
            path = attach(rig, owner)
            path.tun_watch = True
            path.tun_watch = False
            path.detach()
        await trio.sleep(0.01)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if round_ == 1:
            assert after - before < 4096  # KiB


# -- the tunnel on the C path (server/tunnel.py) ---------------------------------------------------


@attrs.define(eq=False)
class FakeDtls:
    """A DTLS side whose path the test turns up and down (tunnel.DataChannel)."""

    path_up: bool = False
    sent: list[bytes] = attrs.Factory(list)

    def send_packets(self, packets: Any) -> bool:
        if not self.path_up:
            return False
        self.sent += packets
        return True

    def forward_tun(self) -> int | None:
        return None

    def sync_counters(self) -> None:
        pass

    @property
    def tun_watched_elsewhere(self) -> bool:
        return False

    async def wait_tun_returned(self) -> None:
        await trio.sleep_forever()

    async def run_timers(self) -> None:
        await trio.sleep_forever()

    def close(self) -> None:
        pass


def make_tunnel(rig: Rig, dtls: FakeDtls | None = None) -> CstpTunnel:
    liveness = TunnelLiveness.start(trio.current_time(), 0, None, None)
    return CstpTunnel(rig.server, rig.tun, liveness, dtls=dtls, fast_plane=rig.plane)


async def until(predicate: Any) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.005)


async def start_tunnel(nursery: trio.Nursery, tunnel: CstpTunnel, ends: list[TunnelEnd]) -> None:
    """Run `tunnel` (its end goes to `ends`) until the C thread holds its tun."""

    async def run() -> None:
        ends.append(await tunnel.run())

    nursery.start_soon(run)
    await until(lambda: tunnel._fast is not None and tunnel._fast.tun_watch)


async def test_tunnel_answers_dpd_counts_and_ends_on_logout(rig: Rig) -> None:
    tunnel = make_tunnel(rig)
    ends: list[TunnelEnd] = []
    async with trio.open_nursery() as nursery:
        await start_tunnel(nursery, tunnel, ends)
        await rig.client.send_all(
            b"".join(cstp.encode_data_frames([PACKET]))
            + cstp.encode_frame(CstpPacketType.DPD_REQUEST, b"mtu-probe")
        )
        assert await rig.tun.receive_written() == PACKET
        rig.tun.inject(PACKET[::-1])
        frames = await rig.client_frames(2)
        assert sorted((f.packet_type, f.payload) for f in frames) == [
            (CstpPacketType.DATA, PACKET[::-1]),
            (CstpPacketType.DPD_RESPONSE, b"mtu-probe"),
        ]
        await until(lambda: tunnel.counters.packets_out == 1)
        assert (tunnel.counters.packets_in, tunnel.counters.bytes_in) == (1, len(PACKET))
        await rig.client.send_all(cstp.encode_frame(CstpPacketType.DISCONNECT, b"\xb0bye"))
    assert ends == [TunnelEnd.USER_LOGOUT]
    assert tunnel._fast is None


async def test_server_stop_says_disconnect_after_the_thread_lets_go(rig: Rig) -> None:
    tunnel = make_tunnel(rig)
    ends: list[TunnelEnd] = []
    async with trio.open_nursery() as nursery:
        await start_tunnel(nursery, tunnel, ends)
        rig.tun.inject(PACKET)
        (frame,) = await rig.client_frames(1)
        assert frame.payload == PACKET
        tunnel.stop()
    (frame,) = await rig.client_frames(1)
    assert frame.packet_type == CstpPacketType.DISCONNECT
    assert ends == [TunnelEnd.SERVER_DISCONNECT]


async def test_tun_moves_between_cstp_thread_and_dtls(rig: Rig) -> None:
    dtls = FakeDtls()
    tunnel = make_tunnel(rig, dtls)
    async with trio.open_nursery() as nursery:
        await start_tunnel(nursery, tunnel, [])
        # DTLS comes up: the thread lets go of the tun, the tunnel's reader sends over DTLS.
        dtls.path_up = True
        tunnel.dtls_path_changed()
        await until(lambda: not tunnel._fast.tun_watch)  # type: ignore[union-attr]
        rig.tun.inject(PACKET)
        await until(lambda: dtls.sent == [PACKET])
        # Data on CSTP while DTLS is up: DTLS broke; the packet is written, the tun goes back.
        await rig.client.send_all(cstp.encode_data_frames([PACKET + b"!"])[0])
        assert await rig.tun.receive_written() == PACKET + b"!"
        assert not dtls.path_up
        # The reader was waiting on the tun for DTLS: its next batch goes over CSTP, and then
        # the thread has the tun again.
        for packet in (PACKET[::-1], PACKET[::-1] + b"2"):
            rig.tun.inject(packet)
            (frame,) = await rig.client_frames(1)
            assert frame.payload == packet
        await until(lambda: tunnel._fast.tun_watch)  # type: ignore[union-attr]
        assert tunnel.counters.packets_in == 1
        tunnel.stop()
