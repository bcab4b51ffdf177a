"""The netns harness itself: root only, so it is an e2e test."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing.netns import namespace_names, namespace_pids, netns_pair

pytestmark = pytest.mark.e2e


def test_pair_pings_and_cleans_up() -> None:
    require_root_tools("ip", "ping")
    with netns_pair() as pair:
        out = pair.client.run(["ping", "-c", "1", "-W", "2", pair.server_addr])
        assert "1 received" in out.stdout
        assert {pair.server.name, pair.client.name} <= set(namespace_names())
        # a process left running inside is killed by PID on exit
        sleeper = subprocess.Popen(pair.server.argv(["sleep", "60"]))
        deadline = time.monotonic() + 5
        while str(sleeper.pid) not in namespace_pids(pair.server):
            assert time.monotonic() < deadline, "sleep never entered the namespace"
            time.sleep(0.01)
    assert not {pair.server.name, pair.client.name} & set(namespace_names())
    assert sleeper.wait(timeout=5) == -9
