#!/usr/bin/env python3
"""Many idle VPN sessions from one process: login rate, failures and the server's memory per
session (issue 6 item 2).

Two sub-commands:

    loadgen.py run --host H --port P --pin PIN --user U --password PW --server-pid PID \\
        [--levels 0,50,200,1000] [--concurrency 32] [--no-dtls] [--json out.json]

        Against a running server: open sessions with the Python AnyConnect client (TLS login,
        CONNECT, DTLS; no tun on our side) up to each level, hold them (a reader per session
        answers DPD), read the server's PSS/USS from /proc/PID/smaps_rollup (the whole process
        tree: ocserv forks a worker per session), and check that one more login is still
        answered while they are held. Prints one JSON document.

    loadgen.py bench [--full] [--servers trio-ocserv,ocserv] [--json out.json]   (root)

        Both servers in a netns pair on one generated config (/16 pool, no rate limit), the
        run sub-command inside the client namespace; trio-ocserv to 1000 sessions (10,000 with
        --full), ocserv to 200. Prints a side-by-side table and the JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from trio_ocserv.testing import testbed
from trio_ocserv.testing.client import (
    AnyConnectClient,
    ClientError,
    ConnectOptions,
    CstpTunnel,
    TlsClientSettings,
    make_client_context,
)
from trio_ocserv.testing.client_xml import Credentials
from trio_ocserv.testing.netns import netns_pair

KIB = 1024
SESSION_TIMEOUT = 60.0
SETTLE_SECONDS = 2.0
POOL = "10.80.0.0/16"
BENCH_CONFIG = "rate-limit-ms = 0\nmax-clients = 0\n"
PROBLEM_WORDS = re.compile(r"error|warning|traceback|exception|fail", re.IGNORECASE)


# -- memory -----------------------------------------------------------------------------------


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children[ppid].append(int(entry.name))
    return children


def process_tree(root_pid: int) -> list[int]:
    children = _children_by_parent()
    found, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    """Pss, Rss and USS (Private_Clean + Private_Dirty) of one process, in KiB."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {"pss": 0, "uss": 0, "rss": 0}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return {
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        "rss": values.get("Rss", 0),
    }


def tree_memory_kib(root_pid: int) -> dict[str, int]:
    """Summed over the process tree (PSS sums correctly across processes sharing pages)."""
    pids = process_tree(root_pid)
    total = {"pss": 0, "uss": 0, "rss": 0, "processes": len(pids)}
    for pid in pids:
        for key, value in smaps_rollup_kib(pid).items():
            total[key] += value
    return total


# -- the run sub-command ----------------------------------------------------------------------


