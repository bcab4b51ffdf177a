"""One client's tunnel after `200 CONNECTED`: CSTP frames over the TLS stream <-> the tun device.

Owns the tunnel task group (architecture §3): the CSTP reader, the tun reader (which writes CSTP
frames), and the liveness timer. It ends when the client says goodbye, the connection breaks, a
timer fires, or its owner calls `stop()`; `run()` then returns why, and the owner releases the
session's resources. DTLS joins this group in a later step; CSTP always stays available.

Hot path rules: the tun is drained until EAGAIN with one wait per batch; each CSTP frame is one TLS
record (openconnect reads one frame per record) but a batch of records leaves in one transport
write when the stream supports `send_records`; no task switch per packet.

With the C data path (server/cstp_fastpath.py) the CSTP reader task has nothing to do: the C
thread owns the connection's records, and, while CSTP carries tun -> client, the tun; this object
gets what Python must act on through `cstp_event` and `cstp_counts`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from trio_ocserv.net.tun import Tun, TunClosed, receive_batch
from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.compress import ChannelCompressor, CompressionError, ip_packet_from
from trio_ocserv.protocol.cstp import CstpPacketType, CstpProtocolError
from trio_ocserv.server import cstp_fastpath
from trio_ocserv.server.cstp_fastpath import CstpDataPlane, CstpPath
from trio_ocserv.server.liveness import LivenessAction, TunnelLiveness
from trio_ocserv.sessions import DisconnectReason

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536
#: Packets the DTLS data path moves per call before the tun reader yields (dtls_channel).
FORWARD_BATCH = 128
_USER_DISCONNECT = 0xB0


class TunnelEnd(enum.Enum):
    """Why a tunnel ended, with what it means for the session's cookie."""

    USER_LOGOUT = ("user logout", DisconnectReason.USER_LOGOUT)
    CLIENT_DISCONNECT = ("temporary disconnect by the client", DisconnectReason.CONNECTION_LOST)
    CONNECTION_LOST = ("connection lost", DisconnectReason.CONNECTION_LOST)
    PROTOCOL_ERROR = ("protocol error", DisconnectReason.CONNECTION_LOST)
    DPD_TIMEOUT = ("DPD timeout", DisconnectReason.CONNECTION_LOST)
    IDLE_TIMEOUT = ("idle timeout", DisconnectReason.CONNECTION_LOST)
    SESSION_TIMEOUT = ("session timeout", DisconnectReason.SESSION_TIMEOUT)
    SERVER_DISCONNECT = ("disconnected by the server", DisconnectReason.SERVER_DISCONNECT)
    TAKEN_OVER = ("taken over by a reconnect", DisconnectReason.CONNECTION_LOST)
    TUN_GONE = ("tun device went away", DisconnectReason.CONNECTION_LOST)
    REFUSED = ("refused by the server", DisconnectReason.SERVER_DISCONNECT)

    def __init__(self, text: str, session_reason: DisconnectReason) -> None:
        self.text = text
        self.session_reason = session_reason

    @property
    def server_initiated(self) -> bool:
        """The server tells the client with an empty DISCONNECT frame (§8.6)."""
        return self in _SERVER_SAYS_BYE


_SERVER_SAYS_BYE = frozenset({
    TunnelEnd.IDLE_TIMEOUT, TunnelEnd.SESSION_TIMEOUT, TunnelEnd.SERVER_DISCONNECT,
    TunnelEnd.DPD_TIMEOUT, TunnelEnd.TAKEN_OVER, TunnelEnd.TUN_GONE,
})


@attrs.define
class TunnelCounters:
    """Per-tunnel traffic figures for ctl and metrics (bytes are IP packet bytes)."""

    bytes_in: int = 0  # client -> server
    bytes_out: int = 0  # server -> client
    packets_in: int = 0
    packets_out: int = 0

    def add(self, packets_in: int, bytes_in: int, packets_out: int, bytes_out: int) -> None:
        """What a C data path reports it moved since its last report."""
        self.packets_in += packets_in
        self.bytes_in += bytes_in
        self.packets_out += packets_out
        self.bytes_out += bytes_out


def live_counters(tunnel: object) -> TunnelCounters:
    """A tunnel's counters with what the C data paths moved up to now (they report on their own
    at most every 100 ms): for ctl and metrics, which read them at any time."""
    sync = getattr(tunnel, "sync_counters", None)
    if sync is not None:
        return sync()  # type: ignore[no-any-return]
    return tunnel.counters  # type: ignore[attr-defined,no-any-return]


async def send_records(stream: trio.abc.SendStream, records: Sequence[bytes]) -> None:
    """Send each item as its own TLS record; in one transport write when the stream can."""
    batch_send = getattr(stream, "send_records", None)
    if batch_send is not None:
        await batch_send(records)
        return
    for record in records:
        await stream.send_all(record)


