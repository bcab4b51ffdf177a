"""MemoryTun and the batch helpers (no root: the real TunDevice is tested in tests/e2e/test_tun.py).

Every async test runs under a hard `fail_after` so a bug cannot hang the run.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_ocserv.net.tun import MemoryTun, Tun, TunClosed, receive_batch, valid_interface_name


def test_memory_tun_satisfies_the_tun_interface() -> None:
    with MemoryTun("mem7") as tun:
        as_tun: Tun = tun
        assert as_tun.name == "mem7"
        assert as_tun.fileno() >= 0


def test_read_batch_reads_until_eagain_and_keeps_packet_boundaries() -> None:
    with MemoryTun() as tun:
        assert tun.read_batch() == []
        packets = [bytes([0x45, i]) * (i + 1) for i in range(5)]
        for packet in packets:
            tun.inject(packet)
        assert tun.read_batch(3) == packets[:3]
        assert tun.read_batch(10) == packets[3:]
        assert tun.read_batch() == []


def test_write_is_seen_by_the_test_side() -> None:
    with MemoryTun() as tun:
        assert tun.write(b"\x45first")
        assert tun.write(b"\x60second")
        assert tun.written_nowait() == [b"\x45first", b"\x60second"]
        assert tun.written_nowait() == []


def test_write_returns_false_when_the_queue_is_full() -> None:
    with MemoryTun(buffer_bytes=4096) as tun:
        results = [tun.write(b"\x45" + bytes(1000)) for _ in range(400)]
        assert results[0] is True
        assert results[-1] is False


def test_closed_tun_raises_tun_closed() -> None:
    tun = MemoryTun()
    tun.close()
    tun.close()  # idempotent
    assert tun.closed
    with pytest.raises(TunClosed):
        tun.read_batch()
    with pytest.raises(TunClosed):
        tun.write(b"\x45")


def test_removed_device_ends_reads() -> None:
    with MemoryTun() as tun:
        tun.inject(b"\x45last")
        tun.remove()
        # Packets queued before the removal are lost with the interface, as with a real tun.
        with pytest.raises(TunClosed, match="end of file"):
            tun.read_batch()


def test_empty_packets_cannot_be_injected() -> None:
    with MemoryTun() as tun, pytest.raises(ValueError, match="empty"):
        tun.inject(b"")


async def test_receive_batch_waits_once_and_returns_everything_queued() -> None:
    with trio.fail_after(5), MemoryTun() as tun:
        async with trio.open_nursery() as nursery:
            result: list[list[bytes]] = []

            async def reader() -> None:
                result.append(await receive_batch(tun))

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert result == []
            tun.inject(b"\x45a")
            tun.inject(b"\x45b")
        assert result == [[b"\x45a", b"\x45b"]]


async def test_receive_written_waits_for_the_server_write() -> None:
    with trio.fail_after(5), MemoryTun() as tun:
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def test_side() -> None:
                got.append(await tun.receive_written())

            nursery.start_soon(test_side)
            await trio.testing.wait_all_tasks_blocked()
            assert tun.write(b"\x45reply")
        assert got == [b"\x45reply"]


async def test_close_wakes_a_task_waiting_for_packets() -> None:
    with trio.fail_after(5):
        tun = MemoryTun()
        async with trio.open_nursery() as nursery:
            outcome: list[str] = []

            async def reader() -> None:
                try:
                    await receive_batch(tun)
                except TunClosed:
                    outcome.append("closed")

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            tun.close()
        assert outcome == ["closed"]


@pytest.mark.parametrize("name", ["vpns0", "vpns%d", "tun-a.b_c", "a" * 15])
def test_valid_interface_names(name: str) -> None:
    assert valid_interface_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "vp ns", "vp/ns", "vp:1", "a%d%d", "x\n"])
def test_invalid_interface_names(name: str) -> None:
    assert not valid_interface_name(name)
