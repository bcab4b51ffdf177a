"""Throw-away network namespaces joined by a veth pair, for end-to-end tests and benchmarks.

Root only. Everything made here is named after our PID and a counter, and removed on exit
(processes are killed by PID, never by name). Addresses live only inside the namespaces we create:
198.18.0.0/15 is the benchmarking range (RFC 2544), never routed anywhere from the host.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence

import attrs

_counter = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@attrs.frozen
class Netns:
    """One namespace; `argv()` wraps a command to run inside it."""

    name: str

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self, command: Sequence[str], *, check: bool = True, timeout: float | None = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command), check=check, capture_output=True, text=True, timeout=timeout
        )


@attrs.frozen
class NetnsPair:
    """A server and a client namespace joined by veth: server_addr <-> client_addr (a /30)."""

    server: Netns
    client: Netns
    server_addr: str
    client_addr: str
    server_if: str
    client_if: str


@contextlib.contextmanager
def netns_pair(subnet_index: int | None = None) -> Iterator[NetnsPair]:
    """Create the two namespaces and the veth between them; delete both on exit."""
    n = next(_counter)
    index = (os.getpid() * 7 + n) % 16000 if subnet_index is None else subnet_index
    base = f"tocs{os.getpid()}x{n}"
    server, client = Netns(f"{base}s"), Netns(f"{base}c")
    # 198.18.0.0/15 split in /30s: 4 addresses a pair, index picks one of 32768.
    third, fourth = divmod(index * 4, 256)
    second = 18 + third // 256
    prefix = f"198.{second}.{third % 256}"
    pair = NetnsPair(
        server=server,
        client=client,
        server_addr=f"{prefix}.{fourth + 1}",
        client_addr=f"{prefix}.{fourth + 2}",
        server_if=f"v{n}s{os.getpid() % 100000}"[:15],
        client_if=f"v{n}c{os.getpid() % 100000}"[:15],
    )
    created: list[Netns] = []
    try:
        for ns in (server, client):
            _ip("netns", "add", ns.name)
            created.append(ns)
            ns.run(["ip", "link", "set", "lo", "up"])
        _ip(
            "link",
            "add",
            pair.server_if,
            "netns",
            server.name,
            "type",
            "veth",
            "peer",
            "name",
            pair.client_if,
            "netns",
            client.name,
        )
        server.run(["ip", "addr", "add", f"{pair.server_addr}/30", "dev", pair.server_if])
        client.run(["ip", "addr", "add", f"{pair.client_addr}/30", "dev", pair.client_if])
        server.run(["ip", "link", "set", pair.server_if, "up"])
        client.run(["ip", "link", "set", pair.client_if, "up"])
        yield pair
    finally:
        for ns in created:
            kill_namespace_processes(ns)
            subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)


def namespace_pids(ns: Netns) -> list[str]:
    result = subprocess.run(
        ["ip", "netns", "pids", ns.name], check=False, capture_output=True, text=True
    )
    return result.stdout.split()


def namespace_names() -> list[str]:
    result = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def kill_namespace_processes(ns: Netns) -> None:
    """Kill, by PID, whatever still runs inside `ns` (a test's leftovers), so the netns can go."""
    for pid in namespace_pids(ns):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def far_host(pair: NetnsPair, network: str = "198.19.0") -> Iterator[tuple[Netns, str]]:
    """A third namespace behind the server (`<network>.2`, routed via the server's `.1`), for
    traffic that crosses the VPN and is forwarded by the server host. Yields (netns, address)."""
    n = next(_counter)
    far = Netns(f"tocs{os.getpid()}x{n}f")
    server_if, far_if = f"f{n}s{os.getpid() % 100000}"[:15], f"f{n}f{os.getpid() % 100000}"[:15]
    _ip("netns", "add", far.name)
    try:
        far.run(["ip", "link", "set", "lo", "up"])
        _ip(
            "link",
            "add",
            server_if,
            "netns",
            pair.server.name,
            "type",
            "veth",
            "peer",
            "name",
            far_if,
            "netns",
            far.name,
        )
        pair.server.run(["ip", "addr", "add", f"{network}.1/24", "dev", server_if])
        far.run(["ip", "addr", "add", f"{network}.2/24", "dev", far_if])
        pair.server.run(["ip", "link", "set", server_if, "up"])
        far.run(["ip", "link", "set", far_if, "up"])
        far.run(["ip", "route", "add", "default", "via", f"{network}.1"])
        # Each namespace has its own ip_forward; /proc avoids needing procps' sysctl.
        pair.server.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        yield far, f"{network}.2"
    finally:
        kill_namespace_processes(far)
        subprocess.run(["ip", "netns", "del", far.name], check=False, capture_output=True)
