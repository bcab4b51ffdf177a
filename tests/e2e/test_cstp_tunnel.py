"""openconnect 9.01 against trio-ocserv over CSTP (TLS only), in network namespaces.

Rules: root only; every namespace, process and tun is created here and removed on exit (see
`trio_ocserv.testing.netns`); the same harness passes against the reference ocserv
(tests/e2e/test_reference_ocserv.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.conftest import require_root_tools
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
