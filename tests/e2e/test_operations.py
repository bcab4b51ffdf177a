"""Issue 7's operations acceptance with openconnect 9.01 (CSTP) in a netns pair: `ctl` on a live
server (users and counters, disconnect, terminate, unban), metrics against `ctl show status`,
SIGHUP reload under traffic (good and broken files), SIGTERM with two clients. Root + netns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.e2e

# On no subnet of the server: it can be banned (ocserv never bans its own subnets).
REMOTE_CLIENT = "198.51.100.77"
METRICS_PORT = 9616
SERVER_VPN_ADDRESS = "192.168.99.1"


@attrs.frozen
class Running:
    pair: NetnsPair
    bed: testbed.TestBed
    tmp: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def ctl(self, *words: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        socket_file = str(self.bed.workdir / "occtl.sock")
        argv = [sys.executable, "-m", "trio_ocserv", "ctl", "-s", socket_file, *words]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def ctl_json(self, *words: str) -> Any:
        return json.loads(self.ctl("-j", *words).stdout)

    def tunnel(
        self, name: str, user: str = "bob", *args: str, wait_for: str | None = "Configured as"
    ) -> contextlib.AbstractContextManager[openconnect.OpenconnectClient]:
        with_cookie = "-C" in args
        return openconnect.openconnect_tunnel(
            self.pair.client,
            self.bed.url,
            servercert=self.bed.servercert,
            workdir=self.tmp / name,
            user=None if with_cookie else user,
            password=None if with_cookie else self.bed.users[user][0],
            args=("--no-dtls", *args),
            wait_for=wait_for,
        )

    def authenticate(self, user: str, password: str) -> subprocess.CompletedProcess[str]:
        return openconnect.authenticate(
            self.pair.client,
            self.bed.url,
            servercert=self.bed.servercert,
            user=user,
            password=password,
        )

    def ping(self, count: int = 3) -> None:
        command = ["ping", "-c", str(count), "-i", "0.2", "-W", "2", SERVER_VPN_ADDRESS]
        self.pair.client.run(command)


@contextlib.contextmanager
def running(tmp: Path, extra: str = "") -> Iterator[Running]:
    require_root_tools("openconnect", "ip", "ping", "curl")
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp / "srv", pair, extra_config=extra)
        log = tmp / "srv.log"
        argv = [*testbed.trio_ocserv_argv(bed), "--log-stderr"]
        with log.open("wb") as out:
            proc = subprocess.Popen(pair.server.argv(argv), stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                testbed.wait_for_tcp(pair.server, pair.server_addr, 443, process=proc)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; server log:\n{log.read_text()}") from None
            yield Running(pair, bed, tmp, log, proc)
        finally:
            testbed.stop_process(proc)


def server_links(pair: NetnsPair) -> str:
    return pair.server.run(["ip", "-o", "link", "show"]).stdout


@contextlib.contextmanager
def client_from(pair: NetnsPair, address: str) -> Iterator[None]:
    """The client reaches the server from `address` (see test_auth_e2e.py)."""
    pair.client.run(["ip", "addr", "add", f"{address}/32", "dev", pair.client_if])
    via = ["dev", pair.client_if, "src", address]
    pair.client.run(["ip", "route", "add", f"{pair.server_addr}/32", *via])
    pair.server.run(["ip", "route", "add", f"{address}/32", "dev", pair.server_if])
    try:
        yield
    finally:
        pair.server.run(["ip", "route", "del", f"{address}/32", "dev", pair.server_if])
        pair.client.run(["ip", "route", "del", f"{pair.server_addr}/32", *via])
        pair.client.run(["ip", "addr", "del", f"{address}/32", "dev", pair.client_if])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} missing from:\n{text}")


def test_ctl_users_disconnect_terminate_unban_and_metrics(tmp_path: Path) -> None:
    extra = (
        "max-ban-score = 20\nmin-reauth-time = 60\n"
        f"metrics-listen = 127.0.0.1:{METRICS_PORT}\n"
    )
    with running(tmp_path, extra) as run:
        with run.tunnel("bob") as bob:
            address = bob.script_env("connect")["INTERNAL_IP4_ADDRESS"]
            run.ping()
            [user] = run.ctl_json("show", "users")
            assert (user["Username"], user["IPv4"]) == ("bob", address)
            assert user["Remote IP"] == run.pair.client_addr
            rx = int(user["RX"])
            assert rx > 0
            run.ping()
            [user] = run.ctl_json("show", "users")
            assert int(user["RX"]) > rx

            # Metrics (scraped inside the server's netns) against `show status`, traffic idle.
            url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
            text = run.pair.server.run(["curl", "-sf", url]).stdout
            status = run.ctl_json("show", "status")
            assert metric(text, 'trio_ocserv_sessions{channel="cstp"}') == 1
            assert status["Active sessions"] == 1
            assert metric(text, 'trio_ocserv_bytes_total{direction="rx"}') == status["raw_rx"]
            assert metric(text, 'trio_ocserv_bytes_total{direction="tx"}') == status["raw_tx"]
            assert metric(text, 'trio_ocserv_logins_total{result="ok"}') == 1

            assert "disconnected" in run.ctl("disconnect", "user", "bob").stdout
            bob.wait_for_log("Received server disconnect", timeout=10)

        # terminate: the tunnel ends and its cookie no longer works
        auth = run.authenticate("alice", "alice-pass")
        cookie = openconnect.parse_authenticate_output(auth.stdout)["COOKIE"]
        with run.tunnel("alice", "alice", "-C", cookie) as alice:
            assert "terminated" in run.ctl("terminate", "user", "alice").stdout
            alice.wait_for_log("Received server disconnect", timeout=10)
        with run.tunnel("again", "alice", "-C", cookie, wait_for=None) as again:
            assert again.proc.wait(timeout=30) != 0
        assert "Configured as" not in again.log()

        # unban ip: a banned address gets in again
        with client_from(run.pair, REMOTE_CLIENT):
            run.authenticate("bob", "wrong\nwrong\nwrong")
            refused = run.authenticate("bob", "bob-pass")
            assert "COOKIE" not in refused.stdout
            bans = run.ctl_json("show", "ip", "bans")
            assert [b["IP"] for b in bans] == [REMOTE_CLIENT]
            run.ctl("unban", "ip", REMOTE_CLIENT)
            assert "COOKIE=" in run.authenticate("bob", "bob-pass").stdout
        assert f"refusing banned address {REMOTE_CLIENT}" in run.log.read_text()


def test_reload_under_traffic_then_sigterm_with_two_clients(tmp_path: Path) -> None:
    extra = "banner = old banner\nroute = 198.18.0.0/16\n"
    with running(tmp_path, extra) as run:
        config = run.bed.config_path
        with run.tunnel("bob") as bob:
            pinger = subprocess.Popen(
                run.pair.client.argv(
                    ["ping", "-c", "30", "-i", "0.1", "-W", "1", SERVER_VPN_ADDRESS]
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)
            text = config.read_text()
            config.write_text(
                text.replace("old banner", "new banner").replace("198.18.0.0/16", "198.20.0.0/16")
            )
            os.kill(run.proc.pid, signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in run.log.read_text())
            out, _ = pinger.communicate(timeout=30)
            assert " 0% packet loss" in out, out

            with run.tunnel("alice", "alice") as alice:
                assert "new banner" in alice.log()
                env = alice.script_env("connect")
                assert env["CISCO_SPLIT_INC_0_ADDR"] == "198.20.0.0"

                # A broken file: logged, nothing changes, the tunnels keep working.
                config.write_text(text + "dpd = soon\n")
                os.kill(run.proc.pid, signal.SIGHUP)
                wait_until(lambda: "running configuration kept" in run.log.read_text())
                run.ping(2)
                assert len(run.ctl_json("show", "users")) == 2

                os.kill(run.proc.pid, signal.SIGTERM)
                assert run.proc.wait(timeout=15) == 0
                bob.wait_for_log("Received server disconnect", timeout=10)
                alice.wait_for_log("Received server disconnect", timeout=10)
        assert "vpns" not in server_links(run.pair)
        assert not (run.bed.workdir / "server.pid").exists()
        assert not (run.bed.workdir / "occtl.sock").exists()
