"""Where a tunnel's tun comes from: the kernel (`vpns0`, ...) or memory (tests, the harness).

The tunnel code only sees the `Tun` interface; a provider opens and configures one per tunnel and
takes it away again. Removal runs in shielded cleanup, so a cancelled or crashed tunnel never
leaves its device behind.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

import trio

from trio_ocserv.net import link
from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.tun import MemoryTun, Tun, TunDevice


class TunProvider(Protocol):
    async def open_tun(self, addressing: TunAddressing) -> Tun: ...

    async def close_tun(self, tun: Tun) -> None: ...


class KernelTunProvider:
    """Real tun devices named `<prefix><n>`, the kernel choosing n; needs CAP_NET_ADMIN."""

    def __init__(self, prefix: str = "vpns") -> None:
        self.prefix = prefix
        # ifindex of each open tun, by name: teardown deletes by index, never by a name that a
        # newer tun may already carry.
        self._indexes: dict[str, int] = {}

    async def open_tun(self, addressing: TunAddressing) -> Tun:
        # Creating and configuring a tun both take the kernel's RTNL lock, which a tun being torn
        # down elsewhere can hold for milliseconds: one worker-thread call does both.
        tun, index = await trio.to_thread.run_sync(_open_tun, f"{self.prefix}%d", addressing)
        self._indexes[tun.name] = index
        return tun

    async def close_tun(self, tun: Tun) -> None:
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


def _open_tun(template: str, addressing: TunAddressing) -> tuple[TunDevice, int]:
    tun = TunDevice.open(template)
    try:
        index = link.configure_tun(tun.name, addressing)
    except BaseException:
        tun.close()
        raise
    return tun, index


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

    async def open_tun(self, addressing: TunAddressing) -> Tun:
        await trio.lowlevel.checkpoint()
        tun = MemoryTun(name=f"memtun{self.opened}")
        self.opened += 1
        for peer in (addressing.ipv4_peer, addressing.ipv6_peer):
            if peer is not None:
                self.by_peer[str(peer)] = tun
        return tun

    async def close_tun(self, tun: Tun) -> None:
        await trio.lowlevel.checkpoint()
        tun.close()
        for key in [k for k, v in self.by_peer.items() if v is tun]:
            del self.by_peer[key]
