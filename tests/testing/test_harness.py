"""The users' harness (`trio_ocserv.testing.plugin` / `harness`) against the real server in
process: login, CONNECT, pings answered through the server-side MemoryTun over CSTP and over
DTLS (PSK-NEGOTIATE and legacy suites), compression on both channels.

Loopback only, no root; every test under `fail_after`.
"""

from __future__ import annotations

import ipaddress

import pytest
import trio

from trio_ocserv.testing.client import (
    AuthenticationFailed,
    ConnectOptions,
    CstpTunnel,
    DtlsFailed,
)
from trio_ocserv.testing.harness import HarnessServer, StartServer, answer_ping
from trio_ocserv.testing.packets import build_echo_request, parse_icmp_echo

pytest_plugins = ["trio_ocserv.testing.plugin"]

TIMEOUT = 20
GATEWAY = "192.168.77.1"


async def ping(server: HarnessServer, tunnel: CstpTunnel, sequence: int, size: int = 56) -> None:
    """One echo through the tunnel, answered on the server side; checks what both ends saw."""
    address = tunnel.config.address
    assert address is not None
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    request = build_echo_request(address, GATEWAY, identifier=9, sequence=sequence, payload=payload)
    tun = server.tun_for(tunnel)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.send_packet, request)
        seen = await answer_ping(tun)
    assert seen == request
    reply = parse_icmp_echo(await tunnel.receive_packet())
    assert (reply.source, reply.sequence, reply.payload) == (
        ipaddress.ip_address(GATEWAY),
        sequence,
        payload,
    )


async def test_login_connect_and_ping_over_cstp(ocserv_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server("dns = 192.168.77.1\n", dtls=False)
        assert server.url == f"https://127.0.0.1:{server.port}/"
        assert server.pin.startswith("pin-sha256:")
        async with server.session("alice", group=None) as tunnel:
            config = tunnel.config
            assert config.dtls is None and not tunnel.dtls_active
            assert config.address in ipaddress.ip_network("192.168.77.0/24")
            assert [str(d) for d in config.dns] == ["192.168.77.1"]
            await ping(server, tunnel, 1)
            stats = tunnel.statistics()
            assert (stats.packets_sent, stats.packets_received, stats.dtls_packets_sent) == (
                1,
                1,
                0,
            )


async def test_wrong_password_is_refused(ocserv_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server(dtls=False)
        with pytest.raises(AuthenticationFailed):
            await server.connect("bob", "not-the-password")


async def test_ping_over_dtls_psk_negotiate(ocserv_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server()
        assert server.udp_port not in (None, 0)
        async with server.session("bob", dtls=True) as tunnel:
            offer = tunnel.config.dtls
            assert offer is not None and offer.psk_negotiate
            assert offer.port == server.udp_port
            handshake = tunnel.dtls_handshake
            assert handshake is not None and handshake.mode == "psk"
            for sequence in range(3):
                await ping(server, tunnel, sequence)
            stats = tunnel.statistics()
            assert (stats.dtls_packets_sent, stats.dtls_packets_received) == (3, 3)
            # The server's DPD over DTLS is echoed; DTLS keeps working after it.
            await tunnel.send_dtls_dpd(100)
            await ping(server, tunnel, 4)


@pytest.mark.parametrize(
    ("ciphers", "dtls12", "suite_name"),
    [
        ("AES128-SHA", None, "AES128-SHA"),
        ("OC-DTLS1_2-AES256-GCM", None, "OC-DTLS1_2-AES256-GCM"),
        (None, "AES128-GCM-SHA256", "AES128-GCM-SHA256"),
    ],
)
async def test_ping_over_legacy_dtls(
    ocserv_server: StartServer, ciphers: str | None, dtls12: str | None, suite_name: str
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server()
        options = ConnectOptions(dtls_ciphers=ciphers, dtls12_ciphers=dtls12)
        async with server.session("bob", options=options, dtls=True) as tunnel:
            offer = tunnel.config.dtls
            assert offer is not None and not offer.psk_negotiate
            assert offer.cipher_suite == suite_name
            handshake = tunnel.dtls_handshake
            assert handshake is not None and handshake.mode == "legacy"
            await ping(server, tunnel, 1)
            await ping(server, tunnel, 2)
            assert tunnel.statistics().dtls_packets_received == 2


async def test_dtls_failure_leaves_cstp_working(ocserv_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server(dtls=False)
        async with server.session("bob") as tunnel:
            with pytest.raises(DtlsFailed):
                await tunnel.start_dtls()
            await ping(server, tunnel, 1)


async def test_compression_on_cstp_and_dtls(ocserv_server: StartServer) -> None:
    with trio.fail_after(TIMEOUT):
        server = await ocserv_server("compression = true\nno-compress-limit = 64\n")
        options = ConnectOptions(accept_encoding="oc-lz4", dtls_accept_encoding="oc-lz4")
        async with server.session("bob", options=options) as tunnel:
            assert tunnel.config.encoding is not None
            await ping(server, tunnel, 1, size=1000)  # zeros and a counting pattern: compressible
            stats = tunnel.statistics()
            assert stats.compressed_sent == 1 and stats.compressed_received == 1
            await tunnel.start_dtls()
            offer = tunnel.config.dtls
            assert offer is not None and offer.encoding is not None
            await ping(server, tunnel, 2, size=1000)
            stats = tunnel.statistics()
            assert (stats.compressed_sent, stats.compressed_received) == (2, 2)
            assert stats.dtls_packets_received == 1