class Load:
    """The sessions held open and what happened while opening them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tls = TlsClientSettings(pin_sha256=args.pin)
        self.context = make_client_context(self.tls)
        self.credentials = Credentials(args.user, [args.password])
        self.options = ConnectOptions(dtls=not args.no_dtls)
        self.tunnels: list[CstpTunnel] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self.failure_examples: dict[str, list[str]] = collections.defaultdict(list)
        self.dtls_failures = 0
        self.lost = 0
        self.limiter = trio.CapacityLimiter(args.concurrency)

    def record_failure(self, kind: str, exc: BaseException) -> None:
        self.failures[kind] += 1
        examples = self.failure_examples[kind]
        if len(examples) < 3:
            examples.append(str(exc))

    async def open_session(self) -> CstpTunnel:
        args = self.args
        with trio.fail_after(SESSION_TIMEOUT):
            async with AnyConnectClient(
                args.host, args.port, self.tls, context=self.context
            ) as vpn:
                auth = await vpn.authenticate(self.credentials)
                tunnel = await vpn.connect_tunnel(auth.cookie, self.options)
            if not args.no_dtls:
                try:
                    await tunnel.start_dtls()
                except ClientError:
                    self.dtls_failures += 1
        return tunnel

    async def hold(self, tunnel: CstpTunnel) -> None:
        """Keep reading so DPD requests (CSTP and DTLS) are answered; count lost sessions."""
        try:
            while True:
                await tunnel.receive_packet()
        except ClientError:
            self.lost += 1

    async def add_one(self, holders: trio.Nursery) -> None:
        async with self.limiter:
            try:
                tunnel = await self.open_session()
            except (ClientError, OSError, trio.TooSlowError) as exc:
                self.record_failure(type(exc).__name__, exc)
                return
        self.tunnels.append(tunnel)
        holders.start_soon(self.hold, tunnel)

    async def ramp_to(self, target: int, holders: trio.Nursery) -> tuple[int, float]:
        need = max(0, target - len(self.tunnels))
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(need):
                nursery.start_soon(self.add_one, holders)
        return need, time.monotonic() - started

    async def probe(self) -> float | None:
        """Seconds for one more login + CONNECT (+ DTLS) while the others are held; None if it
        failed."""
        started = time.monotonic()
        try:
            tunnel = await self.open_session()
        except (ClientError, OSError, trio.TooSlowError) as exc:
            self.record_failure("probe:" + type(exc).__name__, exc)
            return None
        elapsed = time.monotonic() - started
        await tunnel.disconnect()
        return elapsed


async def run_load(args: argparse.Namespace) -> dict[str, object]:
    levels = sorted({int(level) for level in args.levels.split(",")})
    load = Load(args)
    rows: list[dict[str, object]] = []
    # One login first: lazy imports, worker threads and caches are not per-session memory.
    await load.probe()
    async with trio.open_nursery() as holders:
        for level in levels:
            failures_before = sum(load.failures.values())
            opened, seconds = await load.ramp_to(level, holders)
            await trio.sleep(SETTLE_SECONDS)
            if args.hold_file:
                await hand_over(Path(args.hold_file), level)
            memory = tree_memory_kib(args.server_pid)
            probe = await load.probe()
            rows.append(
                {
                    "target": level,
                    "sessions": len(load.tunnels),
                    "opened": opened,
                    "ramp_seconds": round(seconds, 2),
                    "login_rate": round(opened / seconds, 1) if opened and seconds else None,
                    "failures": sum(load.failures.values()) - failures_before,
                    "dtls_failures": load.dtls_failures,
                    "lost": load.lost,
                    "probe_ms": round(probe * 1000, 1) if probe is not None else None,
                    "server_kib": memory,
                    "client_rss_kib": smaps_rollup_kib(os.getpid())["rss"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        holders.cancel_scope.cancel()
    # Close the TCP/UDP sockets without BYE: the server notices the TCP close either way.
    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            for tunnel in load.tunnels:
                nursery.start_soon(tunnel.aclose)
    base = rows[0]["server_kib"] if rows and rows[0]["sessions"] == 0 else None
    for row in rows:
        sessions = row["sessions"]
        if base is not None and isinstance(sessions, int) and sessions > 0:
            held = row["server_kib"]
            assert isinstance(held, dict) and isinstance(base, dict)
            row["pss_per_session_kib"] = round((held["pss"] - base["pss"]) / sessions, 1)
            row["uss_per_session_kib"] = round((held["uss"] - base["uss"]) / sessions, 1)
    return {
        "levels": rows,
        "failure_kinds": dict(load.failures),
        "failure_examples": dict(load.failure_examples),
        "dtls": not args.no_dtls,
    }


async def hand_over(hold_file: Path, level: int) -> None:
    """Tell a profiler the level is reached (`<file>.<level>`) and wait for `<file>.go<level>`."""
    await trio.Path(f"{hold_file}.{level}").touch()
    go = trio.Path(f"{hold_file}.go{level}")
    while not await go.exists():  # noqa: ASYNC110  (another process creates the file)
        await trio.sleep(0.2)


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        # Without CAP_SYS_RESOURCE (containers) the hard limit is the ceiling: about two
        # descriptors a session on each side (TCP + tun on the server, TCP + UDP here).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(
            f"warning: open files limited to {hard} (wanted {wanted}); expect EMFILE failures",
            file=sys.stderr,
        )


def run_main(args: argparse.Namespace) -> int:
    levels = [int(level) for level in args.levels.split(",")]
    # A TCP and a UDP socket per session, plus slack.
    raise_fd_limit(2 * max(levels) + 1024)
    result = trio.run(run_load, args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


# -- the bench sub-command --------------------------------------------------------------------


def bench_server(
    name: str,
    argv_for: Callable[[testbed.TestBed], list[str]],
    levels: list[int],
    args: argparse.Namespace,
    root: Path,
) -> dict[str, object]:
    with netns_pair() as pair:
        bed = testbed.make_testbed(root / name, pair, pool=POOL, extra_config=BENCH_CONFIG)
        password = bed.users["bob"][0]
        log_path = root / f"{name}.log"
        with testbed.running_server(
            pair.server, argv_for(bed), log_path, pair.server_addr, 443
        ) as proc:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "run",
                f"--host={pair.server_addr}",
                "--port=443",
                f"--pin={bed.servercert}",
                "--user=bob",
                f"--password={password}",
                f"--server-pid={proc.pid}",
                f"--levels={','.join(map(str, levels))}",
                f"--concurrency={args.concurrency}",
            ]
            if args.no_dtls:
                command.append("--no-dtls")
            started = time.monotonic()
            done = subprocess.run(
                pair.client.argv(command),
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{name}: load generator failed:\n{done.stderr[-4000:]}")
            result: dict[str, object] = json.loads(done.stdout)
            result["wall_seconds"] = round(time.monotonic() - started, 1)
        log_text = log_path.read_text(errors="replace").splitlines()
        problems = [line for line in log_text if PROBLEM_WORDS.search(line)]
        result["server_log_problems"] = {"count": len(problems), "last": problems[-10:]}
        return result


def _cell(row: dict[str, object] | None, key: str) -> str:
    if row is None:
        return "-"
    value = row.get(key)
    if key in ("pss", "uss"):
        memory = row["server_kib"]
        assert isinstance(memory, dict)
        return f"{memory[key] / KIB:.1f} MiB"
    return "-" if value is None else str(value)


def print_table(results: dict[str, dict[str, object]]) -> None:
    names = list(results)
    by_level: dict[int, dict[str, dict[str, object]]] = collections.defaultdict(dict)
    for name, result in results.items():
        rows = result["levels"]
        assert isinstance(rows, list)
        for row in rows:
            by_level[row["target"]][name] = row
    columns = [
        ("sessions", "sessions"),
        ("login/s", "login_rate"),
        ("fail", "failures"),
        ("dtls fail", "dtls_failures"),
        ("lost", "lost"),
        ("probe ms", "probe_ms"),
        ("PSS", "pss"),
        ("USS", "uss"),
        ("PSS/sess KiB", "pss_per_session_kib"),
        ("USS/sess KiB", "uss_per_session_kib"),
    ]
    header = f"{'level':>6} {'metric':<13}" + "".join(f"{name:>16}" for name in names)
    print(header)
    print("-" * len(header))
    for level in sorted(by_level):
        for title, key in columns:
            cells = "".join(f"{_cell(by_level[level].get(name), key):>16}" for name in names)
            print(f"{level:>6} {title:<13}{cells}")
        print()


def bench_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench needs root (network namespaces, tun devices)", file=sys.stderr)
        return 2
    ours = [0, 50, 200, 1000] + ([10000] if args.full else [])
    theirs = [0, 50, 200]
    if args.levels:
        ours = theirs = sorted({int(level) for level in args.levels.split(",")})
    plans: dict[str, tuple[Callable[[testbed.TestBed], list[str]], list[int]]] = {
        "trio-ocserv": (testbed.trio_ocserv_argv, ours),
        "ocserv": (testbed.ocserv_argv, theirs),
    }
    # The servers and the load generator inherit it: a socket and a tun (or worker) a session.
    raise_fd_limit(4 * max(ours) + 4096)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        for name in args.servers.split(","):
            argv_for, levels = plans[name]
            print(f"== {name}: levels {levels}", file=sys.stderr, flush=True)
            results[name] = bench_server(name, argv_for, levels, args, Path(tmp))
    print_table(results)
    text = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="hold sessions against a running server")
    run.add_argument("--host", required=True)
    run.add_argument("--port", type=int, default=443)
    run.add_argument("--pin", required=True, help="pin-sha256:... of the server key")
    run.add_argument("--user", required=True)
    run.add_argument("--password", required=True)
    run.add_argument("--server-pid", type=int, required=True)
    run.add_argument("--levels", default="0,50,200,1000")
    run.add_argument("--concurrency", type=int, default=32)
    run.add_argument("--no-dtls", action="store_true")
    run.add_argument("--json")
    run.add_argument("--hold-file", help="pause at each level for a profiler (memory_profile.py)")
    bench = commands.add_parser("bench", help="trio-ocserv and ocserv side by side (root)")
    bench.add_argument("--full", action="store_true", help="also 10,000 sessions")
    bench.add_argument("--servers", default="trio-ocserv,ocserv")
    bench.add_argument("--concurrency", type=int, default=32)
    bench.add_argument("--no-dtls", action="store_true")
    bench.add_argument("--timeout", type=float, default=3600.0)
    bench.add_argument("--levels", help="override the levels of both servers, e.g. 0,50")
    bench.add_argument("--json")
    args = parser.parse_args()
    return run_main(args) if args.command == "run" else bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
