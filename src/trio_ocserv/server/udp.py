"""The UDP side of the data channel: one socket per `udp-port` address, and the demultiplexer.

Owns the socket's receive loop (drained until EAGAIN with one `wait_readable` per batch) and the
two lookup tables of protocol.md §7.7: client address -> channel, and App-ID / session id ->
channel for ClientHellos (a new handshake, a reconnect from a new port, a roaming client).
Anything else is dropped without allocating state or logging per datagram.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

import trio

from trio_ocserv.protocol.dtls.hello_peek import is_client_hello, peek_client_hello_session_id
from trio_ocserv.server import dtls_fastpath
from trio_ocserv.server.dtls_fastpath import GcmDataPath, address_key

log = logging.getLogger("trio_ocserv")

Address = tuple[str, int] | tuple[str, int, int, int]
_MAX_DATAGRAM = 65535
_BATCH = 256
_MIN_RECORD = 13


class DatagramSink(Protocol):
    """What a session's DTLS channel offers the demultiplexer.

    `answered`: the flight the C receive thread already sent in reply to this datagram (it
    answers a login's handshake when the sink offers `handshake_answer()`), or None."""

    def client_hello(
        self, datagram: bytes, address: Address, now: float, answered: bytes | None = None
    ) -> None: ...

    def datagram(
        self, datagram: bytes, address: Address, now: float, answered: bytes | None = None
    ) -> None: ...

    def handshake_answer(self) -> Any | None:
        """A HandshakeAnswer (dtls_fastpath.handshake_answer) for the receive thread to answer
        the first handshake with (UdpReceiver.expect_hello), or None."""

    def batch_done(self) -> None:
        """Called once after a receive batch that reached this sink."""

    def fast_received(self, path: GcmDataPath, now: float) -> None:
        """The C data path delivered records of `path` (this sink's) in this batch."""

    def fast_payload(self, path: GcmDataPath, plaintext: bytes, now: float) -> None:
        """A record the C data path opened that carries no IP packet (DPD, DISCONNECT...)."""

    def fast_path_detached(self, path: GcmDataPath) -> None:
        """`path` no longer moves anything (the endpoint is closing): read the tun again."""


class UdpEndpoint:
    def __init__(self, sock: socket.socket, clock: Callable[[], float] = trio.current_time) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.clock = clock
        self.by_address: dict[Address, DatagramSink] = {}
        self.by_session_id: dict[bytes, DatagramSink] = {}
        #: address key (dtls_fastpath.address_key) -> the C data path of an established session
        self.fast_routes: dict[bytes, GcmDataPath] = {}
        #: the C receive thread while `serve` runs it (dtls_fastpath.UdpReceiver)
        self.receiver: Any = None
        self.dropped = 0
        self._buffer = bytearray(_MAX_DATAGRAM)

    @classmethod
    def bind(cls, host: str | None, port: int) -> UdpEndpoint:
        family = socket.AF_INET6 if host is not None and ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bursts of 1400-byte records: a deep receive queue avoids drops between batches.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((host or "0.0.0.0", port))
        return cls(sock)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def register(self, session_id: bytes, sink: DatagramSink) -> None:
        self.by_session_id[session_id] = sink
        if self.receiver is not None:
            self._expect_hello(self.receiver, session_id, sink)

    @staticmethod
    def _expect_hello(receiver: Any, session_id: bytes, sink: DatagramSink) -> None:
        # The login's handshake is answered from the receive thread, without waking us: the
        # flights the client waits for then cost no Python wake-up.
        if 0 < len(session_id) <= 32 and (answer := sink.handshake_answer()) is not None:
            receiver.expect_hello(session_id, answer)

    def withdraw_hello_answer(self, sink: DatagramSink) -> None:
        """The receive thread answers nothing more for `sink` (Python's engine speaks now)."""
        if self.receiver is not None:
            for key in [k for k, v in self.by_session_id.items() if v is sink]:
                self.receiver.forget_hello(key)

    def forget(self, sink: DatagramSink) -> None:
        """Drop every route to `sink` (its tunnel ended)."""
        self.withdraw_hello_answer(sink)
        for table in (self.by_session_id, self.by_address):
            for key in [k for k, v in table.items() if v is sink]:
                del table[key]  # type: ignore[arg-type]
        self.unroute_fast(sink)

    def route_fast(self, address: Address, path: GcmDataPath, tun_fd: int) -> None:
        """Let the C data path take `path`'s records from `address` to `tun_fd`; replaces any
        older path of the same sink (a new handshake, a roaming client)."""
        self.unroute_fast(path.owner)
        family, key = address_key(address)
        path.attach(tun_fd, self.sock.fileno(), family, key)
        self.fast_routes[key] = path
        if self.receiver is not None:
            self.receiver.add_route(key, path)

    def unroute_fast(self, sink: object) -> None:
        for key in [k for k, v in self.fast_routes.items() if v.owner is sink]:
            self._drop_fast_route(key)

    def _drop_fast_route(self, key: bytes) -> None:
        path = self.fast_routes.pop(key)
        if self.receiver is not None:
            self.receiver.remove_route(key)
        path.detach()  # no thread touches its fds after this returns
        path.owner.fast_path_detached(path)

    def route_address(self, address: Address, sink: DatagramSink) -> None:
        self.by_address[address] = sink

    def send(self, datagram: bytes, address: Address) -> bool:
        """Best effort, never blocks: UDP may drop, and DTLS recovers (or CSTP carries on)."""
        try:
            self.sock.sendto(datagram, address)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.debug("udp send to %s failed: %s", address, exc)
            return False
        return True

    async def serve(self) -> None:
        module = dtls_fastpath.fastpath
        try:
            if module is None:
                await self._serve_python()
            elif dtls_fastpath.receive_thread_enabled():
                await self._serve_threaded(module)
            else:
                await self._serve_fast(module.receive_udp)
        finally:
            # The socket closes after this: no C path may keep sending on its fd number.
            for key in list(self.fast_routes):
                self._drop_fast_route(key)

    async def _serve_threaded(self, module: Any) -> None:
        """The C receive thread reads the socket (data records never wake Python; a ping
        reply leaves from that thread); this task handles what it hands over."""
        receiver = module.UdpReceiver(self.sock.fileno())
        for key, path in self.fast_routes.items():
            receiver.add_route(key, path)
        for session_id, sink in self.by_session_id.items():
            self._expect_hello(receiver, session_id, sink)
        thread = threading.Thread(target=receiver.run, name="trio-ocserv-dtls", daemon=True)
        self.receiver = receiver
        thread.start()
        try:
            while True:
                await trio.lowlevel.wait_readable(receiver.wake_fd)
                datagrams, payloads, touched = receiver.take()
                self._handle_batch(datagrams, payloads, touched, self.clock())
        finally:
            self.receiver = None
            receiver.stop()
            thread.join()  # the thread sees the stop eventfd at once
            receiver.close()
            self.dropped += receiver.dropped
            trio.lowlevel.notify_closing(receiver.wake_fd)

    def _handle_batch(
        self,
        datagrams: list[tuple[bytes, Address, bytes | None]],
        payloads: list[tuple[GcmDataPath, bytes]],
        touched: list[GcmDataPath],
        now: float,
    ) -> None:
        reached: set[DatagramSink] = set()
        for path in touched:
            owner = path.owner
            owner.fast_received(path, now)
            reached.add(owner)
        for path, plaintext in payloads:
            path.owner.fast_payload(path, plaintext, now)
        for datagram, address, answered in datagrams:
            sink = self._dispatch(datagram, address, now, answered)
            if sink is not None:
                reached.add(sink)
        for sink in reached:
            sink.batch_done()

    async def _serve_fast(self, receive_udp: Callable[..., tuple[Any, Any, Any, bool]]) -> None:
        """One recvmmsg batch at a time; the C side handles data records of established
        sessions and returns the rest (handshakes, DPD, unknown peers) for `_dispatch`."""
        sock, routes = self.sock, self.fast_routes
        fd = sock.fileno()
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = self.clock()
            datagrams, payloads, touched, more = receive_udp(fd, routes, _BATCH)
            self._handle_batch(datagrams, payloads, touched, now)
            if more:
                # A full batch: let other tasks (the tun readers) run before the next one.
                await trio.lowlevel.checkpoint()

    async def _serve_python(self) -> None:
        sock, buffer = self.sock, self._buffer
        view = memoryview(buffer)
        dispatch = self._dispatch
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = self.clock()
            reached: set[DatagramSink] = set()
            full = True
            for _ in range(_BATCH):
                try:
                    size, address = sock.recvfrom_into(buffer)
                except (BlockingIOError, InterruptedError):
                    full = False
                    break
                except OSError:
                    continue  # ICMP errors surface here on Linux; nothing to do
                if size >= _MIN_RECORD:
                    sink = dispatch(bytes(view[:size]), address, now)
                    if sink is not None:
                        reached.add(sink)
            for sink in reached:
                sink.batch_done()
            if full:
                # A full batch: let other tasks (the tun readers) run before the next one.
                await trio.lowlevel.checkpoint()

    def _dispatch(
        self, datagram: bytes, address: Address, now: float, answered: bytes | None = None
    ) -> DatagramSink | None:
        if datagram[0] == 22 and is_client_hello(datagram):
            session_id = peek_client_hello_session_id(datagram)
            sink = self.by_session_id.get(session_id) if session_id is not None else None
            if sink is not None:
                sink.client_hello(datagram, address, now, answered)
                return sink
        sink = self.by_address.get(address)
        if sink is not None:
            sink.datagram(datagram, address, now, answered)
        else:
            self.dropped += 1
        return sink
