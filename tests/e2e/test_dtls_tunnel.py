"""openconnect 9.01's DTLS data channel against trio-ocserv: PSK-NEGOTIATE, every legacy suite,
fallback to CSTP, compression, and losing UDP mid-session. Root + netns (see test_cstp_tunnel.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.conftest import require_fastpath, require_root_tools
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.e2e

SERVER_TUN = "192.168.99.1"


@attrs.frozen
class Running:
    pair: NetnsPair
    bed: testbed.TestBed
    tmp: Path
    log: Path

    def tunnel(self, name: str, *args: str, wait_for: str) -> openconnect.OpenconnectClient:
        return openconnect.openconnect_tunnel(  # type: ignore[return-value]
            self.pair.client, self.bed.url, servercert=self.bed.servercert,
            workdir=self.tmp / name, user="bob", password="bob-pass", args=args,
            wait_for=wait_for,
        )


def _start(tmp_path: Path, extra: str = "") -> Iterator[Running]:
    require_root_tools("openconnect", "ip", "ping", "iptables")
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp_path / "srv", pair, extra_config=extra)
        log = tmp_path / "srv.log"
        argv = testbed.trio_ocserv_argv(bed)
        with testbed.running_server(pair.server, argv, log, pair.server_addr, 443):
            yield Running(pair, bed, tmp_path, log)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    yield from _start(tmp_path)


@pytest.fixture(params=["c-data-path", "python-data-path"])
def data_path_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Running, bool]]:
    """A server with the C data path (True) or with TRIO_OCSERV_PURE_PYTHON=1 (False)."""
    require_root_tools("openconnect", "ip", "ping", "iperf3")
    if request.param == "c-data-path":
        require_fastpath()
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp_path / "srv", pair)
        log = tmp_path / "srv.log"
        argv = testbed.trio_ocserv_argv(bed)
        if request.param == "python-data-path":
            argv = ["env", "TRIO_OCSERV_PURE_PYTHON=1", *argv]
        with testbed.running_server(pair.server, argv, log, pair.server_addr, 443):
            yield Running(pair, bed, tmp_path, log), request.param == "c-data-path"


def _ping(pair: NetnsPair, count: int = 3) -> None:
    out = pair.client.run(["ping", "-c", str(count), "-i", "0.2", "-W", "2", SERVER_TUN])
    assert f"{count} received" in out.stdout, out.stdout


def test_default_is_psk_negotiate_and_carries_traffic(server: Running) -> None:
    with server.tunnel("psk", wait_for="Configured as") as client:
        log = client.wait_for_log("Established DTLS connection")
        assert "Ciphersuite (DTLS1.2)-(PSK)-(AES-256-GCM)" in log
        # "connected" once a record from the server came, "established" before (timing).
        configured = client.wait_for_log("Configured as")
        assert re.search(r"with SSL connected and DTLS (connected|established)", configured)
        _ping(server.pair)
    assert "DTLS psk up" in server.log.read_text()


@pytest.mark.parametrize(
    ("option", "ciphersuite"),
    [
        ("--dtls-ciphers=OC-DTLS1_2-AES128-GCM", "(DTLS1.2)-(RSA)-(AES-128-GCM)"),
        ("--dtls-ciphers=OC-DTLS1_2-AES256-GCM", "(DTLS1.2)-(RSA)-(AES-256-GCM)"),
        ("--dtls-ciphers=AES128-SHA", "(DTLS0.9)-(RSA)-(AES-128-CBC)-(SHA1)"),
        ("--dtls-ciphers=AES256-SHA", "(DTLS0.9)-(RSA)-(AES-256-CBC)-(SHA1)"),
        ("--dtls12-ciphers=AES256-GCM-SHA384", "(DTLS1.2)-(RSA)-(AES-256-GCM)"),
    ],
)
def test_legacy_suites_connect_and_carry_traffic(
    server: Running, option: str, ciphersuite: str
) -> None:
    with server.tunnel(option.split("=")[1], option, wait_for="Configured as") as client:
        assert f"Ciphersuite {ciphersuite}" in client.log()
        # "established": handshake done; "connected": a record from the server came too (our
        # server sends none unprompted, so which one the client logs depends on timing).
        assert re.search(r"with SSL connected and DTLS (connected|established)", client.log())
        _ping(server.pair)


def test_unsupported_dtls_cipher_falls_back_to_cstp(server: Running) -> None:
    with server.tunnel("dhe", "--dtls-ciphers=DHE-RSA-AES128-SHA", wait_for="Configured as") as c:
        assert "DTLS disabled" in c.log() or "no DTLS" in c.log().lower()
        _ping(server.pair)


def test_blocking_udp_mid_session_keeps_the_tunnel_over_cstp(server: Running) -> None:
    pair = server.pair
    with server.tunnel("block", "--force-dpd=2", wait_for="Configured as") as client:
        client.wait_for_log("Established DTLS connection")
        _ping(pair)
        rule = ["-p", "udp", "--sport", "443", "-j", "DROP"]
        pair.client.run(["iptables", "-I", "INPUT", *rule])
        try:
            client.wait_for_log("DTLS Dead Peer Detection detected dead peer", timeout=20)
            _ping(pair, count=3)
        finally:
            pair.client.run(["iptables", "-D", "INPUT", *rule], check=False)


@pytest.fixture
def compressing_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    yield from _start(tmp_path, request.param)


@pytest.mark.parametrize(
    ("compressing_server", "name"),
    [("compression = true\n", "LZ4"),
     ("compression = true\ncompression-algo-priority = lzs:100\n", "LZS")],
    indirect=["compressing_server"],
)
def test_compression_passes_traffic(compressing_server: Running, name: str) -> None:
    with compressing_server.tunnel(
        name, "--compression=all", wait_for="Configured as"
    ) as client:
        client.wait_for_log("Established DTLS connection")
        pair = compressing_server.pair
        # large, compressible pings (zero padding) take the compressed path both ways
        out = pair.client.run(["ping", "-c", "3", "-i", "0.2", "-s", "1000", "-W", "2", SERVER_TUN])
        assert "3 received" in out.stdout
        assert f"SSL + {name}" in client.log() or f"DTLS + {name}" in client.log()


@pytest.mark.parametrize(
    "option", ["", "--dtls-ciphers=OC-DTLS1_2-AES128-GCM"], ids=["psk", "legacy-aes128-gcm"]
)
def test_bulk_traffic_both_ways_on_each_data_path(
    data_path_server: tuple[Running, bool], option: str
) -> None:
    """iperf3 both ways over DTLS, through the C data path and through the pure-Python one; the
    tunnel stays on DTLS, and the server's per-user counters saw the bytes."""
    server, uses_c = data_path_server
    pair = server.pair
    args = [option] if option else []
    with server.tunnel("bulk", *args, wait_for="Configured as") as client:
        client.script_env("connect")
        with testbed.iperf3_server(pair.server, SERVER_TUN):
            _, up = testbed.iperf3_run(pair.client, SERVER_TUN, 2, reverse=False)
            _, down = testbed.iperf3_run(pair.client, SERVER_TUN, 2, reverse=True)
        assert up > 1_000_000 and down > 1_000_000
        _ping(pair)
        assert "DTLS" in client.log() and "detected dead peer" not in client.log()
    log = server.log.read_text()
    assert "DTLS" in log and "sending over CSTP" not in log
    assert ("(C data path)" in log) == uses_c
    # The C receive thread answers the login's handshake flights (PSK and legacy AES-GCM).
    assert ("(answered by the receive thread)" in log) == uses_c
