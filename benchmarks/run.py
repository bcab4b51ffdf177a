#!/usr/bin/env python3
"""Side-by-side benchmarks: trio-ocserv and (when installed) ocserv on one generated ocserv.conf.

Root only. Each server runs in its own pair of network namespaces joined by veth, all of them for
the whole run; the real openconnect client; iperf3 and ping through the tunnel. Every measurement
is taken on each server in turn (the first server rotates), so a noisy minute hurts both alike.
Prints a table and writes JSON: medians of repeats with the min-max spread.

    python3 benchmarks/run.py [--quick] [--servers trio-ocserv,ocserv] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

SERVER_TUN_ADDR = "192.168.99.1"  # first host of the test bed's pool: the server side of every tun
MODES: dict[str, list[str]] = {
    "dtls-psk": [],
    "dtls-legacy": ["--dtls-ciphers=OC-DTLS1_2-AES128-GCM"],
    "cstp": ["--no-dtls"],
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PINGS_PER_ROUND = 20  # servers' pings alternate in rounds of this many


def process_tree_cpu_seconds(root_pid: int) -> float:
    """CPU of a process and all its descendants, the exited ones included: ocserv forks a worker
    per client, and a worker's time moves to its parent's cutime/cstime once it is reaped."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        cpu[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    # `ip netns exec` execs the command, so the Popen PID is the server's own.
    return proc.pid


def pure_python_argv(bed: testbed.TestBed) -> list[str]:
    """trio-ocserv without its C data path, to show what the C path buys in the same run."""
    return ["env", "TRIO_OCSERV_PURE_PYTHON=1", *testbed.trio_ocserv_argv(bed)]


def median_spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ping_rtts_ms(pair: NetnsPair, target: str, count: int) -> list[float]:
    """The RTT of each of `count` pings (the callers take the median, not ping's mean: on this VM
    one ping in fifty takes a scheduling hiccup of a millisecond or more, which moved the mean of
    100 by 10-20%)."""
    out = pair.client.run(["ping", "-c", str(count), "-i", "0.02", "-W", "2", target]).stdout
    # 64 bytes from 192.168.99.1: icmp_seq=1 ttl=64 time=0.302 ms
    rtts = [float(m) for m in re.findall(r" time=([0-9.]+) ms", out)]
    if not rtts:
        raise AssertionError(f"no ping reply from {target}:\n{out}")
    return rtts


@attrs.define
class Target:
    """One server under test, in its own netns pair, running for the whole benchmark."""

    name: str
    pair: NetnsPair
    bed: testbed.TestBed
    server: subprocess.Popen[bytes]
    workdir: Path
    results: dict[str, object] = attrs.Factory(dict)
    samples: dict[str, dict[str, list[float]]] = attrs.Factory(dict)

    def sample(self, mode: str, figure: str, value: float) -> None:
        self.samples.setdefault(mode, {}).setdefault(figure, []).append(value)

    def tunnel(
        self, tag: str, extra: list[str], wait_for: str
    ) -> contextlib.AbstractContextManager[openconnect.OpenconnectClient]:
        return openconnect.openconnect_tunnel(
            self.pair.client,
            self.bed.url,
            servercert=self.bed.servercert,
            workdir=self.workdir / tag,
            user="bob", password="bob-pass", args=extra, wait_for=wait_for,
        )

    def cpu(self) -> float:
        return process_tree_cpu_seconds(server_pid(self.server))


def start_target(
    stack: contextlib.ExitStack,
    name: str,
    argv_for: Callable[[testbed.TestBed], list[str]],
    root: Path,
) -> Target | None:
    pair = stack.enter_context(netns_pair())
    bed = testbed.make_testbed(root / name / "srv", pair)
    try:
        server = stack.enter_context(
            testbed.running_server(
                pair.server, argv_for(bed), root / name / "server.log", pair.server_addr, 443
            )
        )
    except (TimeoutError, OSError) as exc:
        print(f"{name} did not start: {exc}", file=sys.stderr)
        return None
    stack.enter_context(testbed.iperf3_server(pair.server))
    target = Target(name, pair, bed, server, root / name)
    target.results["raw_rtt_ms"] = statistics.median(ping_rtts_ms(pair, pair.server_addr, 50))
    return target


_FAILURES = (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired)


def rotated(targets: list[Target], turn: int) -> list[Target]:
    """Each turn starts with the next server, so neither always runs first."""
    k = turn % len(targets)
    return targets[k:] + targets[:k]


