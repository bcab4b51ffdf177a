"""openconnect 9.01 against trio-ocserv over CSTP (TLS only), in network namespaces.

Rules: root only; every namespace, process and tun is created here and removed on exit (see
`trio_ocserv.testing.netns`); the same harness passes against the reference ocserv
(tests/e2e/test_reference_ocserv.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.conftest import require_root_tools
from tests.server.test_cstp_fastpath import require_cstp_fastpath
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.e2e

SERVER_TUN = "192.168.99.1"


@attrs.frozen
class Running:
    pair: NetnsPair
    bed: testbed.TestBed
    tmp: Path

@pytest.fixture
def server(tmp_path: Path) -> Iterator[Running]:
    require_root_tools("openconnect", "ip", "ping", "iperf3")
    with netns_pair() as pair:
        extra = (
            "banner = Hello from trio\n"
            "split-dns = corp.example\n"
            "default-domain = corp.example lab.example\n"
        )
        bed = testbed.make_testbed(tmp_path / "srv", pair, extra_config=extra)
        argv = testbed.trio_ocserv_argv(bed)
        with testbed.running_server(pair.server, argv, tmp_path / "srv.log", pair.server_addr, 443):
            yield Running(pair, bed, tmp_path)


@pytest.fixture(params=["c-data-path", "python-data-path"])
def data_path_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """A server with the CSTP C data path, or with TRIO_OCSERV_PURE_PYTHON=1."""
    require_root_tools("openconnect", "ip", "ping", "iperf3")
    if request.param == "c-data-path":
        require_cstp_fastpath()
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp_path / "srv", pair)
        argv = testbed.trio_ocserv_argv(bed)
        if request.param == "python-data-path":
            argv = ["env", "TRIO_OCSERV_PURE_PYTHON=1", *argv]
        with testbed.running_server(pair.server, argv, tmp_path / "srv.log", pair.server_addr, 443):
            yield Running(pair, bed, tmp_path)


def test_bulk_traffic_and_dpd_on_each_cstp_data_path(
    data_path_server: Running, request: pytest.FixtureRequest
) -> None:
    """iperf3 both ways over CSTP with DPD every second: the server answers every DPD (the
    client never declares it dead) whichever path carries the records, and the log names it."""
    server = data_path_server
    pair = server.pair
    with openconnect.openconnect_tunnel(
        pair.client, server.bed.url, servercert=server.bed.servercert,
        workdir=server.tmp / "cli", user="bob", password="bob-pass",
        args=["--no-dtls", "--force-dpd=1"],
    ) as client:
        with testbed.iperf3_server(pair.server, SERVER_TUN):
            _, up = testbed.iperf3_run(pair.client, SERVER_TUN, 2, reverse=False)
            _, down = testbed.iperf3_run(pair.client, SERVER_TUN, 2, reverse=True)
        assert up > 1_000_000 and down > 1_000_000
        ping = pair.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_TUN])
        assert "3 received" in ping.stdout
        assert "dead peer" not in client.log()
    assert "Send BYE packet" in client.log()
    log = (server.tmp / "srv.log").read_text()
    uses_c = "c-data-path" in request.node.callspec.id
    assert ("CSTP data path: C thread" in log) == uses_c
    # The thread's counters reached the session (the logout line has the totals).
    logout = re.search(r"logout: user='bob' .* reason='user logout' .* rx=(\d+) tx=(\d+)", log)
    assert logout is not None, log
    assert int(logout[1]) > up / 2 and int(logout[2]) > down / 2


def _auth(run: Running, user: str, password: str, *args: str) -> dict[str, str] | None:
    result = openconnect.authenticate(
        run.pair.client, run.bed.url, servercert=run.bed.servercert,
        user=user, password=password, args=args,
    )
    if result.returncode != 0:
        return None
    return openconnect.parse_authenticate_output(result.stdout)


def test_authenticate_right_and_wrong_password(server: Running) -> None:
    ok = _auth(server, "bob", "bob-pass")
    assert ok is not None and "webvpn=" in ok["COOKIE"]
    assert _auth(server, "bob", "wrong") is None
    assert _auth(server, "nobody", "bob-pass") is None


def test_tunnel_env_ping_and_iperf3(server: Running) -> None:
    pair = server.pair
    with openconnect.openconnect_tunnel(
        pair.client, server.bed.url, servercert=server.bed.servercert,
        workdir=server.tmp / "cli", user="bob", password="bob-pass", args=["--no-dtls"],
    ) as client:
        env = client.script_env("connect")
        assert env["INTERNAL_IP4_ADDRESS"].startswith("192.168.99.")
        assert env["INTERNAL_IP4_NETMASK"] == "255.255.255.0"
        assert env["INTERNAL_IP4_DNS"] == "192.168.99.1"
        assert env["CISCO_SPLIT_INC_0_ADDR"] == "198.19.0.0"
        assert env["CISCO_SPLIT_INC_0_MASKLEN"] == "16"
        assert env["CISCO_BANNER"] == "Hello from trio"
        assert env["CISCO_DEF_DOMAIN"] == "corp.example lab.example"
        assert env["CISCO_SPLIT_DNS"] == "corp.example"
        ping = pair.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_TUN])
        assert "3 received" in ping.stdout
        with testbed.iperf3_server(pair.server, SERVER_TUN):
            _, sent_up = testbed.iperf3_run(pair.client, SERVER_TUN, 1, reverse=False)
            _, sent_down = testbed.iperf3_run(pair.client, SERVER_TUN, 1, reverse=True)
        assert sent_up > 100_000 and sent_down > 100_000
    assert "Send BYE packet" in client.log()
