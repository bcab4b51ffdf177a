"""The test client's DTLS channel against our own sans-IO DTLS server on a loopback UDP socket:
handshake, DPD echo, framing, and the failure paths (silent port, refused port, alerts).

Loopback only (127.0.0.1, port 0); every test under `fail_after`.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio

from trio_ocserv.protocol import cstp
from trio_ocserv.protocol.cstp import CstpPacketType
from trio_ocserv.protocol.dtls import (
    ApplicationData,
    DtlsPskClient,
    DtlsServer,
    PskServerParameters,
)
from trio_ocserv.testing.client_dtls import DtlsChannel, DtlsChannelError

TIMEOUT = 10
PSK = bytes(range(32))
APP_ID = os.urandom(32)


def udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return sock


async def serve_psk(
    sock: trio.socket.SocketType,
    received: list[bytes],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A one-client DTLS server echoing every DATA message back as DATA, recording them all."""
    task_status.started()
    server: DtlsServer | None = None
    while True:
        deadline = server.get_timer() if server is not None else None
        with trio.move_on_at(deadline if deadline is not None else float("inf")):
            data, address = await sock.recvfrom(65536)
            if server is None:
                server = DtlsServer(PskServerParameters(PSK))
            server.receive_datagram(data, trio.current_time())
            while (event := server.next_event()) is not None:
                if isinstance(event, ApplicationData):
                    received.append(event.payload)
                    if event.payload[:1] == b"\x00":
                        await sock.sendto(server.send_application_data(event.payload), address)
            for datagram in server.datagrams_to_send():
                await sock.sendto(datagram, address)
            continue
        assert server is not None
        server.handle_timer(trio.current_time())
        for datagram in server.datagrams_to_send():
            await sock.sendto(datagram, address)


async def test_psk_channel_echoes_data_and_answers_dpd() -> None:
    with trio.fail_after(TIMEOUT):
        sock = udp_socket()
        await sock.bind(("127.0.0.1", 0))
        received: list[bytes] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_psk, sock, received)
            channel = await DtlsChannel.open(
                sock.getsockname(), DtlsPskClient(PSK, APP_ID), handshake_seconds=5
            )
            assert channel.handshake.mode == "psk"
            message = cstp.encode_dtls_message(CstpPacketType.DATA, b"\x45" + bytes(40))
            await channel.send_message(message)
            frame = await channel.receive_frame()
            assert (frame.packet_type, frame.payload) == (CstpPacketType.DATA, message[1:])
            await channel.send_dpd(10)
            while len(received) < 2:  # the datagram crosses loopback to the server task
                await trio.sleep(0.01)
            assert received[-1] == b"\x03" + bytes(10)
            channel.close()
            assert channel.closed
            with pytest.raises(DtlsChannelError):
                await channel.send_message(message)
            nursery.cancel_scope.cancel()
        sock.close()


async def test_silent_port_times_out() -> None:
    with trio.fail_after(TIMEOUT):
        sink = udp_socket()
        await sink.bind(("127.0.0.1", 0))
        with pytest.raises(DtlsChannelError, match="timed out"):
            await DtlsChannel.open(
                sink.getsockname(), DtlsPskClient(PSK, APP_ID), handshake_seconds=0.5
            )
        sink.close()


async def test_refused_port_fails_fast() -> None:
    with trio.fail_after(TIMEOUT):
        closed = udp_socket()
        await closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
        closed.close()  # nothing listens: the kernel answers ICMP port unreachable
        with pytest.raises(DtlsChannelError):
            await DtlsChannel.open(address, DtlsPskClient(PSK, APP_ID), handshake_seconds=5)


async def test_wrong_psk_fails_the_handshake() -> None:
    with trio.fail_after(TIMEOUT):
        sock = udp_socket()
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_psk, sock, [])
            # The server's Finished does not verify with our key: we never complete.
            with pytest.raises(DtlsChannelError):
                await DtlsChannel.open(
                    sock.getsockname(), DtlsPskClient(bytes(32), APP_ID), handshake_seconds=1
                )
            nursery.cancel_scope.cancel()
        sock.close()