class DataChannel(Protocol):
    """The DTLS side as the tunnel sees it (server/dtls_channel.py)."""

    path_up: bool

    def send_packets(self, packets: Sequence[bytes]) -> bool: ...

    def forward_tun(self) -> int | None: ...

    def sync_counters(self) -> None: ...

    @property
    def tun_watched_elsewhere(self) -> bool: ...

    async def wait_tun_returned(self) -> None: ...

    async def run_timers(self) -> None: ...

    def close(self) -> None: ...


@attrs.define(eq=False)
class CstpTunnel:
    stream: trio.abc.Stream
    tun: Tun
    liveness: TunnelLiveness
    compressor: ChannelCompressor | None = None
    leftover: bytes = b""
    max_frame_payload: int = cstp.DEFAULT_MAX_PAYLOAD_LENGTH
    clock: Callable[[], float] = trio.current_time
    counters: TunnelCounters = attrs.Factory(TunnelCounters)
    # DTLS, when negotiated: preferred for tun -> client while its path is up.
    dtls: DataChannel | None = None
    # The C thread that can take the established connection over (None: Python only).
    fast_plane: CstpDataPlane | None = None
    label: str = ""  # for the log: the user name
    _fast: CstpPath | None = None
    _fast_tun_failed: bool = False
    _tun_wanted: trio.Event = attrs.Factory(trio.Event)
    _end: TunnelEnd | None = None
    _cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _send_lock: trio.Lock = attrs.Factory(trio.Lock)

    def stop(self, why: TunnelEnd = TunnelEnd.SERVER_DISCONNECT) -> None:
        """End the tunnel from outside (admin disconnect, shutdown, take-over)."""
        self._finish(why)

    def forward_tun_nowait(self) -> None:
        """Send what the tun holds right now over DTLS, without waiting (the UDP reader calls it
        after a batch: a ping reply or a TCP ACK the kernel produced while we wrote the batch
        leaves at once, not one scheduler round trip later)."""
        dtls = self.dtls
        if dtls is not None and dtls.path_up:
            try:
                if dtls.forward_tun() is not None:
                    return
            except TunClosed:
                return  # the tun reader task sees it too and ends the tunnel
            packets = self._take_tun_nowait()
            if packets:
                dtls.send_packets(packets)

    def _take_tun_nowait(self) -> list[bytes]:
        """The packets the tun holds now (none if it would block), counted as sent."""
        try:
            packets = self.tun.read_batch()
        except TunClosed:
            return []  # the tun reader task sees it too and ends the tunnel
        if packets:
            self._count_out(packets)
        return packets

    def _count_out(self, packets: list[bytes]) -> None:
        counters = self.counters
        counters.packets_out += len(packets)
        counters.bytes_out += sum(map(len, packets))
        self.liveness.data_moved(self.clock())

    def _cstp_frames(self, packets: list[bytes]) -> list[bytes]:
        compressor = self.compressor
        if compressor is not None:
            return [compressor.cstp_frame(p) for p in packets]
        return cstp.encode_data_frames(packets)

    def client_disconnect(self, payload: bytes) -> None:
        """A DISCONNECT frame from the client, on either channel."""
        logout = payload[:1] == bytes((_USER_DISCONNECT,))
        self._finish(TunnelEnd.USER_LOGOUT if logout else TunnelEnd.CLIENT_DISCONNECT)

    def _finish(self, why: TunnelEnd) -> None:
        if self._end is None:
            self._end = why
        self._cancel_scope.cancel()

    # -- the C data path (server/cstp_fastpath.py) -----------------------------------------------

    def _take_over(self) -> None:
        plane = self.fast_plane
        if plane is None or self.compressor is not None or self.leftover:
            return  # compressed frames and a half-read stream stay in Python
        self._fast = plane.take_over(
            self, self.stream, self.tun.fileno(), self.max_frame_payload
        )
        if self._fast is not None:
            # Debug only: at info, the write would land just when the client's DTLS
            # ClientHello waits for this task (the plane logs once at start).
            log.debug("%s: CSTP on the C data path", self.label)

    def _give_back(self) -> None:
        """The stream is Python's again (ciphertext the thread had not sent leaves first)."""
        fast = self._fast
        if fast is not None:
            fast.detach()
            self.cstp_counts(fast)  # the last counts: the thread has let go
        self._fast = None
        self._tun_wanted.set()

    def sync_counters(self) -> TunnelCounters:
        """The counters, with what the C data paths moved since they last reported."""
        if self._fast is not None:
            self.cstp_counts(self._fast)
        if self.dtls is not None:
            self.dtls.sync_counters()
        return self.counters

    def dtls_path_changed(self) -> None:
        """The DTLS path went up or down: the tun may change hands (see `_tun_reader`)."""
        dtls, fast = self.dtls, self._fast
        if fast is not None and dtls is not None and dtls.path_up:
            # At once, not when the reader task runs: a reply the kernel queues meanwhile must
            # leave over DTLS, not be taken by the CSTP thread.
            fast.tun_watch = False
        self._tun_wanted.set()

    def cstp_counts(self, path: CstpPath) -> None:
        """The thread moved records of this tunnel (reported at most every 100 ms)."""
        packets_in, bytes_in, packets_out, bytes_out, frames = path.take_counts()
        if path is not self._fast:
            return
        now = self.clock()
        if frames:
            self.liveness.frame_received(now)
        if packets_in or packets_out:
            self.counters.add(packets_in, bytes_in, packets_out, bytes_out)
            self.liveness.data_moved(now)

    def cstp_event(self, path: CstpPath, kind: int, code: int, payload: bytes) -> None:
        """A frame the thread leaves to Python, or the end of what it can serve."""
        if path is not self._fast:
            return
        if kind == cstp_fastpath.EVENT_FRAME:
            if code == CstpPacketType.DATA:
                # Sent over CSTP while the tun was not the thread's (DTLS carries it).
                self._data_beside_dtls(payload)
            elif code == CstpPacketType.DPD_REQUEST:
                frame = cstp.CstpFrame(CstpPacketType.DPD_REQUEST, payload)
                path.send(cstp.dpd_response_for(frame))
            elif code == CstpPacketType.DISCONNECT:
                self.client_disconnect(payload)
            else:  # COMPRESSED, on a tunnel that negotiated no compression
                log.info("tunnel: bad CSTP input: a compressed frame without compression")
                self._finish(TunnelEnd.PROTOCOL_ERROR)
        elif kind == cstp_fastpath.EVENT_END:
            if code == cstp_fastpath.END_PROTOCOL_ERROR:
                log.info("tunnel: bad CSTP input (framing)")
                self._finish(TunnelEnd.PROTOCOL_ERROR)
            elif code == cstp_fastpath.END_TUN_GONE:
                self._finish(TunnelEnd.TUN_GONE)
            else:
                self._finish(TunnelEnd.CONNECTION_LOST)
        elif kind == cstp_fastpath.EVENT_TUN_RETURNED:
            # The thread met a tun error: the tun reader task reads it and meets it too.
            self._fast_tun_failed = True
            self._tun_wanted.set()

    def _data_beside_dtls(self, packet: bytes) -> None:
        dtls = self.dtls
        if dtls is not None and dtls.path_up:
            dtls.path_up = False  # the client's DTLS broke (§6): replies go over CSTP now
        try:
            self.tun.write(packet)
        except TunClosed:
            self._finish(TunnelEnd.TUN_GONE)
            return
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(packet)
        self.liveness.data_moved(self.clock())

    def cstp_plane_gone(self) -> None:
        """The server is shutting the thread down (it ends last): nothing carries the tunnel."""
        self._fast = None
        self._finish(TunnelEnd.SERVER_DISCONNECT)

    def _cstp_holds_tun(self, fast: CstpPath) -> bool:
        dtls = self.dtls
        return (
            fast.tun_watch
            and self._fast is fast
            and not self._fast_tun_failed
            and (dtls is None or not dtls.path_up)
        )

    async def run(self) -> TunnelEnd:
        """Forward until the tunnel ends; tell the client when the server ended it."""
        try:
            with self._cancel_scope:
                self._take_over()
                async with trio.open_nursery() as nursery:
                    if self._fast is None:
                        nursery.start_soon(self._cstp_reader)
                    nursery.start_soon(self._tun_reader)
                    nursery.start_soon(self._timer)
                    if self.dtls is not None:
                        nursery.start_soon(self.dtls.run_timers)
        finally:
            self._give_back()
            if self.dtls is not None:
                self.dtls.close()
        end = self._end or TunnelEnd.CONNECTION_LOST
        if end.server_initiated:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._send([cstp.encode_frame(CstpPacketType.DISCONNECT)])
        return end

    async def _send(self, records: Sequence[bytes]) -> None:
        fast = self._fast
        if fast is not None:
            # The C thread owns the connection: it sends (or queues until the socket drains).
            for record in records:
                fast.send(record)
            await trio.lowlevel.checkpoint()
            return
        # The tun reader and the control replies (DPD) share the stream. A free lock is taken
        # without a scheduler round trip (the stream's send is the checkpoint): per batch.
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            await send_records(self.stream, records)
        finally:
            lock.release()

    async def _cstp_reader(self) -> None:
        decoder = cstp.CstpDecoder(self.max_frame_payload)
        tun, counters, liveness, dtls = self.tun, self.counters, self.liveness, self.dtls
        write, data_code = tun.write, int(CstpPacketType.DATA)
        data: bytes | bytearray = self.leftover
        try:
            while True:
                if data:
                    now = self.clock()
                    liveness.frame_received(now)
                    replies: list[bytes] = []
                    # Counted per batch, not per packet (also when a frame ends the loop).
                    packets = octets = 0
                    try:
                        for code, payload in decoder.feed(data):
                            if code == data_code:
                                # The hot path: the payload view goes to the tun uncopied.
                                if not packets and dtls is not None and dtls.path_up:
                                    # Data on CSTP while DTLS is up: the client's DTLS broke.
                                    dtls.path_up = False
                                write(payload)
                                packets += 1
                                octets += len(payload)
                                continue
                            frame = cstp.CstpFrame(cstp.packet_type_of(code), bytes(payload))
                            kind = frame.packet_type
                            if kind == CstpPacketType.COMPRESSED:
                                if dtls is not None and dtls.path_up:
                                    dtls.path_up = False  # as for DATA (§6)
                                packet = ip_packet_from(frame, self.compressor)
                                write(packet)
                                packets += 1
                                octets += len(packet)
                            elif kind == CstpPacketType.DPD_REQUEST:
                                replies.append(cstp.dpd_response_for(frame))
                            elif kind == CstpPacketType.DISCONNECT:
                                self.client_disconnect(frame.payload)
                                return
                            # KEEPALIVE, DPD responses and unknown types only refresh liveness.
                    finally:
                        if packets:
                            counters.packets_in += packets
                            counters.bytes_in += octets
                            liveness.data_moved(now)
                    if packets and (dtls is None or not dtls.path_up):
                        # Replies the kernel already queued (TCP ACKs, pings) go out with this
                        # write instead of one scheduler round trip later via the tun reader.
                        replies += self._cstp_frames(self._take_tun_nowait())
                    if replies:
                        await self._send(replies)
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self._finish(TunnelEnd.CONNECTION_LOST)
                    return
        except (CstpProtocolError, CompressionError, ValueError) as exc:
            log.info("tunnel: bad CSTP input: %s", exc)
            self._finish(TunnelEnd.PROTOCOL_ERROR)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._finish(TunnelEnd.CONNECTION_LOST)

    async def _tun_reader(self) -> None:
        tun, dtls = self.tun, self.dtls
        try:
            while True:
                if dtls is not None:
                    forwarded = dtls.forward_tun()
                    if forwarded is not None:
                        # The C data path sent them: yield after a full batch, else wait.
                        if forwarded >= FORWARD_BATCH:
                            await trio.lowlevel.checkpoint()
                        elif dtls.tun_watched_elsewhere:
                            # The C receive thread reads the tun while DTLS is up.
                            await dtls.wait_tun_returned()
                        else:
                            await tun.wait_readable()
                        continue
                fast = self._fast
                if fast is not None and not self._fast_tun_failed and (
                    dtls is None or not dtls.path_up
                ):
                    # CSTP carries tun -> client: the C thread reads the tun until DTLS comes
                    # up, the thread meets a tun error, or the tunnel ends.
                    fast.tun_watch = True
                    if fast.tun_watch:
                        try:
                            while self._cstp_holds_tun(fast):
                                self._tun_wanted = trio.Event()
                                await self._tun_wanted.wait()
                        finally:
                            fast.tun_watch = False
                        continue
                packets = await receive_batch(tun)
                self._count_out(packets)
                if dtls is not None and dtls.send_packets(packets):
                    # Sending on UDP never waits: yield once per batch, or a busy tun would
                    # starve every other task (the UDP reader with this client's ACKs first).
                    await trio.lowlevel.checkpoint()
                    continue
                await self._send(self._cstp_frames(packets))
        except TunClosed:
            self._finish(TunnelEnd.TUN_GONE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._finish(TunnelEnd.CONNECTION_LOST)

    async def _timer(self) -> None:
        liveness = self.liveness
        while True:
            deadline = liveness.next_deadline()
            if deadline is None:
                await trio.sleep_forever()
            else:
                await trio.sleep_until(deadline)
            action = liveness.poll(self.clock())
            if action is LivenessAction.SEND_DPD_REQUEST:
                try:
                    await self._send([cstp.encode_frame(CstpPacketType.DPD_REQUEST)])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._finish(TunnelEnd.CONNECTION_LOST)
                    return
            elif action is LivenessAction.PEER_DEAD:
                self._finish(TunnelEnd.DPD_TIMEOUT)
                return
            elif action is LivenessAction.IDLE_TIMEOUT:
                self._finish(TunnelEnd.IDLE_TIMEOUT)
                return
            elif action is LivenessAction.SESSION_TIMEOUT:
                self._finish(TunnelEnd.SESSION_TIMEOUT)
                return
