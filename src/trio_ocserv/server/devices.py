"""Where a tunnel's tun comes from: the kernel (`vpns0`, ...) or memory (tests, the harness).

The tunnel code only sees the `Tun` interface; a provider hands out a device (`reserve_tun`),
gives it its addresses (`configure_tun`) and takes it away again. Removal runs in shielded
cleanup, so a cancelled or crashed tunnel never leaves its device behind.

The kernel provider keeps one *spare* device open ahead of time (`keep_spare`, a task of the
server's nursery): creating a tun is a worker-thread round trip on a CONNECT's critical path,
taking the spare is not. The spare is an unconfigured, down `<prefix><n>`; a server killed
with one open leaves it to the next start's stale-device removal, like any other of its tuns.

It also *reuses* devices (`close_tun(..., reuse=True)`, for tunnels no script saw): an IPv4-only
tun is brought down, loses its address (the kernel drops its routes) and is drained, and then
waits for the next reservation, at most `_REUSED` of them. Destroying a tun and registering a
new one are the slowest netdevice operations there are: both hold the kernel's RTNL lock
through RCU grace periods, which stalls every other netlink user of the machine (the clients'
own `ip` commands in the benchmarks). Reuse made connect/disconnect cycles 28% faster there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from typing import Protocol

import trio

from trio_ocserv.net import link
from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.tun import MemoryTun, Tun, TunDevice

log = logging.getLogger("trio_ocserv")
# After a failed spare (out of fds, say): try again this often, or at the next reservation.
_SPARE_RETRY = 5.0
# Reset devices kept for reuse, at most.
_REUSED = 2


class TunProvider(Protocol):
    async def reserve_tun(self) -> Tun:
        """An open device without addresses (down); raises OSError when none can be made."""
        ...

    async def configure_tun(self, tun: Tun, addressing: TunAddressing) -> None:
        """Give `tun` its addresses and MTU and bring it up; raises OSError or LinkError."""
        ...

    async def close_tun(self, tun: Tun, *, reuse: bool = False) -> None:
        """Remove `tun`; with `reuse`, the provider may keep it (reset) for a next tunnel."""
        ...

    async def keep_spare(self) -> None:
        """Runs for the server's lifetime (in its nursery), keeping devices ready to reserve."""
        ...


class KernelTunProvider:
    """Real tun devices named `<prefix><n>`, the kernel choosing n; needs CAP_NET_ADMIN."""

    def __init__(self, prefix: str = "vpns") -> None:
        self.prefix = prefix
        # ifindex of each open tun, by name: teardown deletes by index, never by a name that a
        # newer tun may already carry.
        self._indexes: dict[str, int] = {}
        self._spare: TunDevice | None = None
        self._spare_taken = trio.Event()
        #: Devices reset for reuse (`close_tun`), and the addressing of each configured one.
        self._reused: list[Tun] = []
        self._addressing: dict[str, TunAddressing] = {}
        #: Set when the keeper (the server) has stopped: from then on nothing is kept.
        self._stopped = False

    async def reserve_tun(self) -> Tun:
        if self._reused:
            # Not a cancellation point, as for the spare; the spare stays for the next one.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return self._reused.pop()
        spare, self._spare = self._spare, None
        self._spare_taken.set()  # the keeper makes the next one (or retries after a failure)
        if spare is not None:
            # Not a cancellation point: the spare is out of its slot and must reach the caller.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return spare
        return await self._open()

    async def _open(self) -> TunDevice:
        # Shielded: a device opened by a thread that outlived its caller's cancellation would
        # be dropped with its fd still open.
        with trio.CancelScope(shield=True):
            tun, index = await trio.to_thread.run_sync(_open_device, f"{self.prefix}%d")
        self._indexes[tun.name] = index
        return tun

    async def configure_tun(self, tun: Tun, addressing: TunAddressing) -> None:
        # Configuring takes the kernel's RTNL lock, which a tun being torn down elsewhere can hold
        # for milliseconds: a worker thread waits for it, not the event loop.
        known = self._indexes.get(tun.name)
        self._addressing.pop(tun.name, None)
        self._indexes[tun.name] = await trio.to_thread.run_sync(
            functools.partial(link.configure_tun, tun.name, addressing, index=known)
        )
        self._addressing[tun.name] = addressing

    async def keep_spare(self) -> None:
        """Keep one spare device open; close it when the server stops. After a failure (out of
        file descriptors, no /dev/net/tun) it tries again at the next reservation or after a
        pause; until then CONNECT creates its device itself, and reports the error."""
        try:
            while True:
                # Only this task fills the slot, so a spare is never overwritten.
                if self._spare is None:
                    self._spare_taken = trio.Event()  # from here on, a reservation is seen
                    try:
                        self._spare = await self._open()
                    except (OSError, ValueError) as exc:  # ValueError: a bad `device` name
                        log.debug("no spare tun device: %s", exc)
                        with trio.move_on_after(_SPARE_RETRY):
                            await self._spare_taken.wait()
                        continue
                self._spare_taken = trio.Event()
                await self._spare_taken.wait()
        finally:
            self._stopped = True
            left: list[Tun] = [*self._reused, *([self._spare] if self._spare is not None else [])]
            self._reused, self._spare = [], None
            with trio.CancelScope(shield=True):
                for tun in left:
                    await self.close_tun(tun)

    async def close_tun(self, tun: Tun, *, reuse: bool = False) -> None:
        addressing = self._addressing.pop(tun.name, None)
        index = self._indexes.get(tun.name)
        if (
            reuse
            and index is not None
            and addressing is not None
            and addressing.ipv6_local is None
            and addressing.ipv6_peer is None
            and len(self._reused) < _REUSED
            and not self._stopped
        ):
            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_reset_tun, tun, index, addressing)
            except (OSError, link.LinkError) as exc:
                log.debug("%s: not reused: %s", tun.name, exc)
            else:
                if not self._stopped:  # the server may have stopped while the reset ran
                    self._reused.append(tun)
                    return
        # A non-persistent tun disappears with its last fd; unregistering it is slow kernel
        # work (RCU), so the close and the check happen in one worker-thread call.
        if isinstance(tun, TunDevice):
            fd = tun.release_fd()
        else:
            tun.close()
            fd = -1
        index = self._indexes.pop(tun.name, None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_tun, fd, tun.name, index)

    async def remove_stale(self) -> list[str]:
        """Devices of a killed previous run (`<prefix><n>` tun devices) are removed at start."""
        return await trio.to_thread.run_sync(link.remove_stale_tun_devices, self.prefix)


