"""A tunnel's DTLS data channel: the session's DTLS engines, its UDP peer, and path liveness.

The UDP demultiplexer hands this object ClientHellos that name the session and datagrams from its
peer address; everything it does with them is synchronous (decrypt, write to the tun, answer
DPD), so a burst of datagrams costs no task switch. The tunnel asks `send_packets()` to carry
tun packets while the path is up; when it is not, the tunnel falls back to CSTP. DTLS failure
never ends the session (architecture §3).

Rules (protocol.md §7.6-§7.8, §8.2):
* Each ClientHello starts a fresh engine in the handshake slot; the established engine keeps
  carrying data until the new handshake completes (client DTLS restarts, roaming). A repeated
  ClientHello from the handshake's own address goes to that engine (it resends its flight); one
  from the established peer within 3 s of establishment is a stale retransmission and is dropped.
* DPD-REQ is answered with the complete payload under type DPD-RESP (openconnect's MTU probe).
* The first handshake may be answered by the C receive thread (`handshake_answer`): it sends
  the flights the client waits for without waking Python, then hands over each datagram with
  what it answered. The engine, drawing the same server random (and PSK session id), processes
  the datagram as if it had answered, and its flight must equal the thread's (else the
  handshake is dropped with an alert; the client starts over). Once the engine sends anything
  itself (a resend, an alert), the thread is withdrawn.
* Any valid record marks the path alive. No record for 2 x dpd: one DPD request (padded to the
  MTU); for 3 x dpd, or `switch-to-tcp-timeout`: the path is down (send over CSTP) until a
  record arrives again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import trio

from trio_ocserv.net.tun import Tun, TunClosed
from trio_ocserv.protocol.compress import ChannelCompressor, CompressionError
from trio_ocserv.protocol.dtls.events import (
    AlertReceived,
    ApplicationData,
    HandshakeComplete,
    HandshakeFailed,
)
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)
from trio_ocserv.server import dtls_fastpath
from trio_ocserv.server.dtls_fastpath import GcmDataPath
from trio_ocserv.server.liveness import TunnelLiveness
from trio_ocserv.server.tunnel import FORWARD_BATCH, TunnelCounters
from trio_ocserv.server.udp import Address, UdpEndpoint

log = logging.getLogger("trio_ocserv")

_DATA, _DPD_REQ, _DPD_RESP, _DISCONNECT, _COMPRESSED = 0x00, 0x03, 0x04, 0x05, 0x08
_DATA_HEADER = bytes((_DATA,))
_STALE_HELLO_WINDOW = 3.0


class DtlsChannel:
    def __init__(
        self,
        endpoint: UdpEndpoint,
        parameters: PskServerParameters | LegacyServerParameters,
        *,
        tun: Tun,
        counters: TunnelCounters,
        liveness: TunnelLiveness,
        compressor: ChannelCompressor | None,
        dpd: float,
        mtu: int,
        switch_to_tcp_timeout: float = 0,
        on_disconnect: Callable[[bytes], None] = lambda payload: None,
        after_batch: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = trio.current_time,
        label: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.parameters = parameters
        self.tun, self.counters, self.liveness = tun, counters, liveness
        self.compressor = compressor
        self.dpd, self.mtu = dpd, mtu
        self.switch_to_tcp_timeout = switch_to_tcp_timeout
        self.on_disconnect = on_disconnect
        self._after_batch = after_batch
        self.clock = clock
        self.label = label
        self.active: DtlsServer | None = None
        self.active_peer: Address | None = None
        self.active_since = 0.0
        self.handshake: DtlsServer | None = None
        self.handshake_peer: Address | None = None
        self._path_up = False
        self.last_received = 0.0
        self.dpd_sent = False
        self.cipher_name = ""
        #: The C data path of the active engine, when it can take the epoch (dtls_fastpath).
        self.fast: GcmDataPath | None = None
        #: The timer task's sleep; a new, earlier deadline moves it instead of waking the task,
        #: so a handshake step costs no task switch between our flight and the client's answer.
        self._timer_sleep = trio.CancelScope()
        self._tun_returned = trio.Event()
        #: Called when `path_up` changes (the tunnel sets it).
        self.on_path_change: Callable[[], None] = lambda: None
        #: Our server random (and PSK session id) for the first handshake, drawn now so that
        #: the C receive thread can answer it (`handshake_answer`); None once that engine exists.
        self._first_randoms: bytes | None = os.urandom(64)
        #: Whether the C receive thread may still answer for us; whether it sent every flight
        #: of the handshake in progress so far.
        self._thread_answers = False
        self._thread_answered = False

    def handshake_answer(self) -> Any | None:
        """The receive thread's answers to our first handshake, or None (see the module rules)."""
        if self._first_randoms is None:
            return None
        answer = dtls_fastpath.handshake_answer(self.parameters, self._first_randoms)
        self._thread_answers = answer is not None
        return answer

    def _random_source(self) -> Callable[[int], bytes]:
        """The engine's randomness: the first one starts with the randoms of `handshake_answer`."""
        first, self._first_randoms = self._first_randoms, None
        if first is None:
            return os.urandom
        pending = [first[:32], first[32:]]

        def random_bytes(n: int) -> bytes:
            return pending.pop(0) if pending and len(pending[0]) == n else os.urandom(n)

        return random_bytes

    # -- inbound (called synchronously by the UDP demultiplexer) ---------------------------------

    def client_hello(
        self, datagram: bytes, address: Address, now: float, answered: bytes | None = None
    ) -> None:
        engine = self.handshake
        if engine is not None and address == self.handshake_peer and not engine.closed:
            engine.receive_datagram(datagram, now)
            self._pump(engine, address, now, answered)
            return
        if (
            self.active is not None
            and address == self.active_peer
            and now - self.active_since < _STALE_HELLO_WINDOW
        ):
            return
        engine = DtlsServer(self.parameters, mtu=self.mtu + 64, random_bytes=self._random_source())
        self.handshake, self.handshake_peer = engine, address
        self._thread_answered = False
        self.endpoint.route_address(address, self)
        engine.receive_datagram(datagram, now)
        self._pump(engine, address, now, answered)

    def datagram(
        self, datagram: bytes, address: Address, now: float, answered: bytes | None = None
    ) -> None:
        active = self.active
        if active is not None and address == self.active_peer:
            plaintext = active.open_application_datagram(datagram)
            if plaintext is not None:
                if plaintext:
                    self._payload(active, plaintext, now)
                return
        if address == self.handshake_peer and self.handshake is not None:
            self.handshake.receive_datagram(datagram, now)
            self._pump(self.handshake, address, now, answered)
        elif self.active is not None:
            self.active.receive_datagram(datagram, now)
            self._pump(self.active, address, now, answered)

    def _pump(
        self, engine: DtlsServer, address: Address, now: float, answered: bytes | None = None
    ) -> None:
        flight = engine.datagrams_to_send()
        if answered is not None:
            if flight != [answered]:
                # Never expected: the client holds the thread's flight, the engine another one.
                log.error(
                    "%s: DTLS answer of the receive thread differs from the engine's; "
                    "handshake dropped", self.label,
                )  # fmt: skip
                self._withdraw_thread()
                if engine is self.handshake:
                    self.handshake = self.handshake_peer = None
                self.endpoint.send(engine.close(), address)  # the client starts over
                return
            self._thread_answered = True
        elif flight:
            self._withdraw_thread()
            self._thread_answered = False
            send = self.endpoint.send
            for out in flight:
                send(out, address)
        # Our flight is out: derive now what the client's answer would otherwise wait for.
        engine.prepare()
        while (event := engine.next_event()) is not None:
            if isinstance(event, ApplicationData):
                if engine is self.active and address != self.active_peer:
                    self.active_peer = address  # NAT rebinding: the record decrypted, follow it
                    self.endpoint.route_address(address, self)
                    if self.fast is not None:
                        self.endpoint.route_fast(address, self.fast, self.tun.fileno())
                self._payload(engine, event.payload, now)
            elif isinstance(event, HandshakeComplete):
                self._thread_answers = False  # the thread forgot it after its last answer
                if engine is self.handshake:
                    self.active, self.active_peer = engine, address
                    self.handshake, self.handshake_peer = None, None
                    self.active_since = now
                    self.cipher_name = event.suite_name
                    self._start_fast_path(engine, address)
                    self._path_alive(now)
                    log.info(
                        "%s: DTLS %s up: %s%s%s", self.label, event.mode, event.suite_name,
                        " (C data path)" if self.fast is not None else "",
                        " (answered by the receive thread)" if self._thread_answered else "",
                    )
            elif isinstance(event, AlertReceived | HandshakeFailed):
                if isinstance(event, AlertReceived) and not event.closes_connection:
                    continue
                if engine is self.handshake:
                    self.handshake = self.handshake_peer = None
                elif engine is self.active:
                    self.active = self.active_peer = None
                    self.path_up = False
                    self._stop_fast_path()
                log.info("%s: DTLS ended: %s", self.label, event)
        if engine.get_timer() is not None:
            self._rearm()

    def _withdraw_thread(self) -> None:
        if self._thread_answers:
            self._thread_answers = False
            self.endpoint.withdraw_hello_answer(self)

    @property
    def path_up(self) -> bool:
        """DTLS carries tun -> client traffic while True; CSTP does otherwise (§6)."""
        return self._path_up

    @path_up.setter
    def path_up(self, up: bool) -> None:
        changed = up != self._path_up
        self._path_up = up
        if self.fast is not None:
            self.fast.forwarding = up
        if not up:
            self._tun_returned.set()
        if changed:
            self.on_path_change()  # the tunnel's tun may change hands (CSTP's C thread)

    @property
    def tun_watched_elsewhere(self) -> bool:
        """The C receive thread reads this session's tun (while DTLS carries it)."""
        return self.fast is not None and self.fast.watched

    async def wait_tun_returned(self) -> None:
        """Until the tun is the tun reader task's again (DTLS down, or the C path gone)."""
        while self.tun_watched_elsewhere:
            self._tun_returned = trio.Event()
            await self._tun_returned.wait()

    def _start_fast_path(self, engine: DtlsServer, address: Address) -> None:
        self._stop_fast_path()
        if self.compressor is not None:
            return  # compressed DTLS payloads stay in Python
        fast = dtls_fastpath.take_over(engine, self)
        if fast is not None:
            self.fast = fast
            fast.forwarding = self._path_up
            self.endpoint.route_fast(address, fast, self.tun.fileno())

    def _stop_fast_path(self) -> None:
        fast = self.fast
        if fast is not None:
            self.endpoint.unroute_fast(self)
            fast.detach()
            self._collect_fast_counts(fast, self.clock())  # the last counts, not lost
            self.fast = None
            self._tun_returned.set()

    def sync_counters(self) -> None:
        """Take what the C data path moved since it last reported (ctl, metrics)."""
        if self.fast is not None:
            self._collect_fast_counts(self.fast, self.clock())

    def fast_received(self, path: GcmDataPath, now: float) -> None:
        """Records of the active epoch went through the C data path in this batch (and the
        tun was forwarded right after, while the path is up)."""
        if path is not self.fast:
            path.take_counts()
            return
        self._collect_fast_counts(path, now)
        if not path.watched:
            self._tun_returned.set()  # e.g. the thread met a tun error: the reader takes over

    def _collect_fast_counts(self, path: GcmDataPath, now: float) -> None:
        packets_in, bytes_in, packets_out, bytes_out, send_errno, records = path.take_counts()
        if records:
            self._path_alive(now)  # only what the peer sent proves the path
        if packets_in or packets_out:
            self.counters.add(packets_in, bytes_in, packets_out, bytes_out)
            self.liveness.data_moved(now)
        if send_errno:
            self.path_up = False  # the UDP path is broken: the next batch goes over CSTP

    def fast_path_detached(self, path: GcmDataPath) -> None:
        """The endpoint dropped the C path (its socket is closing): the tun reader task reads
        the tun again, and the Python path finds out that UDP is gone."""
        self._tun_returned.set()

    def fast_payload(self, path: GcmDataPath, plaintext: bytes, now: float) -> None:
        if path is self.fast and self.active is not None:
            self._payload(self.active, plaintext, now)

    def batch_done(self) -> None:
        """After a receive batch that reached this channel: forward what the kernel queued on the
        tun meanwhile (`after_batch`), unless the C path has just done it (it forwards right
        after each batch while the path is up)."""
        if self.fast is None or not self._path_up:
            self._after_batch()

    def _path_alive(self, now: float) -> None:
        self.last_received = now
        self.dpd_sent = False
        if not self.path_up:
            self.path_up = True
            self._rearm()

    def _payload(self, engine: DtlsServer, payload: bytes, now: float) -> None:
        self._path_alive(now)
        if not payload:
            return
        kind = payload[0]
        if kind in (_DATA, _COMPRESSED):
            packet: bytes | memoryview
            if kind == _DATA:
                packet = memoryview(payload)[1:]  # no copy: os.write takes the view
            elif self.compressor is not None:
                try:
                    packet = self.compressor.decompress(memoryview(payload)[1:])
                except CompressionError:
                    return
            else:
                return
            self.tun.write(packet)
            counters = self.counters
            counters.packets_in += 1
            counters.bytes_in += len(packet)
            self.liveness.data_moved(now)
        elif kind == _DPD_REQ:
            echo = bytes((_DPD_RESP,)) + payload[1:]
            if self.active_peer is not None:
                self.endpoint.send(engine.send_application_data(echo), self.active_peer)
        elif kind == _DISCONNECT:
            self.on_disconnect(payload[1:])
        # DPD responses, keepalives and unknown types only prove the path is alive.

    # -- outbound (called by the tunnel's tun reader) --------------------------------------------

    def forward_tun(self) -> int | None:
        """Move what the tun holds to the client through the C data path: the number of
        packets (0: the tun is empty, wait for it), or None when that path is not available
        now (then read the tun and use `send_packets`, or CSTP). Raises TunClosed."""
        fast, engine, peer = self.fast, self.active, self.active_peer
        if fast is None or engine is None or peer is None or not self.path_up:
            return None
        try:
            packets: int = fast.forward_tun(FORWARD_BATCH)
        except (OSError, EOFError) as exc:
            raise TunClosed(f"{self.tun.name}: {exc}") from exc
        if packets < 0:
            return None  # detached (the UDP socket went away): the Python path reports it
        if packets:
            self._collect_fast_counts(fast, self.clock())
        return packets

    def send_packets(self, packets: Sequence[bytes]) -> bool:
        """Carry `packets` over DTLS; False (nothing sent) when the path is not up."""
        engine, peer = self.active, self.active_peer
        if not self.path_up or engine is None or peer is None:
            return False
        seal, sendto = engine.send_application_data, self.endpoint.sock.sendto
        compressor = self.compressor
        try:
            if compressor is None:
                for packet in packets:
                    sendto(seal(_DATA_HEADER + packet), peer)
            else:
                for packet in packets:
                    sendto(seal(compressor.dtls_message(packet)), peer)
        except BlockingIOError:
            pass  # the socket buffer is full: drop, as a router would; TCP inside recovers
        except OSError:
            self.path_up = False
            return False
        return True

    def close(self) -> None:
        for engine, peer in (
            (self.active, self.active_peer),
            (self.handshake, self.handshake_peer),
        ):
            if engine is not None and peer is not None and engine.established:
                self.endpoint.send(engine.close(), peer)
        self._stop_fast_path()
        self.endpoint.forget(self)

    # -- timers (a task in the tunnel's nursery) -------------------------------------------------

    def _next_deadline(self) -> float | None:
        deadlines = [
            t
            for e in (self.handshake, self.active)
            if e is not None
            if (t := e.get_timer()) is not None
        ]
        if self.path_up:
            if self.dpd > 0:
                deadlines.append(self.last_received + (3 if self.dpd_sent else 2) * self.dpd)
            if self.switch_to_tcp_timeout > 0:
                deadlines.append(self.last_received + self.switch_to_tcp_timeout)
        return min(deadlines) if deadlines else None

    def _rearm(self) -> None:
        """Bring the timer task's wake-up forward if a deadline is now earlier (no task switch:
        Trio only re-sorts its deadlines)."""
        deadline = self._next_deadline()
        if deadline is not None and deadline < self._timer_sleep.deadline:
            self._timer_sleep.deadline = deadline

    async def run_timers(self) -> None:
        while True:
            deadline = self._next_deadline()
            self._timer_sleep = trio.CancelScope(
                deadline=deadline if deadline is not None else float("inf")
            )
            with self._timer_sleep:
                await trio.sleep_forever()
            now = self.clock()
            for engine, peer in (
                (self.handshake, self.handshake_peer),
                (self.active, self.active_peer),
            ):
                if engine is not None and peer is not None:
                    engine.handle_timer(now)
                    self._pump(engine, peer, now)
            self._check_path(now)

    def _check_path(self, now: float) -> None:
        if not self.path_up:
            return
        silent = now - self.last_received
        too_long = self.switch_to_tcp_timeout > 0 and silent >= self.switch_to_tcp_timeout
        if too_long or (self.dpd > 0 and silent >= 3 * self.dpd):
            self.path_up = False
        elif self.dpd > 0 and silent >= 2 * self.dpd and not self.dpd_sent:
            self.dpd_sent = True
            engine, peer = self.active, self.active_peer
            if engine is not None and peer is not None:
                probe = bytes((_DPD_REQ,)) + bytes(self.mtu)
                self.endpoint.send(engine.send_application_data(probe), peer)
        if not self.path_up:
            log.info("%s: no DTLS traffic for %.0f s; sending over CSTP", self.label, silent)
