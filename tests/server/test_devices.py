"""Tun providers: the kernel provider's bookkeeping (with the netlink work faked: real tuns need
root and are tested in tests/e2e/test_tun.py), and the in-memory provider the harness uses.

Every async test runs under a hard `fail_after` so a bug cannot hang the run.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
import trio

from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.server import devices
from trio_ocserv.server.devices import KernelTunProvider, MemoryTunProvider

ADDRESSING = TunAddressing(1400, IPv4Address("192.168.99.1"), IPv4Address("192.168.99.7"))


async def test_kernel_provider_tears_a_tun_down_by_the_index_it_was_configured_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[tuple[str, TunAddressing]] = []
    removed: list[tuple[int, str, int | None]] = []

    def fake_open(template: str, addressing: TunAddressing) -> tuple[MemoryTun, int]:
        opened.append((template, addressing))
        return MemoryTun(name=f"vpns{len(opened) - 1}"), 40 + len(opened)

    def fake_remove(fd: int, name: str, index: int | None) -> None:
        removed.append((fd, name, index))

    monkeypatch.setattr(devices, "_open_tun", fake_open)
    monkeypatch.setattr(devices, "_remove_tun", fake_remove)
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        first = await provider.open_tun(ADDRESSING)
        second = await provider.open_tun(ADDRESSING)
        await provider.close_tun(second)
        await provider.close_tun(first)
        await provider.close_tun(first)  # a second close finds no index: falls back to the name
    assert opened == [("vpns%d", ADDRESSING), ("vpns%d", ADDRESSING)]
    # a MemoryTun is closed in place, so no fd travels to the worker thread (-1)
    assert removed == [(-1, "vpns1", 42), (-1, "vpns0", 41), (-1, "vpns0", None)]
    assert isinstance(first, MemoryTun) and isinstance(second, MemoryTun)
    assert first.closed and second.closed


async def test_kernel_provider_open_failure_propagates_and_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing_open(template: str, addressing: TunAddressing) -> tuple[MemoryTun, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(devices, "_open_tun", failing_open)
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5), pytest.raises(OSError, match="Too many open files"):
        await provider.open_tun(ADDRESSING)
    assert provider._indexes == {}


async def test_memory_provider_finds_a_tun_by_its_peer_until_closed() -> None:
    provider = MemoryTunProvider()
    with trio.fail_after(5):
        tun = await provider.open_tun(ADDRESSING)
        assert provider.by_peer == {"192.168.99.7": tun}
        await provider.close_tun(tun)
    assert provider.by_peer == {}
    assert isinstance(tun, MemoryTun) and tun.closed
