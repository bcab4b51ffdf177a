"""connect-script, disconnect-script, host-update-script, route-add-cmd and route-del-cmd.

Environment (ocserv 1.1.6, as its scripts see it): REASON (`connect`, `disconnect`,
`host-update`), ID, VHOST, USERNAME, GROUPNAME, HOSTNAME and REMOTE_HOSTNAME (the host name the
client announced), DEVICE, USER_AGENT, DEVICE_TYPE, DEVICE_PLATFORM (always set, maybe empty);
IP_REAL, IP_REAL_LOCAL (the client's and our outer addresses), IP_LOCAL, IP_REMOTE (the IPv4
tunnel end points), IPV6_LOCAL, IPV6_REMOTE, IPV6_PREFIX (set only when known); OCSERV_ROUTES,
OCSERV_NO_ROUTES, OCSERV_DNS and their `4`/`6` variants; OCSERV_RESTRICT_TO_ROUTES=1 and
OCSERV_ALLOW_PORTS / OCSERV_DENY_PORTS (`tcp 443 udp 53 icmp all `) for the firewall script;
on disconnect STATS_BYTES_IN, STATS_BYTES_OUT and STATS_DURATION (seconds).

List values are written as ocserv writes them: every item followed by one space; IPv4 routes as
`address/dotted-netmask`, IPv6 routes as `address/prefix`. A list variable is absent when the list
is empty. A `default` route is never listed: ocserv-fw reads "no OCSERV_ROUTES" as "default
route", so a user with a default route gets no OCSERV_ROUTES at all.

Scripts are executed directly (no shell, no arguments, stdout sent to stderr), inheriting the
server's environment. With restrict-user-to-routes or restrict-user-to-ports the program run is
ocserv's `/usr/bin/ocserv-fw`, which runs the configured script itself (OCSERV_NEXT_SCRIPT), as
ocserv does for connect and disconnect. Route commands are shell command lines (`/bin/sh -c`).

`build_script_environment`, `plan_script` and `expand_route_command` are pure; `run_script` and
`run_route_commands` run processes with Trio and kill the whole process group on timeout or
cancellation. Whether a failed script refuses the client is the caller's decision.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import attrs
import trio

from trio_ocserv.config.effective import UserSettings
from trio_ocserv.config.values import IpAddress, Route

FIREWALL_SCRIPT = "/usr/bin/ocserv-fw"
"""ocserv's firewall helper; Debian's ocserv package installs it."""

_PORT_RULE = re.compile(r"(tcp|udp|sctp|icmp|icmpv6)\(\s*([0-9]*)\s*\)")
_ROUTE_PLACEHOLDER = re.compile(r"%\{RI\}|%\{R\}|%R|%\{D\}|%D")
_STDERR = 2


class ScriptReason(enum.Enum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    HOST_UPDATE = "host-update"


@attrs.frozen
class SessionStats:
    """Counters for the disconnect script: bytes received from and sent to the client."""

    bytes_in: int
    bytes_out: int
    duration: int | None = None  # seconds; None when the tunnel never came up


@attrs.frozen
class ScriptContext:
    """Everything a script is told about one session (plain values; no config objects)."""

    session_id: int
    username: str
    groupname: str = ""
    vhost: str = "default"
    device: str = ""
    real_address: IpAddress | None = None
    real_local_address: IpAddress | None = None
    ipv4_local: IPv4Address | None = None
    ipv4_remote: IPv4Address | None = None
    ipv6_local: IPv6Address | None = None
    ipv6_remote: IPv6Address | None = None
    ipv6_prefix: int | None = None
    remote_hostname: str = ""
    user_agent: str = ""
    device_type: str = ""
    device_platform: str = ""
    routes: tuple[Route, ...] = ()
    no_routes: tuple[Route, ...] = ()
    dns: tuple[IpAddress, ...] = ()
    restrict_to_routes: bool = False
    port_restrictions: str | None = None  # restrict-user-to-ports, as written in the config
    stats: SessionStats | None = None

    @classmethod
    def for_user(cls, user: UserSettings, session_id: int, **values: Any) -> ScriptContext:
        """A context whose routing values come from a user's effective settings."""
        fields: dict[str, Any] = {
            "session_id": session_id,
            "username": user.username,
            "groupname": user.groupname or "",
            "routes": user.routes,
            "no_routes": user.no_routes,
            "dns": user.dns,
            "restrict_to_routes": user.restrict_user_to_routes,
            "port_restrictions": user.restrict_user_to_ports,
        }
        # One construction, not one plus an evolve: this runs on every CONNECT.
        return cls(**(fields | values))

    @property
    def uses_firewall(self) -> bool:
        return self.restrict_to_routes or bool(self.port_restrictions)


