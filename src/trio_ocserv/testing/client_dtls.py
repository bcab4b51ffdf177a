"""The test client's DTLS data channel: one connected UDP socket driving one sans-IO DTLS client
engine (`DtlsPskClient` or `DtlsLegacyClient`), carrying AnyConnect messages (protocol.md 7.6).

`CstpTunnel.start_dtls()` opens it after CONNECT; the tunnel decides what goes where. This module
owns the handshake loop (retransmission timers from the engine, an overall deadline like
openconnect's 12 s), the 1-byte-type framing, and answering DPD requests with an exact echo.
A channel holds a socket and an engine, nothing else: no task, no queue beyond the engine's.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable

import trio

from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.cstp import CstpFrame, CstpPacketType
from trio_ocserv.protocol.dtls import (
    AlertReceived,
    ApplicationData,
    DtlsError,
    DtlsLegacyClient,
    DtlsPskClient,
    HandshakeComplete,
    HandshakeFailed,
)

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "DtlsChannel", "DtlsChannelError"]

#: openconnect gives up on a DTLS handshake after 12 s (protocol.md 7.8).
DEFAULT_HANDSHAKE_TIMEOUT = 12.0
_DATAGRAM_SIZE = 65536

DtlsClientEngine = DtlsPskClient | DtlsLegacyClient
Address = tuple[str, int] | tuple[str, int, int, int]


class DtlsChannelError(Exception):
    """The DTLS channel failed: handshake refused or timed out, alert, or a UDP send/receive
    error. The tunnel falls back to CSTP."""


class DtlsChannel:
    """An established DTLS channel; create it with `await DtlsChannel.open(...)`.

    The UDP socket is non-blocking and written synchronously: a datagram that does not fit in
    the socket buffer is dropped, as the network may drop it anyway."""

    __slots__ = ("_closed", "_engine", "_raw", "_socket", "handshake", "last_received", "last_sent")

    def __init__(
        self, raw: socket.socket, engine: DtlsClientEngine, handshake: HandshakeComplete
    ) -> None:
        self._raw = raw
        self._socket = trio.socket.from_stdlib_socket(raw)
        self._engine = engine
        self.handshake = handshake
        self._closed = False
        now = trio.current_time()
        self.last_received = now
        self.last_sent = now

    @classmethod
    async def open(
        cls,
        address: Address,
        engine: DtlsClientEngine,
        *,
        handshake_seconds: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> DtlsChannel:
        """Connect a UDP socket to `address` (numeric host, the server's X-DTLS-Port) and run
        the handshake. Raises DtlsChannelError; the socket is closed on failure."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            raw.setblocking(False)
            raw.connect(address)
            with trio.move_on_after(handshake_seconds):
                return cls(raw, engine, await _run_handshake(raw, engine))
        except OSError as exc:
            raw.close()
            raise DtlsChannelError(f"DTLS socket error: {exc}") from None
        except BaseException:
            raw.close()
            raise
        raw.close()
        raise DtlsChannelError(f"DTLS handshake timed out after {handshake_seconds} s")

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_message(self, plaintext: bytes) -> None:
        """One AnyConnect message (type byte + payload) as one record."""
        if self._closed:
            raise DtlsChannelError("DTLS channel is closed")
        try:
            self._send_datagram(self._engine.send_application_data(plaintext))
        except (OSError, DtlsError) as exc:
            self.close()
            raise DtlsChannelError(f"DTLS send failed: {exc}") from None
        self.last_sent = trio.current_time()
        await trio.lowlevel.checkpoint()

    async def send_dpd(self, size: int = 0) -> None:
        """A DPD request; `size` zero bytes of padding make it an MTU probe (7.6)."""
        await self.send_message(cstp.encode_dtls_message(CstpPacketType.DPD_REQUEST, bytes(size)))

    async def receive_frame(self) -> CstpFrame:
        """The next DATA, COMPRESSED or DISCONNECT message. DPD requests are echoed whole as
        DPD responses; DPD responses, keepalives and unknown types are dropped, as openconnect
        does over DTLS. Raises DtlsChannelError when the channel ends."""
        while True:
            frame = self._next_buffered_frame()
            if frame is not None:
                return frame
            if self._closed:
                raise DtlsChannelError("DTLS channel is closed")
            try:
                data = await self._socket.recv(_DATAGRAM_SIZE)
            except OSError as exc:
                self.close()
                raise DtlsChannelError(f"DTLS receive failed: {exc}") from None
            self._engine.receive_datagram(data, trio.current_time())
            # A repeated server flight (our final legacy flight was lost) is answered here.
            for datagram in self._engine.datagrams_to_send():
                self._send_datagram(datagram, drop_errors=True)

    def _next_buffered_frame(self) -> CstpFrame | None:
        while (event := self._engine.next_event()) is not None:
            if isinstance(event, ApplicationData):
                self.last_received = trio.current_time()
                try:
                    frame = cstp.decode_dtls_message(event.payload)
                except cstp.CstpProtocolError:
                    continue
                kind = frame.packet_type
                if kind == CstpPacketType.DPD_REQUEST:
                    # The exact echo openconnect's MTU detector expects (7.6).
                    reply = bytes((CstpPacketType.DPD_RESPONSE,)) + frame.payload
                    self._send_datagram(self._engine.send_application_data(reply), drop_errors=True)
                elif kind in (
                    CstpPacketType.DATA,
                    CstpPacketType.COMPRESSED,
                    CstpPacketType.DISCONNECT,
                ):
                    return frame
            elif isinstance(event, HandshakeFailed) or (
                isinstance(event, AlertReceived) and event.closes_connection
            ):
                self.close()
                raise DtlsChannelError(f"DTLS channel ended: {event!r}")
        return None

    def _send_datagram(self, datagram: bytes, *, drop_errors: bool = False) -> None:
        try:
            self._raw.send(datagram)
        except BlockingIOError:
            pass  # a full socket buffer drops the datagram, like a full queue on the path
        except OSError:
            if not drop_errors:
                raise

    def close(self) -> None:
        """Send close_notify (best effort) and close the socket."""
        if self._closed:
            return
        self._closed = True
        if not self._engine.closed:
            with contextlib.suppress(DtlsError):
                self._send_datagram(self._engine.close(), drop_errors=True)
        self._socket.close()


async def _run_handshake(raw: socket.socket, engine: DtlsClientEngine) -> HandshakeComplete:
    now: Callable[[], float] = trio.current_time
    engine.start(now())
    while True:
        for datagram in engine.datagrams_to_send():
            with contextlib.suppress(BlockingIOError):
                raw.send(datagram)
        while (event := engine.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                # Early application data stays queued in the engine for receive_frame().
                return event
            if isinstance(event, HandshakeFailed):
                raise DtlsChannelError(f"DTLS handshake failed: {event.reason}")
            if isinstance(event, AlertReceived) and event.closes_connection:
                raise DtlsChannelError(f"DTLS handshake refused with alert {event.description}")
        deadline = engine.get_timer()
        with trio.move_on_at(math.inf if deadline is None else deadline):
            await trio.lowlevel.wait_readable(raw)
            data = raw.recv(_DATAGRAM_SIZE)
            engine.receive_datagram(data, now())
            continue
        engine.handle_timer(now())
