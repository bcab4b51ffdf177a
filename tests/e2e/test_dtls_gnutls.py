"""Interop: our sans-IO `DtlsServer` (PSK-NEGOTIATE mode) driven by a small Trio UDP loop on
127.0.0.1, against `gnutls-cli --udp` as the PSK client (GnuTLS is what openconnect 9.01 uses).

Rules: loopback only, port 0, a hard `fail_after` on every test, gnutls-cli killed by PID in
`finally`. gnutls-cli sends what it reads from stdin as application data and prints what it
receives.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import trio

from tests.conftest import require_root_tools
from trio_ocserv.protocol.dtls.events import (
    AlertReceived,
    ApplicationData,
    HandshakeComplete,
    HandshakeFailed,
)
from trio_ocserv.protocol.dtls.record import split_records
from trio_ocserv.protocol.dtls.server import DtlsServer, PskServerParameters

pytestmark = pytest.mark.e2e

BASE_PRIORITY = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK"


async def _serve_one(
    sock: trio.socket.SocketType,
    server: DtlsServer,
    events: list[object],
    received: trio.MemorySendChannel[bytes],
    done: trio.Event,
) -> None:
    """Feed datagrams and timers to the engine; echo every application record back, prefixed."""
    peer = None
    while not server.closed:
        timer = server.get_timer()
        timeout = 1.0 if timer is None else max(0.0, timer - trio.current_time())
        with trio.move_on_after(timeout):
            data, peer = await sock.recvfrom(65536)
            server.receive_datagram(data, trio.current_time())
        server.handle_timer(trio.current_time())
        while (event := server.next_event()) is not None:
            events.append(event)
            if isinstance(event, ApplicationData):
                received.send_nowait(event.payload)
                await sock.sendto(server.send_application_data(b"reply:" + event.payload), peer)
        for datagram in server.datagrams_to_send():
            await sock.sendto(datagram, peer)
    done.set()


async def _run_gnutls_exchange(priority: str, lines: list[bytes]) -> tuple[list[object], bytes]:
    psk = os.urandom(32)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    events: list[object] = []
    done = trio.Event()
    received_send, received_receive = trio.open_memory_channel[bytes](len(lines) + 8)
    process = await trio.lowlevel.open_process(
        [
            "gnutls-cli",
            "--udp",
            "--pskusername",
            "psk",
            "--pskkey",
            psk.hex(),
            "--priority",
            priority,
            "-p",
            str(port),
            "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    output = b""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _serve_one, sock, DtlsServer(PskServerParameters(psk)), events, received_send, done
            )
            assert process.stdin is not None and process.stdout is not None
            # gnutls-cli sends whatever one stdin read returns as one record: feed a line only once
            # the previous one arrived. Its stdout is block-buffered on a pipe, so give it a moment
            # to read the last reply, end its stdin, and read everything it printed up to its exit.
            for line in lines:
                await process.stdin.send_all(line + b"\n")
                await received_receive.receive()
            await trio.sleep(0.5)
            await process.stdin.aclose()  # EOF: gnutls-cli sends close_notify and exits
            while chunk := await process.stdout.receive_some(65536):
                output += chunk
            await done.wait()
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        await process.wait()
        sock.close()
    return events, output


@pytest.mark.parametrize(
    ("ciphers", "suite"),
    [
        ("", 0x00A9),
        (":-CIPHER-ALL:+AES-128-GCM", 0x00A8),
        (":-CIPHER-ALL:+CHACHA20-POLY1305", 0xCCAB),
        (":-CIPHER-ALL:+AES-256-CCM", 0xC0A5),
        (":-CIPHER-ALL:+AES-128-CBC:-MAC-ALL:+SHA1", 0x008C),
    ],
)
async def test_gnutls_psk_client_exchanges_data(ciphers: str, suite: int) -> None:
    require_root_tools("gnutls-cli")
    lines = [b"hello from gnutls", b"second line " + b"x" * 1000]
    with trio.fail_after(20):
        events, output = await _run_gnutls_exchange(BASE_PRIORITY + ciphers, lines)
    complete = events[0]
    assert isinstance(complete, HandshakeComplete)
    assert complete.cipher_suite == suite and complete.mode == "psk"
    received = [e.payload for e in events if isinstance(e, ApplicationData)]
    assert received == [line + b"\n" for line in lines]
    for line in lines:
        assert b"reply:" + line + b"\n" in output
    assert any(isinstance(e, AlertReceived) and e.closes_connection for e in events)


async def test_gnutls_dtls10_only_client_is_refused() -> None:
    """We speak DTLS 1.2 PSK only (what openconnect 9.01 uses): a DTLS 1.0 client gets a fatal
    protocol_version alert. (GnuTLS ignores unauthenticated alerts in DTLS and keeps retrying
    until its own timeout, so the test kills it instead of waiting for it to give up.)"""
    require_root_tools("gnutls-cli")
    psk = os.urandom(32)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    process = await trio.lowlevel.open_process(
        [
            "gnutls-cli", "--udp", "--pskusername", "psk", "--pskkey", psk.hex(),
            "--priority", "NORMAL:-VERS-ALL:+VERS-DTLS1.0:-KX-ALL:+PSK",
            "-p", str(sock.getsockname()[1]), "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = DtlsServer(PskServerParameters(psk))
    try:
        with trio.fail_after(20):
            hello, peer = await sock.recvfrom(65536)
            server.receive_datagram(hello, trio.current_time())
            (alert,) = server.datagrams_to_send()
            await sock.sendto(alert, peer)
            retry, _ = await sock.recvfrom(65536)  # the client retries; we stay closed
            server.receive_datagram(retry, trio.current_time())
    finally:
        process.kill()
        await process.wait()
        sock.close()
    assert hello[:3] == b"\x16\xfe\xff"
    # Fatal (2) protocol_version (70), in the client's own DTLS 1.0 record version.
    assert alert == bytes.fromhex("15feff00000000000000000002") + bytes((2, 70))
    assert server.next_event() == HandshakeFailed("client does not offer DTLS 1.2")
    assert server.closed and server.datagrams_to_send() == [] and server.next_event() is None


async def test_gnutls_rehandshake_is_refused_and_session_survives() -> None:
    """openconnect rekeys DTLS by renegotiating (only if told `X-DTLS-Rekey-Method: ssl`, which we
    must not announce): we answer no_renegotiation warnings and keep the session up."""
    require_root_tools("gnutls-cli")
    psk = os.urandom(32)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    process = await trio.lowlevel.open_process(
        [
            "gnutls-cli", "--rehandshake", "--udp", "--pskusername", "psk", "--pskkey", psk.hex(),
            "--priority", BASE_PRIORITY, "-p", str(sock.getsockname()[1]), "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = DtlsServer(PskServerParameters(psk))
    events: list[object] = []
    refusals = 0
    try:
        with trio.fail_after(20):
            while refusals < 2:
                data, peer = await sock.recvfrom(65536)
                server.receive_datagram(data, trio.current_time())
                for datagram in server.datagrams_to_send():
                    records = split_records(datagram)
                    refusals += sum(r.content_type == 21 and r.epoch == 1 for r in records)
                    await sock.sendto(datagram, peer)
                while (event := server.next_event()) is not None:
                    events.append(event)
    finally:
        process.kill()
        await process.wait()
        sock.close()
    assert server.established and not server.closed
    assert len(events) == 1 and isinstance(events[0], HandshakeComplete)
