"""The e2e harness (netns, test bed, openconnect driver) against the reference ocserv.

Our own server's end-to-end tests use the same harness; this file proves the harness itself is
right, so a failure there points at trio-ocserv rather than at the test bed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import netns_pair

pytestmark = pytest.mark.e2e


def test_openconnect_against_reference_ocserv(tmp_path: Path) -> None:
    require_root_tools("ocserv", "openconnect", "ip", "ping")
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp_path / "srv", pair)
        argv = testbed.ocserv_argv(bed)
        with testbed.running_server(pair.server, argv, tmp_path / "srv.log", pair.server_addr, 443):
            good = openconnect.authenticate(
                pair.client, bed.url, servercert=bed.servercert, user="bob", password="bob-pass"
            )
            assert good.returncode == 0, good.stderr
            assert "webvpn=" in openconnect.parse_authenticate_output(good.stdout)["COOKIE"]

            bad = openconnect.authenticate(
                pair.client, bed.url, servercert=bed.servercert, user="bob", password="nope"
            )
            assert bad.returncode != 0
            assert "COOKIE=" not in bad.stdout

            with openconnect.openconnect_tunnel(
                pair.client, bed.url, servercert=bed.servercert, workdir=tmp_path / "cli",
                user="bob", password="bob-pass", wait_for="Configured as",
            ) as client:
                env = client.script_env("connect")
                assert env["INTERNAL_IP4_NETADDR"] == "192.168.99.0"
                assert env["CISCO_SPLIT_INC_0_ADDR"] == "198.19.0.0"
                ping = pair.client.run(["ping", "-c", "2", "-W", "2", "192.168.99.1"])
                assert "2 received" in ping.stdout
            assert "Send BYE packet" in client.log()
