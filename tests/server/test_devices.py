"""Tun providers: the kernel provider's bookkeeping and its spare device (with the kernel work
faked: real tuns need root and are tested in tests/e2e/test_tun.py), and the in-memory provider
the harness uses.

Every async test runs under a hard `fail_after` so a bug cannot hang the run.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import attrs
import pytest
import trio

from trio_ocserv.net.link import LinkError, TunAddressing
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.server import devices
from trio_ocserv.server.devices import KernelTunProvider, MemoryTunProvider

ADDRESSING = TunAddressing(1400, IPv4Address("192.168.99.1"), IPv4Address("192.168.99.7"))


@attrs.define
class FakeKernel:
    """The kernel provider's worker-thread calls, recorded; devices are memory tuns."""

    opened: list[str] = attrs.Factory(list)
    configured: list[tuple[str, TunAddressing]] = attrs.Factory(list)
    removed: list[tuple[int, str, int | None]] = attrs.Factory(list)
    open_error: Exception | None = None
    configure_error: Exception | None = None
    open_calls: int = 0
    failing_opens: int = 0  # the first this many opens fail

    def open_device(self, template: str) -> tuple[MemoryTun, int]:
        self.open_calls += 1
        if self.open_error is not None:
            raise self.open_error
        if self.open_calls <= self.failing_opens:
            raise OSError(24, "Too many open files")
        self.opened.append(template)
        return MemoryTun(name=f"vpns{len(self.opened) - 1}"), 40 + len(self.opened)

    def configure(self, name: str, addressing: TunAddressing, *, index: int | None) -> int:
        if self.configure_error is not None:
            raise self.configure_error
        self.configured.append((name, addressing))
        assert index == 40 + int(name.removeprefix("vpns")) + 1  # known since the open
        return index

    def remove(self, fd: int, name: str, index: int | None) -> None:
        self.removed.append((fd, name, index))

    reset: list[tuple[str, int, TunAddressing]] = attrs.Factory(list)
    reset_error: Exception | None = None

    def reset_device(self, tun: MemoryTun, index: int, addressing: TunAddressing) -> None:
        if self.reset_error is not None:
            raise self.reset_error
        self.reset.append((tun.name, index, addressing))


async def until(condition: Callable[[], bool]) -> None:
    """Worker threads do the kernel's part: a task waiting for one does not count as blocked
    for `wait_all_tasks_blocked`, so poll (the test's `fail_after` bounds it)."""
    while not condition():
        await trio.sleep(0.001)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(devices, "_open_device", fake.open_device)
    monkeypatch.setattr(devices.link, "configure_tun", fake.configure)
    monkeypatch.setattr(devices, "_remove_tun", fake.remove)
    monkeypatch.setattr(devices, "_reset_tun", fake.reset_device)
    return fake


async def test_kernel_provider_tears_a_tun_down_by_the_index_it_was_opened_with(
    kernel: FakeKernel,
) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        first = await provider.reserve_tun()
        await provider.configure_tun(first, ADDRESSING)
        second = await provider.reserve_tun()
        await provider.configure_tun(second, ADDRESSING)
        await provider.close_tun(second)
        await provider.close_tun(first)
        await provider.close_tun(first)  # a second close finds no index: falls back to the name
    assert kernel.opened == ["vpns%d", "vpns%d"]
    assert kernel.configured == [("vpns0", ADDRESSING), ("vpns1", ADDRESSING)]
    # a MemoryTun is closed in place, so no fd travels to the worker thread (-1)
    assert kernel.removed == [(-1, "vpns1", 42), (-1, "vpns0", 41), (-1, "vpns0", None)]
    assert isinstance(first, MemoryTun) and isinstance(second, MemoryTun)
    assert first.closed and second.closed


async def test_kernel_provider_open_failure_propagates_and_records_nothing(
    kernel: FakeKernel,
) -> None:
    kernel.open_error = OSError(24, "Too many open files")
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5), pytest.raises(OSError, match="Too many open files"):
        await provider.reserve_tun()
    assert provider._indexes == {}


async def test_a_device_that_could_not_be_configured_is_removed_by_its_index(
    kernel: FakeKernel,
) -> None:
    kernel.configure_error = LinkError("vpns0: configure: File exists")
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        tun = await provider.reserve_tun()
        with pytest.raises(LinkError, match="File exists"):
            await provider.configure_tun(tun, ADDRESSING)
        await provider.close_tun(tun)
    assert kernel.removed == [(-1, "vpns0", 41)]
    assert provider._indexes == {}


async def test_kernel_provider_hands_out_its_spare_and_opens_the_next(kernel: FakeKernel) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.keep_spare)
            await until(lambda: provider._spare is not None)  # the spare, before anyone asked
            tun = await provider.reserve_tun()
            assert tun.name == "vpns0" and kernel.opened == ["vpns%d"]  # no thread on the way
            await until(lambda: provider._spare is not None)
            assert kernel.opened == ["vpns%d", "vpns%d"]  # the next spare
            await provider.configure_tun(tun, ADDRESSING)
            await provider.close_tun(tun)
            nursery.cancel_scope.cancel()
    # The spare left at the stop is closed, by its index too.
    assert kernel.removed == [(-1, "vpns0", 41), (-1, "vpns1", 42)]
    assert provider._indexes == {}