@attrs.frozen
class ScriptInvocation:
    """The program to run and the environment entries to add to the server's environment."""

    argv: tuple[str, ...]
    environment: Mapping[str, str]


@attrs.frozen
class ScriptResult:
    """How a script ended: exit status 0 is success; anything else, a timeout or no start fails."""

    returncode: int | None
    timed_out: bool = False
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if self.timed_out:
            return "killed after its time limit"
        if self.error is not None:
            return f"could not be started: {self.error}"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exited with status {self.returncode}"


def build_script_environment(reason: ScriptReason, context: ScriptContext) -> dict[str, str]:
    """The variables ocserv 1.1.6 sets for a connect, disconnect or host-update script."""
    env: dict[str, str] = {"ID": str(context.session_id)}
    optional = {
        "IP_REAL": context.real_address,
        "IP_REAL_LOCAL": context.real_local_address,
        "IP_LOCAL": context.ipv4_local,
        "IPV6_LOCAL": context.ipv6_local,
        "IP_REMOTE": context.ipv4_remote,
        "IPV6_REMOTE": context.ipv6_remote,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    if context.ipv6_remote is not None and context.ipv6_prefix is not None:
        env["IPV6_PREFIX"] = str(context.ipv6_prefix)
    env.update(
        {
            "VHOST": context.vhost,
            "USERNAME": context.username,
            "GROUPNAME": context.groupname,
            "HOSTNAME": context.remote_hostname,
            "REMOTE_HOSTNAME": context.remote_hostname,
            "DEVICE": context.device,
            "USER_AGENT": context.user_agent,
            "DEVICE_TYPE": context.device_type,
            "DEVICE_PLATFORM": context.device_platform,
        }
    )
    if reason is ScriptReason.DISCONNECT and context.stats is not None:
        env["STATS_BYTES_IN"] = str(context.stats.bytes_in)
        env["STATS_BYTES_OUT"] = str(context.stats.bytes_out)
        if context.stats.duration is not None:
            env["STATS_DURATION"] = str(context.stats.duration)
    env["REASON"] = reason.value
    if "default" not in context.routes:
        env.update(_family_lists("OCSERV_ROUTES", context.routes))
    env.update(_family_lists("OCSERV_NO_ROUTES", context.no_routes))
    if context.restrict_to_routes:
        env["OCSERV_RESTRICT_TO_ROUTES"] = "1"
    env.update(_family_lists("OCSERV_DNS", context.dns))
    if context.port_restrictions:
        negated, ports = port_rules_for_firewall(context.port_restrictions)
        if ports:
            env["OCSERV_DENY_PORTS" if negated else "OCSERV_ALLOW_PORTS"] = ports
    # Client-supplied texts (user agent, host name) end up here; the OS refuses NUL in variables.
    return {name: value.replace("\0", "") for name, value in env.items()}


def _family_lists(
    name: str, items: Iterable[IPv4Network | IPv6Network | IpAddress | str]
) -> dict[str, str]:
    """NAME (all items), NAME4 and NAME6, each set only when not empty."""
    lists: dict[str, str] = {name: "", f"{name}4": "", f"{name}6": ""}
    for item in items:
        if isinstance(item, str):  # the `default` route is not a network
            continue
        text = route_text(item) if isinstance(item, IPv4Network | IPv6Network) else str(item)
        family = f"{name}6" if item.version == 6 else f"{name}4"
        lists[name] += f"{text} "
        lists[family] += f"{text} "
    return {key: value for key, value in lists.items() if value}


def route_text(route: IPv4Network | IPv6Network) -> str:
    """A route as ocserv hands it to scripts and `%{R}`: IPv4 with a dotted netmask."""
    if isinstance(route, IPv4Network):
        return f"{route.network_address}/{route.netmask}"
    return route.with_prefixlen


def port_rules_for_firewall(rules: str) -> tuple[bool, str]:
    """`restrict-user-to-ports` text -> (negated, `tcp 443 udp 53 icmp all `) for ocserv-fw."""
    text = rules.strip()
    negated = text.startswith("!")
    words = []
    for protocol, port in _PORT_RULE.findall(text):
        value = "all" if protocol in ("icmp", "icmpv6") or not port else port
        words.append(f"{protocol} {value} ")
    return negated, "".join(words)


def plan_script(
    reason: ScriptReason,
    script: str | None,
    context: ScriptContext,
    firewall_script: str = FIREWALL_SCRIPT,
) -> ScriptInvocation | None:
    """What to run for `reason` (None: nothing). `script` is the configured script, if any."""
    if reason is ScriptReason.HOST_UPDATE or not context.uses_firewall:
        if script is None:
            return None  # decided before the environment is built: most servers run no scripts
        return ScriptInvocation((script,), build_script_environment(reason, context))
    environment = build_script_environment(reason, context)
    if script is not None:
        environment["OCSERV_NEXT_SCRIPT"] = script
    return ScriptInvocation((firewall_script,), environment)


def expand_route_command(template: str, route: IPv4Network | IPv6Network, device: str) -> str:
    """route-add-cmd / route-del-cmd with `%{R}` (route/mask), `%{RI}` (CIDR), `%{D}` (device).

    ocserv also accepts the short forms `%R` and `%D`.
    """
    values = {
        "%{RI}": route.with_prefixlen,
        "%{R}": route_text(route),
        "%R": route_text(route),
        "%{D}": device,
        "%D": device,
    }
    return _ROUTE_PLACEHOLDER.sub(lambda match: values[match.group()], template)


async def _kill_process_group(process: trio.Process) -> None:
    """Cancellation: SIGKILL the script and everything it started (it leads its own group)."""
    with contextlib.suppress(ProcessLookupError):  # it already exited; trio still reaps it
        os.killpg(process.pid, signal.SIGKILL)


async def run_script(
    argv: Sequence[str],
    environment: Mapping[str, str],
    time_limit: float,
    *,
    inherit_environment: bool = True,
    limiter: trio.CapacityLimiter | None = None,
) -> ScriptResult:
    """Run a program to completion, or kill it (and its children) after `time_limit` seconds.

    Never raises for the script's own failures (missing, not executable, non-zero exit, time
    limit); they come back as a `ScriptResult`, because running out of time is one more way for a
    script to fail, not a cancellation of the caller. Cancelling the caller kills the process
    group too (and raises `Cancelled` as usual).
    """
    full_environment = {**os.environ, **environment} if inherit_environment else dict(environment)
    if limiter is None:
        return await _run_with_time_limit(argv, full_environment, time_limit)
    async with limiter:
        return await _run_with_time_limit(argv, full_environment, time_limit)


async def _run_with_time_limit(
    argv: Sequence[str], environment: Mapping[str, str], time_limit: float
) -> ScriptResult:
    with trio.move_on_after(time_limit) as scope:
        try:
            completed = await trio.run_process(
                list(argv),
                env=environment,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=_STDERR,
                start_new_session=True,
                deliver_cancel=_kill_process_group,
            )
        except OSError as error:
            return ScriptResult(None, error=f"{argv[0]}: {error.strerror or error}")
        return ScriptResult(completed.returncode)
    assert scope.cancelled_caught
    return ScriptResult(None, timed_out=True)


async def run_route_commands(
    template: str | None,
    routes: Iterable[Route],
    device: str,
    time_limit: float,
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> list[tuple[str, ScriptResult]]:
    """Run route-add-cmd or route-del-cmd once per route (iroutes), through `/bin/sh -c`.

    Returns (command line, result) for each route, in order; `default` routes are skipped, and
    nothing runs when no command is configured.
    """
    results: list[tuple[str, ScriptResult]] = []
    if not template:
        return results
    for route in routes:
        if route == "default":
            continue
        command = expand_route_command(template, route, device)
        result = await run_script(("/bin/sh", "-c", command), {}, time_limit, limiter=limiter)
        results.append((command, result))
    return results
