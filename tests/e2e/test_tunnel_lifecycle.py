"""Issue 4's life-cycle acceptance with openconnect 9.01 over CSTP: scripts, traffic routed to a
host behind the server, reconnect with the cookie, predictable and explicit addresses, an
exhausted pool, cleanup after the client is killed, SIGTERM. Root + netns (rules:
test_cstp_tunnel.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, far_host, netns_pair

pytestmark = pytest.mark.e2e

SCRIPT = """#!/bin/sh
env | sort > "{dir}/$REASON.$USERNAME.env"
{extra}
"""


@attrs.frozen
class Running:
    pair: NetnsPair
    bed: testbed.TestBed
    tmp: Path
    log: Path


@contextmanager
def running(tmp: Path, extra: str = "", pool: str = "192.168.99.0/24") -> Iterator[Running]:
    require_root_tools("openconnect", "ip", "ping")
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp / "srv", pair, extra_config=extra, pool=pool)
        log = tmp / "srv.log"
        argv = testbed.trio_ocserv_argv(bed)
        with testbed.running_server(pair.server, argv, log, pair.server_addr, 443):
            yield Running(pair, bed, tmp, log)


def tunnel(
    run: Running,
    name: str,
    *args: str,
    user: str = "bob",
    password: str | None = None,
    wait_for: str | None = "Configured as",
) -> openconnect.OpenconnectClient:
    if password is None and "-C" not in args:
        password = run.bed.users[user][0]
    return openconnect.openconnect_tunnel(  # type: ignore[return-value]
        run.pair.client,
        run.bed.url,
        servercert=run.bed.servercert,
        workdir=run.tmp / name,
        user=None if "-C" in args else user,
        password=password,
        args=("--no-dtls", *args),
        wait_for=wait_for,
    )


def write_script(path: Path, env_dir: Path, extra: str = "") -> Path:
    path.write_text(SCRIPT.format(dir=env_dir, extra=extra))
    path.chmod(0o755)
    return path


def read_env(path: Path, timeout: float = 10) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.05)
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def server_links(pair: NetnsPair) -> str:
    return pair.server.run(["ip", "-o", "link", "show"]).stdout


def server_devices(pair: NetnsPair) -> set[str]:
    """Interface names in the server's namespace. A running server also holds one spare,
    unconfigured tun there (KernelTunProvider.keep_spare): tests name the device they mean."""
    lines = server_links(pair).splitlines()
    return {line.split(": ")[1].split("@")[0] for line in lines if ": " in line}


def test_scripts_routed_host_and_disconnect_counters(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    script = write_script(tmp_path / "script.sh", env_dir)
    extra = f"connect-script = {script}\ndisconnect-script = {script}\n"
    with running(tmp_path, extra) as run, far_host(run.pair) as (_, far_address):
        with tunnel(run, "cli") as client:
            env = read_env(env_dir / "connect.bob.env")
            assigned = client.script_env("connect")["INTERNAL_IP4_ADDRESS"]
            assert env["IP_REMOTE"] == assigned
            assert env["IP_LOCAL"] == "192.168.99.1"
            assert env["IP_REAL"] == run.pair.client_addr
            assert env["DEVICE"].startswith("vpns")
            assert "198.19.0.0/255.255.0.0" in env["OCSERV_ROUTES"]
            out = run.pair.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", far_address])
            assert "3 received" in out.stdout
        disconnect = read_env(env_dir / "disconnect.bob.env")
        assert int(disconnect["STATS_BYTES_IN"]) >= 3 * 84
        assert int(disconnect["STATS_BYTES_OUT"]) >= 3 * 84
        assert disconnect["REASON"] == "disconnect"


def test_failing_connect_script_refuses_the_client(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    script = write_script(tmp_path / "no.sh", env_dir, extra="exit 1")
    with running(tmp_path, f"connect-script = {script}\n") as run:
        with tunnel(run, "cli", wait_for=None) as client:
            assert client.proc.wait(timeout=30) != 0
        assert "Configured as" not in client.log()
        assert "connect script for 'bob' exited with status 1" in run.log.read_text()
        device = read_env(env_dir / "connect.bob.env")["DEVICE"]
        assert device.startswith("vpns") and device not in server_devices(run.pair)


def test_reconnect_with_cookie_gets_the_same_address(tmp_path: Path) -> None:
    with running(tmp_path) as run:
        auth = openconnect.authenticate(
            run.pair.client,
            run.bed.url,
            servercert=run.bed.servercert,
            user="bob",
            password="bob-pass",
        )
        # openconnect sends the -C value as the Cookie header, verbatim.
        cookie = openconnect.parse_authenticate_output(auth.stdout)["COOKIE"]
        with tunnel(run, "first", "-C", cookie) as first:
            address = first.script_env("connect")["INTERNAL_IP4_ADDRESS"]
            first.stop(signal.SIGKILL)  # no BYE: the cookie stays valid
        with tunnel(run, "second", "-C", cookie) as second:
            assert second.script_env("connect")["INTERNAL_IP4_ADDRESS"] == address


def test_predictable_and_explicit_addresses(tmp_path: Path) -> None:
    per_user = tmp_path / "per-user"
    per_user.mkdir()
    (per_user / "alice").write_text("explicit-ipv4 = 192.168.99.77\n")
    with running(tmp_path, f"config-per-user = {per_user}/\n") as run:
        addresses = []
        for name in ("one", "two"):
            with tunnel(run, name) as client:
                addresses.append(client.script_env("connect")["INTERNAL_IP4_ADDRESS"])
        assert addresses[0] == addresses[1]  # predictable-ips: same user, same address
        with tunnel(run, "alice", user="alice") as client:
            assert client.script_env("connect")["INTERNAL_IP4_ADDRESS"] == "192.168.99.77"


def test_exhausted_pool_is_a_clear_refusal(tmp_path: Path) -> None:
    # A /30: the server takes .1, one client .2, nobody else fits.
    with running(tmp_path, pool="192.168.99.0/30") as run, tunnel(run, "bob"):
        with tunnel(run, "alice", user="alice", wait_for=None) as refused:
            assert refused.proc.wait(timeout=30) != 0
        assert "Configured as" not in refused.log()
        assert "no address for 'alice'" in run.log.read_text()


def test_killed_client_is_cleaned_up_by_dpd(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    script = write_script(tmp_path / "script.sh", env_dir)
    extra = f"dpd = 1\ndisconnect-script = {script}\n"
    with running(tmp_path, extra) as run:
        with tunnel(run, "cli") as client:
            run.pair.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "192.168.99.1"])
            assert "vpns" in server_links(run.pair)
            # SIGKILL, and make sure no FIN/RST reaches the server: drop the client's packets.
            run.pair.client.run(["ip", "link", "set", run.pair.client_if, "down"])
            client.stop(signal.SIGKILL)
            disconnect = read_env(env_dir / "disconnect.bob.env", timeout=15)
            assert int(disconnect["STATS_BYTES_IN"]) > 0
            deadline = time.monotonic() + 5
            while disconnect["DEVICE"] in server_devices(run.pair):
                assert time.monotonic() < deadline, "tun device left behind"
                time.sleep(0.1)
        assert "DPD timeout" in run.log.read_text()
        run.pair.client.run(["ip", "link", "set", run.pair.client_if, "up"])
        # The lease is free again: with a fresh login bob gets an address (the same one).
        with tunnel(run, "again") as again:
            assert again.script_env("connect")["INTERNAL_IP4_ADDRESS"].startswith("192.168.99.")


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    require_root_tools("openconnect", "ip")
    with netns_pair() as pair:
        bed = testbed.make_testbed(tmp_path / "srv", pair)
        log = tmp_path / "srv.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pair.server.argv(testbed.trio_ocserv_argv(bed)),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            testbed.wait_for_tcp(pair.server, pair.server_addr, 443, process=proc)
            run = Running(pair, bed, tmp_path, log)
            with tunnel(run, "cli", wait_for="Configured as") as client:
                os.kill(proc.pid, signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
                client.wait_for_log("Received server disconnect", timeout=10)
            assert "vpns" not in server_links(pair)
            assert not (tmp_path / "srv" / "server.pid").exists()
        finally:
            testbed.stop_process(proc)