async def test_kernel_provider_retries_a_failed_spare_at_the_next_reservation(
    kernel: FakeKernel,
) -> None:
    kernel.failing_opens = 1
    provider = KernelTunProvider("vpns")
    with trio.fail_after(4):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.keep_spare)
            await until(lambda: kernel.open_calls == 1)  # the keeper's first open failed
            tun = await provider.reserve_tun()  # no spare yet: made for the reservation
            # The keeper tried again at once (its pause is 5 s, beyond this test's limit); the
            # two opens race in two threads, so either may get vpns0.
            await until(lambda: provider._spare is not None)
            assert provider._spare is not tun and len(kernel.opened) == 2
            nursery.cancel_scope.cancel()


async def test_a_spare_taken_in_a_cancelled_scope_still_reaches_the_caller(
    kernel: FakeKernel,
) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.keep_spare)
            await until(lambda: provider._spare is not None)
            with trio.CancelScope() as scope:
                scope.cancel()
                tun = await provider.reserve_tun()  # out of its slot: not lost to Cancelled
            assert tun.name == "vpns0"
            await provider.close_tun(tun)
            nursery.cancel_scope.cancel()
    assert (-1, "vpns0", 41) in kernel.removed


async def test_the_spare_keeper_outlives_a_device_it_cannot_make(kernel: FakeKernel) -> None:
    kernel.open_error = ValueError("device: 'bad name!' is not a valid interface name")
    provider = KernelTunProvider("bad name!")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.keep_spare)
            await until(lambda: kernel.open_calls == 1)
            await trio.sleep(0.01)
            assert provider._spare is None  # no spare, and the keeper (and server) still run
            nursery.cancel_scope.cancel()


async def test_a_tun_no_script_saw_is_reset_and_serves_the_next_tunnel(
    kernel: FakeKernel,
) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        first = await provider.reserve_tun()
        await provider.configure_tun(first, ADDRESSING)
        await provider.close_tun(first, reuse=True)
        assert kernel.reset == [("vpns0", 41, ADDRESSING)] and kernel.removed == []
        again = await provider.reserve_tun()
        assert again is first and kernel.opened == ["vpns%d"]  # no new device
        other = TunAddressing(1400, IPv4Address("192.168.99.1"), IPv4Address("192.168.99.9"))
        await provider.configure_tun(again, other)
        assert kernel.configured[-1] == ("vpns0", other)  # by the index known since the open


@pytest.mark.parametrize("case", ["no-reuse", "not-configured", "ipv6", "reset-fails", "full"])
async def test_a_tun_is_removed_when_it_cannot_be_reused(kernel: FakeKernel, case: str) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        others = [await provider.reserve_tun() for _ in range(2 if case == "full" else 0)]
        tun = await provider.reserve_tun()
        for other in others:  # two kept already: a third is removed
            await provider.configure_tun(other, ADDRESSING)
            await provider.close_tun(other, reuse=True)
        if case == "ipv6":
            await provider.configure_tun(
                tun, attrs.evolve(ADDRESSING, ipv6_local=IPv6Address("fd00::1"))
            )
        elif case != "not-configured":
            await provider.configure_tun(tun, ADDRESSING)
        if case == "reset-fails":
            kernel.reset_error = LinkError("vpns0: reset: No such device")
        await provider.close_tun(tun, reuse=case != "no-reuse")
        assert [name for _, name, _ in kernel.removed] == [tun.name]


async def test_kept_devices_are_removed_at_stop_and_none_is_kept_after(
    kernel: FakeKernel,
) -> None:
    provider = KernelTunProvider("vpns")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.keep_spare)
            await until(lambda: len(kernel.opened) == 1)  # the spare
            kept, late = await provider.reserve_tun(), await provider.reserve_tun()
            for tun in (kept, late):
                await provider.configure_tun(tun, ADDRESSING)
            await provider.close_tun(kept, reuse=True)
            nursery.cancel_scope.cancel()
        removed_at_stop = sorted(name for _, name, _ in kernel.removed)
        await provider.close_tun(late, reuse=True)  # a tunnel that ends after the stop
    assert kept.name in removed_at_stop and late.name not in removed_at_stop
    assert [name for _, name, _ in kernel.removed][-1] == late.name
    assert [name for name, _, _ in kernel.reset] == [kept.name]  # the late one was not reset
    assert sorted(name for _, name, _ in kernel.removed) == sorted(
        f"vpns{i}" for i in range(len(kernel.opened))
    )


async def test_memory_provider_finds_a_tun_by_its_peer_until_closed() -> None:
    provider = MemoryTunProvider()
    with trio.fail_after(5):
        tun = await provider.reserve_tun()
        assert provider.by_peer == {}
        await provider.configure_tun(tun, ADDRESSING)
        assert provider.by_peer == {"192.168.99.7": tun}
        await provider.close_tun(tun)
    assert provider.by_peer == {}
    assert isinstance(tun, MemoryTun) and tun.closed