def bench_logins(targets: list[Target], mode: str, extra: list[str], count: int) -> None:
    """Login to tunnel up (DTLS established, or the CSTP tunnel configured), many times."""
    wait_for = "Established DTLS connection" if mode.startswith("dtls") else "Configured as"
    for i in range(count):
        for target in rotated(targets, i):
            if mode in target.results:
                continue  # this mode already failed on this server
            started = time.monotonic()
            try:
                with target.tunnel(f"{mode}-login-{i}", extra, wait_for):
                    target.sample(mode, "login_ms", (time.monotonic() - started) * 1000)
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                target.results[mode] = {"error": str(exc).splitlines()[0][:200]}


def bench_traffic(
    targets: list[Target], mode: str, extra: list[str], args: argparse.Namespace
) -> None:
    """Ping RTT and iperf3 both ways, one tunnel per server and repeat. The tunnels of all servers
    are up together, so that their pings can be interleaved in short rounds: a slow spell of
    the machine then falls on both servers' RTTs alike. iperf3 runs on each in turn."""
    for rep in range(args.repeats):
        with contextlib.ExitStack() as stack:
            clients: dict[str, openconnect.OpenconnectClient] = {}
            for target in rotated(targets, rep):
                if mode in target.results:
                    continue
                try:
                    client = stack.enter_context(
                        target.tunnel(f"{mode}-{rep}", extra, "Configured as")
                    )
                    if mode.startswith("dtls"):
                        client.wait_for_log("Established DTLS connection")
                    client.script_env("connect")  # the vpnc script has routed the tun
                except _FAILURES as exc:
                    target.results[mode] = {"error": str(exc).splitlines()[0][:200]}
                    continue
                clients[target.name] = client
            live = [t for t in targets if t.name in clients]
            # Through the tunnel, and straight over the veth (the raw RTT), in the same rounds.
            rtts: dict[tuple[str, str], list[float]] = {}
            rounds = max(1, args.pings // PINGS_PER_ROUND)
            for turn in range(rounds):
                for target in rotated(live, turn):
                    for address in (SERVER_TUN_ADDR, target.pair.server_addr):
                        try:
                            rtts.setdefault((target.name, address), []).extend(
                                ping_rtts_ms(target.pair, address, args.pings // rounds)
                            )
                        except AssertionError as exc:
                            target.results[mode] = {"error": str(exc).splitlines()[0][:200]}
            for target in live:
                if mode in target.results:
                    continue
                rtt = statistics.median(rtts[target.name, SERVER_TUN_ADDR])
                raw = statistics.median(rtts[target.name, target.pair.server_addr])
                target.sample(mode, "rtt_ms", rtt)
                # What the latency target compares: the tunnel's share of the RTT.
                target.sample(mode, "added_rtt_ms", rtt - raw)
                try:
                    for reverse, figure in ((False, "upload_mbps"), (True, "download_mbps")):
                        cpu0 = target.cpu()
                        mbps, moved = testbed.iperf3_run(
                            target.pair.client, SERVER_TUN_ADDR, args.seconds, reverse
                        )
                        target.sample(mode, figure, mbps)
                        target.sample(mode, "cpu_s_per_gb", (target.cpu() - cpu0) / (moved / 1e9))
                except _FAILURES as exc:
                    target.results[mode] = {"error": str(exc).splitlines()[0][:200]}


def bench_cycles(targets: list[Target], cycles: int) -> None:
    """Sequential connect/disconnect cycles (CSTP), one at a time, servers taking turns."""
    elapsed = dict.fromkeys((t.name for t in targets), 0.0)
    cpu = dict.fromkeys((t.name for t in targets), 0.0)
    for i in range(cycles):
        for target in rotated(targets, i):
            if "cycles_per_s" in target.results:
                continue
            cpu0, started = target.cpu(), time.monotonic()
            try:
                with target.tunnel(f"cycle-{i}", ["--no-dtls"], "Configured as"):
                    pass
            except AssertionError as exc:
                target.results["cycles_per_s"] = {"error": str(exc).splitlines()[0][:200]}
                continue
            elapsed[target.name] += time.monotonic() - started
            cpu[target.name] += target.cpu() - cpu0
    for target in targets:
        if "cycles_per_s" not in target.results:
            target.results["cycles_per_s"] = {
                "per_s": cycles / elapsed[target.name],
                "server_cpu_ms_per_cycle": cpu[target.name] * 1000 / cycles,
            }


def run_all(
    names: list[str],
    runners: dict[str, Callable[[testbed.TestBed], list[str]]],
    args: argparse.Namespace,
    root: Path,
) -> dict[str, dict[str, object]]:
    with contextlib.ExitStack() as stack:
        targets = [
            target
            for name in names
            if (target := start_target(stack, name, runners[name], root)) is not None
        ]
        for mode, extra in MODES.items():
            if mode not in args.modes or (args.quick and mode == "dtls-legacy"):
                continue
            print(f"  {mode} ...", file=sys.stderr)
            bench_logins(targets, mode, extra, args.logins)
            bench_traffic(targets, mode, extra, args)
        if "cycles" in args.modes:
            print("  cycles ...", file=sys.stderr)
            bench_cycles(targets, args.cycles)
        results: dict[str, dict[str, object]] = {}
        for target in targets:
            for mode, figures in target.samples.items():
                if mode not in target.results:
                    target.results[mode] = {f: median_spread(v) for f, v in figures.items()}
            results[target.name] = target.results
        for name in names:
            results.setdefault(name, {"error": "did not start"})
    return results


def fmt(value: object) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:.3g} [{value['min']:.3g}-{value['max']:.3g}]"
    if isinstance(value, str) and len(value) > 26:
        return value[:25] + "…"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _median(results: dict[str, object], key: str, sub: str | None) -> float | None:
    value: object = results.get(key)
    if sub is not None and isinstance(value, dict):
        value = value.get(sub)
    if isinstance(value, dict):
        value = value.get("median")
    return float(value) if isinstance(value, int | float) else None


def print_table(results: dict[str, dict[str, object]]) -> None:
    """One column per server and, with both servers, trio-ocserv / ocserv per figure."""
    servers = list(results)
    ratio = "trio-ocserv" in servers and "ocserv" in servers
    rows: list[tuple[str, list[str]]] = []
    keys: list[tuple[str, str | None]] = [("raw_rtt_ms", None)]
    for mode in MODES:
        figures = (
            "login_ms", "rtt_ms", "added_rtt_ms", "upload_mbps", "download_mbps", "cpu_s_per_gb",
        )
        keys += [(mode, figure) for figure in figures]
    keys += [("cycles_per_s", "per_s"), ("cycles_per_s", "server_cpu_ms_per_cycle")]
    for key, sub in keys:
        cells = []
        for server in servers:
            value: object = results[server].get("error") or results[server].get(key, "-")
            if sub is not None and isinstance(value, dict):
                value = value.get("error") or value.get(sub, "-")
            cells.append(fmt(value))
        if ratio:
            ours, theirs = (_median(results[s], key, sub) for s in ("trio-ocserv", "ocserv"))
            cells.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "-")
        rows.append((f"{key}.{sub}" if sub else key, cells))
    width = max(len(r[0]) for r in rows)
    header = [*servers, "trio-ocserv/ocserv"] if ratio else servers
    print(f"{'figure':<{width}}  " + "  ".join(f"{s:<28}" for s in header))
    for label, cells in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{c:<28}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, short runs (< 3 min)")
    parser.add_argument(
        "--servers",
        default="trio-ocserv,ocserv",
        help="comma-separated: trio-ocserv, trio-ocserv-py (the pure-Python data path), ocserv",
    )
    parser.add_argument(
        "--modes",
        default=",".join([*MODES, "cycles"]),
        help=f"comma-separated subset of {','.join([*MODES, 'cycles'])}",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmark-results.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pings", type=int, default=200, help="per server and repeat, in rounds")
    parser.add_argument("--cycles", type=int, default=None, help="60 (--quick: 5)")
    parser.add_argument("--logins", type=int, default=None, help="logins timed per mode: 60 (5)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.pings = 1, 3, 30
    # An explicit --cycles/--logins wins over --quick's.
    # Many short samples: a login or a cycle is mostly the client's time, and both servers'
    # medians move by a few % between runs of 20-30.
    args.cycles = args.cycles or (5 if args.quick else 60)
    args.logins = args.logins or (5 if args.quick else 60)
    if os.geteuid() != 0:
        print("benchmarks need root (network namespaces, tun devices)", file=sys.stderr)
        return 1
    args.modes = set(args.modes.split(","))
    runners: dict[str, Callable[[testbed.TestBed], list[str]]] = {
        "trio-ocserv": testbed.trio_ocserv_argv,
        "trio-ocserv-py": pure_python_argv,
        "ocserv": testbed.ocserv_argv,
    }
    names = []
    for name in args.servers.split(","):
        if name == "ocserv" and shutil.which("ocserv") is None:
            print("ocserv is not installed: its column is skipped", file=sys.stderr)
            continue
        names.append(name)
    print(f"benchmarking {', '.join(names)} side by side ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tocs-bench-") as tmp:
        results = run_all(names, runners, args, Path(tmp))
    args.json.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
