"""Tun devices: the packet end of a VPN session, as a non-blocking file descriptor.

Owns: the `Tun` interface the data path uses (batch reads until EAGAIN, one `wait_readable` per
batch, single-packet writes), the real `TunDevice` (opened with TUNSETIFF, IFF_TUN | IFF_NO_PI, so
every read/write is exactly one bare IP packet) and `MemoryTun` for tests without root.

Must not: configure addresses, routes or MTU (that is `net.link`, run in a thread), or parse
packets. Closing a `TunDevice` removes the interface: it is never made persistent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from types import TracebackType
from typing import Protocol, Self

import trio

__all__ = [
    "DEFAULT_BATCH",
    "MemoryTun",
    "Tun",
    "TunClosed",
    "TunDevice",
    "receive_batch",
    "valid_interface_name",
]

# From <linux/if_tun.h>: _IOW('T', 202, int), and the ifreq flags.
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16

DEFAULT_BATCH = 64
# Larger than any IP packet, so a read never truncates one; os.read shrinks the result for free.
_READ_SIZE = 65536
# Errors that mean the device went away under us (e.g. `ip link del`), not a bug of ours.
_GONE = frozenset({errno.EBADFD, errno.EIO, errno.ENXIO, errno.ENODEV})

_NAME = re.compile(r"[A-Za-z0-9_.\-]+(%d)?[A-Za-z0-9_.\-]*")


class TunClosed(Exception):
    """The device is closed or was removed; the session owning it should end."""


class Tun(Protocol):
    """What the tunnel data path needs from a tun device."""

    @property
    def name(self) -> str: ...

    def fileno(self) -> int: ...

    def read_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        """Read packets until EAGAIN or `max_packets`; an empty list means wait_readable first."""
        ...

    def write(self, packet: bytes | memoryview) -> bool:
        """Write one IP packet; False if the kernel dropped it (queue full, malformed packet)."""
        ...

    async def wait_readable(self) -> None: ...

    def close(self) -> None: ...


async def receive_batch(tun: Tun, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
    """Wait for and return a non-empty batch: one scheduler round trip per batch, not per packet."""
    while True:
        packets = tun.read_batch(max_packets)
        if packets:
            return packets
        await tun.wait_readable()


def valid_interface_name(name: str) -> bool:
    """A Linux interface name (or a `prefix%d` template): 1-15 bytes, no '/', ':' or spaces."""
    return 0 < len(name.encode()) < IFNAMSIZ and _NAME.fullmatch(name) is not None


class _FdTun:
    """Packet I/O on a non-blocking fd where one read/write is one packet (tun or SEQPACKET)."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        return self._fd

    def read_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        fd = self._fd
        if fd < 0:
            raise TunClosed(f"{self._name}: closed")
        packets: list[bytes] = []
        read = os.read
        try:
            while len(packets) < max_packets:
                packet = read(fd, _READ_SIZE)
                if not packet:
                    raise TunClosed(f"{self._name}: end of file")
                packets.append(packet)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in _GONE:
                raise TunClosed(f"{self._name}: {exc.strerror}") from exc
            raise
        return packets

    def write(self, packet: bytes | memoryview) -> bool:
        if self._fd < 0:
            raise TunClosed(f"{self._name}: closed")
        try:
            os.write(self._fd, packet)
        except BlockingIOError:
            return False
        except OSError as exc:
            # EINVAL: the kernel refused the bytes as a packet; a peer can send those, drop them.
            # EIO: the device is down (not configured yet, or set down by the admin): dropped,
            # as the kernel drops what is routed to an interface that is down.
            if exc.errno in (errno.EINVAL, errno.EIO):
                return False
            if exc.errno in _GONE:
                raise TunClosed(f"{self._name}: {exc.strerror}") from exc
            raise
        return True

    async def wait_readable(self) -> None:
        if self._fd < 0:
            raise TunClosed(f"{self._name}: closed")
        try:
            await trio.lowlevel.wait_readable(self._fd)
        except trio.ClosedResourceError as exc:
            raise TunClosed(f"{self._name}: closed while waiting") from exc

    def close(self) -> None:
        fd = self.release_fd()
        if fd >= 0:
            os.close(fd)

    def release_fd(self) -> int:
        """Mark closed and hand over the fd (-1 if already closed) for the caller to close.

        Closing a tun fd unregisters the interface, which can take the kernel milliseconds: the
        server does that `os.close` in a worker thread rather than in the event loop."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            # Wake any task blocked in wait_readable before the fd number can be reused; outside
            # trio.run (RuntimeError) nobody can be waiting.
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(fd)
        return fd

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TunDevice(_FdTun):
    """A kernel tun interface; exists as long as this object's fd is open."""

    @classmethod
    def open(cls, name: str) -> TunDevice:
        """Create `name` (a `vpns%d` template lets the kernel pick the number). Needs CAP_NET_ADMIN.

        The interface starts down and unconfigured: `net.link.configure_tun` brings it up.
        """
        if not valid_interface_name(name):
            raise ValueError(f"device: {name!r} is not a valid interface name")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            request = struct.pack(f"{IFNAMSIZ}sH", name.encode(), IFF_TUN | IFF_NO_PI)
            answer = fcntl.ioctl(fd, TUNSETIFF, request)
        except BaseException:
            os.close(fd)
            raise
        actual = answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        return cls(fd, actual)


class MemoryTun(_FdTun):
    """A tun stand-in for tests and the in-process harness, no root needed.

    The server side is one end of an AF_UNIX SOCK_SEQPACKET socketpair: reads and writes keep
    packet boundaries and hit EAGAIN exactly like a tun fd, so the server's code path is the one
    used in production. The test drives the other end with `inject` (packets the "network" sends
    towards the VPN client) and `receive_written` (packets the server wrote to the tun).
    """

    def __init__(self, name: str = "memtun0", buffer_bytes: int = 4 << 20) -> None:
        server_end, self._peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (server_end, self._peer):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            sock.setblocking(False)
        super().__init__(server_end.detach(), name)

    def inject(self, packet: bytes) -> None:
        """Queue a packet for the server to read; raises BlockingIOError if the buffer is full."""
        if not packet:
            raise ValueError("an empty packet would read as end of file")
        self._peer.send(packet)

    def written_nowait(self) -> list[bytes]:
        """Every packet the server wrote that the test has not taken yet."""
        packets: list[bytes] = []
        try:
            while True:
                packet = self._peer.recv(_READ_SIZE)
                if not packet:
                    break
                packets.append(packet)
        except BlockingIOError:
            pass
        return packets

    async def receive_written(self) -> bytes:
        """Wait for the next packet the server wrote."""
        while True:
            try:
                packet = self._peer.recv(_READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._peer)
                continue
            if not packet:
                raise TunClosed(f"{self.name}: server side closed")
            return packet

    def remove(self) -> None:
        """Simulate the interface vanishing: the server's next read raises TunClosed."""
        self._close_peer()

    def close(self) -> None:
        super().close()
        self._close_peer()

    def _close_peer(self) -> None:
        if self._peer.fileno() >= 0:
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(self._peer)
            self._peer.close()
