"""connect/disconnect/host-update scripts and route commands.

Rules: real processes only from scripts written into tmp_path; every process is killed by its
process group (`run_script` does it) and each I/O test has a hard `fail_after`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.config import merge_user_settings, parse_config_text, parse_per_user_text
from trio_ocserv.server.scripts import (
    FIREWALL_SCRIPT,
    ScriptContext,
    ScriptReason,
    ScriptResult,
    SessionStats,
    build_script_environment,
    expand_route_command,
    plan_script,
    port_rules_for_firewall,
    run_route_commands,
    run_script,
)

CONTEXT = ScriptContext(
    session_id=4242,
    username="alice",
    groupname="eng",
    vhost="vpn.example.com",
    device="vpns0",
    real_address=ip_address("198.51.100.7"),
    real_local_address=ip_address("203.0.113.1"),
    ipv4_local=IPv4Address("192.168.1.1"),
    ipv4_remote=IPv4Address("192.168.1.50"),
    ipv6_local=IPv6Address("fd00::1"),
    ipv6_remote=IPv6Address("fd00::5"),
    ipv6_prefix=64,
    remote_hostname="laptop",
    user_agent="Open AnyConnect VPN Agent v9.01",
    device_platform="linux-64",
    routes=(IPv4Network("10.0.0.0/8"), IPv6Network("fd98::/64")),
    no_routes=(IPv4Network("10.1.0.0/16"),),
    dns=(ip_address("192.168.1.1"), ip_address("fd00::53")),
)

EXPECTED_CONNECT_ENV = {
    "ID": "4242",
    "IP_REAL": "198.51.100.7",
    "IP_REAL_LOCAL": "203.0.113.1",
    "IP_LOCAL": "192.168.1.1",
    "IP_REMOTE": "192.168.1.50",
    "IPV6_LOCAL": "fd00::1",
    "IPV6_REMOTE": "fd00::5",
    "IPV6_PREFIX": "64",
    "VHOST": "vpn.example.com",
    "USERNAME": "alice",
    "GROUPNAME": "eng",
    "HOSTNAME": "laptop",
    "REMOTE_HOSTNAME": "laptop",
    "DEVICE": "vpns0",
    "USER_AGENT": "Open AnyConnect VPN Agent v9.01",
    "DEVICE_TYPE": "",
    "DEVICE_PLATFORM": "linux-64",
    "REASON": "connect",
    "OCSERV_ROUTES": "10.0.0.0/255.0.0.0 fd98::/64 ",
    "OCSERV_ROUTES4": "10.0.0.0/255.0.0.0 ",
    "OCSERV_ROUTES6": "fd98::/64 ",
    "OCSERV_NO_ROUTES": "10.1.0.0/255.255.0.0 ",
    "OCSERV_NO_ROUTES4": "10.1.0.0/255.255.0.0 ",
    "OCSERV_DNS": "192.168.1.1 fd00::53 ",
    "OCSERV_DNS4": "192.168.1.1 ",
    "OCSERV_DNS6": "fd00::53 ",
}


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def read_env_dump(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def process_is_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it no longer runs)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def wait_until_gone(pids: list[int]) -> None:
    """Poll (another process's death has no event to wait on) for at most five seconds."""
    for _ in range(250):
        if all(process_is_gone(pid) for pid in pids):
            return
        await trio.sleep(0.02)
    pytest.fail(f"processes {pids} still run after being killed")


def test_connect_environment_worked_example() -> None:
    assert build_script_environment(ScriptReason.CONNECT, CONTEXT) == EXPECTED_CONNECT_ENV


def test_disconnect_adds_statistics_and_host_update_its_reason() -> None:
    stats = SessionStats(bytes_in=1_000_000, bytes_out=2_500, duration=3600)
    env = build_script_environment(
        ScriptReason.DISCONNECT, ScriptContext(1, "bob", stats=stats, device="vpns1")
    )
    assert env["REASON"] == "disconnect"
    assert (env["STATS_BYTES_IN"], env["STATS_BYTES_OUT"], env["STATS_DURATION"]) == (
        "1000000",
        "2500",
        "3600",
    )
    never_up = ScriptContext(1, "bob", stats=SessionStats(0, 0))
    assert "STATS_DURATION" not in build_script_environment(ScriptReason.DISCONNECT, never_up)
    host = build_script_environment(ScriptReason.HOST_UPDATE, CONTEXT)
    assert host["REASON"] == "host-update"
    assert "STATS_BYTES_IN" not in host


def test_unknown_values_are_left_out_and_empty_lists_are_absent() -> None:
    env = build_script_environment(ScriptReason.CONNECT, ScriptContext(7, "carol"))
    assert env == {
        "ID": "7",
        "VHOST": "default",
        "USERNAME": "carol",
        "GROUPNAME": "",
        "HOSTNAME": "",
        "REMOTE_HOSTNAME": "",
        "DEVICE": "",
        "USER_AGENT": "",
        "DEVICE_TYPE": "",
        "DEVICE_PLATFORM": "",
        "REASON": "connect",
    }


def test_a_default_route_means_no_route_list() -> None:
    context = ScriptContext(1, "dave", routes=("default", IPv4Network("10.0.0.0/8")))
    env = build_script_environment(ScriptReason.CONNECT, context)
    assert not any(name.startswith("OCSERV_ROUTES") for name in env)


def test_firewall_variables() -> None:
    context = ScriptContext(
        1, "erin", restrict_to_routes=True, port_restrictions="tcp(443), udp(53), icmp()"
    )
    env = build_script_environment(ScriptReason.CONNECT, context)
    assert env["OCSERV_RESTRICT_TO_ROUTES"] == "1"
    assert env["OCSERV_ALLOW_PORTS"] == "tcp 443 udp 53 icmp all "
    assert "OCSERV_DENY_PORTS" not in env
    assert port_rules_for_firewall("!( tcp(22), icmpv6() )") == (True, "tcp 22 icmpv6 all ")


def test_plan_script_wraps_the_firewall_script_like_ocserv() -> None:
    plain = plan_script(ScriptReason.CONNECT, "/etc/ocserv/up.sh", CONTEXT)
    assert plain is not None
    assert plain.argv == ("/etc/ocserv/up.sh",)
    assert dict(plain.environment) == EXPECTED_CONNECT_ENV
    assert plan_script(ScriptReason.DISCONNECT, None, CONTEXT) is None

    restricted = ScriptContext(1, "frank", restrict_to_routes=True)
    wrapped = plan_script(ScriptReason.DISCONNECT, "/etc/ocserv/down.sh", restricted)
    assert wrapped is not None
    assert wrapped.argv == (FIREWALL_SCRIPT,)
    assert wrapped.environment["OCSERV_NEXT_SCRIPT"] == "/etc/ocserv/down.sh"
    alone = plan_script(ScriptReason.CONNECT, None, restricted)
    assert alone is not None and "OCSERV_NEXT_SCRIPT" not in alone.environment
    host = plan_script(ScriptReason.HOST_UPDATE, "/etc/ocserv/host.sh", restricted)
    assert host is not None and host.argv == ("/etc/ocserv/host.sh",)


def test_context_from_user_settings() -> None:
    settings = parse_config_text(
        'auth = "plain[passwd=/x]"\nroute = 10.0.0.0/8\ndns = 10.0.0.53\n', "c"
    ).settings
    user_file = parse_per_user_text("restrict-user-to-ports = tcp(22)\n", "u")
    user = merge_user_settings(settings, "gina", "ops", None, user_file)
    context = ScriptContext.for_user(user, 9, device="vpns9")
    env = build_script_environment(ScriptReason.CONNECT, context)
    assert (env["USERNAME"], env["GROUPNAME"], env["DEVICE"], env["ID"]) == (
        "gina",
        "ops",
        "vpns9",
        "9",
    )
    assert env["OCSERV_ROUTES"] == "10.0.0.0/255.0.0.0 "
    assert env["OCSERV_DNS"] == "10.0.0.53 "
    assert env["OCSERV_ALLOW_PORTS"] == "tcp 22 "


@settings(max_examples=60, deadline=None)
@given(
    username=st.text(max_size=40),
    hostname=st.text(max_size=40),
    agent=st.text(max_size=80),
    reason=st.sampled_from(ScriptReason),
)
def test_client_supplied_text_never_breaks_the_environment(
    username: str, hostname: str, agent: str, reason: ScriptReason
) -> None:
    context = ScriptContext(1, username, remote_hostname=hostname, user_agent=agent)
    env = build_script_environment(reason, context)
    assert all("\0" not in name + value for name, value in env.items())
    assert env["REMOTE_HOSTNAME"] == hostname.replace("\0", "")


def test_route_command_expansion() -> None:
    template = "ip route add %{R} dev %{D} # %{RI} %R %D"
    assert expand_route_command(template, IPv4Network("192.168.2.0/24"), "vpns3") == (
        "ip route add 192.168.2.0/255.255.255.0 dev vpns3 # 192.168.2.0/24 "
        "192.168.2.0/255.255.255.0 vpns3"
    )
    assert expand_route_command("%{R} %{RI} %{D}", IPv6Network("fd00:2::/64"), "tun0") == (
        "fd00:2::/64 fd00:2::/64 tun0"
    )


async def test_a_script_runs_with_the_environment(tmp_path: Path) -> None:
    dump = tmp_path / "env.txt"
    script = write_script(tmp_path / "up.sh", f'env > "{dump}"\necho "argv0=$0" >> "{dump}"\n')
    invocation = plan_script(ScriptReason.CONNECT, str(script), CONTEXT)
    assert invocation is not None
    with trio.fail_after(10):
        result = await run_script(invocation.argv, invocation.environment, 5)
    assert result.success
    assert result.describe() == "exited with status 0"
    seen = read_env_dump(dump)
    assert {name: seen.get(name) for name in EXPECTED_CONNECT_ENV} == EXPECTED_CONNECT_ENV
    assert seen["argv0"] == str(script)
    assert seen["PATH"] == os.environ["PATH"]  # the server's environment is inherited


async def test_a_failing_script_is_reported(tmp_path: Path) -> None:
    script = write_script(tmp_path / "deny.sh", "exit 3\n")
    with trio.fail_after(10):
        result = await run_script([str(script)], {}, 5)
    assert not result.success
    assert result.returncode == 3
    assert result.describe() == "exited with status 3"


async def test_a_script_that_cannot_start_is_a_failure(tmp_path: Path) -> None:
    not_executable = tmp_path / "plain.sh"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with trio.fail_after(10):
        missing = await run_script([str(tmp_path / "missing.sh")], {}, 5)
        denied = await run_script([str(not_executable)], {}, 5)
    assert not missing.success and missing.error is not None
    assert "No such file" in missing.describe()
    assert not denied.success and denied.error is not None


async def test_the_time_limit_kills_the_script_and_its_children(tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "slow.sh",
        f'echo $$ > "{tmp_path}/self"\nsleep 30 &\necho $! > "{tmp_path}/child"\nwait\n',
    )
    started = trio.current_time()
    with trio.fail_after(20):
        result = await run_script([str(script)], {}, 2)  # time enough to write both files
    assert result.timed_out and not result.success
    assert result.describe() == "killed after its time limit"
    assert trio.current_time() - started < 15  # long before `sleep 30` would end
    await wait_until_gone([int((tmp_path / name).read_text()) for name in ("self", "child")])


async def test_cancelling_the_caller_kills_the_script(tmp_path: Path) -> None:
    pid_file = tmp_path / "self"
    script = write_script(
        tmp_path / "hang.sh",
        f'echo $$ > "{pid_file}.tmp"\nmv "{pid_file}.tmp" "{pid_file}"\nexec sleep 30\n',
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(1)
            nursery.start_soon(partial(run_script, [str(script)], {}, 60, limiter=limiter))
            for _ in range(500):
                if pid_file.exists():
                    break
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    await wait_until_gone([int(pid_file.read_text())])


async def test_route_commands_run_once_per_route(tmp_path: Path) -> None:
    out = tmp_path / "routes.txt"
    template = f'echo "%{{R}} %{{RI}} %{{D}}" >> "{out}"'
    routes = (IPv4Network("192.168.2.0/24"), "default", IPv6Network("fd00:2::/64"))
    with trio.fail_after(10):
        results = await run_route_commands(template, routes, "vpns3", 5)
        nothing = await run_route_commands(None, routes, "vpns3", 5)
        failing = await run_route_commands("exit 2", routes[:1], "vpns3", 5)
    assert [result.success for _, result in results] == [True, True]
    assert out.read_text().splitlines() == [
        "192.168.2.0/255.255.255.0 192.168.2.0/24 vpns3",
        "fd00:2::/64 fd00:2::/64 vpns3",
    ]
    assert nothing == []
    assert failing[0][0] == "exit 2"
    assert failing[0][1].returncode == 2


async def test_a_restricted_user_gets_the_firewall_script_at_connect_and_disconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No connect-script or disconnect-script: the firewall script alone runs at both ends.
    from trio_ocserv.server import connect
    from trio_ocserv.testing.harness import running_server

    calls: list[tuple[tuple[str, ...], str | None]] = []

    async def recorded(
        argv: Sequence[str], environment: Mapping[str, str], *args: Any, **kwargs: Any
    ) -> ScriptResult:
        calls.append((tuple(argv), environment.get("REASON")))
        return ScriptResult(0)

    monkeypatch.setattr(connect, "run_script", recorded)
    config = "restrict-user-to-routes = true\nroute = 10.1.0.0/16\n"
    with trio.fail_after(20):
        async with running_server(config, dtls=False) as server:
            async with server.session("bob"):
                pass
            while len(calls) < 2 or server.state.tunnels:
                await trio.sleep(0.01)
    assert calls == [((FIREWALL_SCRIPT,), "connect"), ((FIREWALL_SCRIPT,), "disconnect")]