def _open_device(template: str) -> tuple[TunDevice, int]:
    tun = TunDevice.open(template)
    try:
        # Known from the start, so that teardown never has to look the device up by a name
        # that the next tun may already carry.
        return tun, socket.if_nametoindex(tun.name)
    except BaseException:
        tun.close()
        raise


def _reset_tun(tun: Tun, index: int, addressing: TunAddressing) -> None:
    link.reset_tun(tun.name, index, addressing)
    # Packets the kernel queued before the device went down belong to the last tunnel.
    while True:
        try:
            os.read(tun.fileno(), 65536)
        except BlockingIOError:
            return


def _remove_tun(fd: int, name: str, index: int | None) -> None:
    if fd >= 0:
        os.close(fd)
    # Normally gone with its fd; another holder of the device would keep it alive.
    with contextlib.suppress(link.LinkError):
        if index is not None:
            link.delete_link_index(index, name)
        elif link.link_exists(name):
            link.delete_link(name)


class MemoryTunProvider:
    """In-memory tuns for tests: the harness finds each one by the client's address."""

    def __init__(self) -> None:
        self.by_peer: dict[str, MemoryTun] = {}
        self.opened = 0
        self._configured = trio.Event()

    async def reserve_tun(self) -> Tun:
        await trio.lowlevel.checkpoint()
        tun = MemoryTun(name=f"memtun{self.opened}")
        self.opened += 1
        return tun

    async def configure_tun(self, tun: Tun, addressing: TunAddressing) -> None:
        await trio.lowlevel.checkpoint()
        assert isinstance(tun, MemoryTun)
        for peer in (addressing.ipv4_peer, addressing.ipv6_peer):
            if peer is not None:
                self.by_peer[str(peer)] = tun
        self._configured.set()
        self._configured = trio.Event()

    async def configured(self, peer: str) -> MemoryTun:
        """The tun of the client at `peer`, once configured: the server answers CONNECT while
        it configures the tun, so a client may hold its answer a moment before."""
        while peer not in self.by_peer:
            await self._configured.wait()
        return self.by_peer[peer]

    async def keep_spare(self) -> None:
        """Memory tuns cost nothing to make: no spare."""

    async def close_tun(self, tun: Tun, *, reuse: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        tun.close()
        for key in [k for k, v in self.by_peer.items() if v is tun]:
            del self.by_peer[key]
