#!/usr/bin/env python3
"""Side-by-side benchmarks: trio-ocserv and (when installed) ocserv on one generated ocserv.conf.

Root only. A server and a client network namespace joined by veth; the real openconnect client;
iperf3 and ping through the tunnel. Prints a table and writes JSON. Medians of repeats with min-max
spread; the machine is noisy, so compare the two servers within one run.

    python3 benchmarks/run.py [--quick] [--servers trio-ocserv,ocserv] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

SERVER_TUN_ADDR = "192.168.99.1"  # first host of the test bed's pool: the server side of every tun
MODES: dict[str, list[str]] = {
    "dtls-psk": [],
    "dtls-legacy": ["--dtls-ciphers=OC-DTLS1_2-AES128-GCM"],
    "cstp": ["--no-dtls"],
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def ping_rtt_ms(pair: NetnsPair, target: str, count: int) -> float:
    out = pair.client.run(["ping", "-q", "-c", str(count), "-i", "0.02", "-W", "2", target]).stdout
    # rtt min/avg/max/mdev = 0.276/0.302/0.328/0.026 ms
    return float(out.rsplit("=", 1)[1].split("/")[1])


def bench_server(
    name: str,
    argv_for: Callable[[testbed.TestBed], list[str]],
    args: argparse.Namespace,
    root: Path,
) -> dict[str, object]:
    results: dict[str, object] = {}
    with netns_pair() as pair:
        results["raw_rtt_ms"] = ping_rtt_ms(pair, pair.server_addr, 50)
        bed = testbed.make_testbed(root / name / "srv", pair)
        log = root / name / "server.log"
        try:
            server_cm = testbed.running_server(
                pair.server, argv_for(bed), log, pair.server_addr, 443
            )
            server = server_cm.__enter__()
        except (TimeoutError, OSError) as exc:
            print(f"{name} did not start: {exc}", file=sys.stderr)
            return {"error": "did not start"}
        try:
            with testbed.iperf3_server(pair.server):
                for mode, extra in MODES.items():
                    if mode not in args.modes or (args.quick and mode == "dtls-legacy"):
                        continue
                    results[mode] = bench_mode(pair, bed, server, mode, extra, args, root / name)
            if "cycles" in args.modes:
                results["cycles_per_s"] = bench_cycles(pair, bed, server, args, root / name)
        finally:
            server_cm.__exit__(None, None, None)
    return results


def bench_mode(
    pair: NetnsPair,
    bed: testbed.TestBed,
    server: subprocess.Popen[bytes],
    mode: str,
    extra: list[str],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, object]:
    wait_for = "Established DTLS connection" if mode.startswith("dtls") else "Configured as"
    logins: list[float] = []
    rtts: list[float] = []
    up: list[float] = []
    down: list[float] = []
    cpu_per_gb: list[float] = []
    for rep in range(args.repeats):
        started = time.monotonic()
        try:
            with openconnect.openconnect_tunnel(
                pair.client,
                bed.url,
                servercert=bed.servercert,
                workdir=workdir / f"{mode}-{rep}",
                user="bob", password="bob-pass", args=extra, wait_for=wait_for,
            ) as client:
                logins.append((time.monotonic() - started) * 1000)
                client.wait_for_log("Configured as")
                client.script_env("connect")  # the vpnc script has routed the tun
                rtts.append(ping_rtt_ms(pair, SERVER_TUN_ADDR, args.pings))
                for reverse, sink in ((False, up), (True, down)):
                    cpu0 = process_tree_cpu_seconds(server_pid(server))
                    mbps, moved = testbed.iperf3_run(
                        pair.client, SERVER_TUN_ADDR, args.seconds, reverse
                    )
                    cpu = process_tree_cpu_seconds(server_pid(server)) - cpu0
                    sink.append(mbps)
                    cpu_per_gb.append(cpu / (moved / 1e9))
        except (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            return {"error": str(exc).splitlines()[0][:200]}
    return {
        "login_ms": median_spread(logins),
        "rtt_ms": median_spread(rtts),
        "upload_mbps": median_spread(up),
        "download_mbps": median_spread(down),
        "cpu_s_per_gb": median_spread(cpu_per_gb),
    }


def bench_cycles(
    pair: NetnsPair,
    bed: testbed.TestBed,
    server: subprocess.Popen[bytes],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, object]:
    cycles = args.cycles
    cpu0 = process_tree_cpu_seconds(server_pid(server))
    started = time.monotonic()
    try:
        for i in range(cycles):
            with openconnect.openconnect_tunnel(
                pair.client,
                bed.url,
                servercert=bed.servercert,
                workdir=workdir / f"cycle-{i}",
                user="bob", password="bob-pass", args=["--no-dtls"], wait_for="Configured as",
            ):
                pass
    except AssertionError as exc:
        return {"error": str(exc).splitlines()[0][:200]}
    elapsed = time.monotonic() - started
    cpu = process_tree_cpu_seconds(server_pid(server)) - cpu0
    return {"per_s": cycles / elapsed, "server_cpu_ms_per_cycle": cpu * 1000 / cycles}


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
        figures = ("login_ms", "rtt_ms", "upload_mbps", "download_mbps", "cpu_s_per_gb")
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
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.pings, args.cycles = 1, 3, 30, 5
    if os.geteuid() != 0:
        print("benchmarks need root (network namespaces, tun devices)", file=sys.stderr)
        return 1
    args.modes = set(args.modes.split(","))
    runners: dict[str, Callable[[testbed.TestBed], list[str]]] = {
        "trio-ocserv": testbed.trio_ocserv_argv,
        "trio-ocserv-py": pure_python_argv,
        "ocserv": testbed.ocserv_argv,
    }
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="tocs-bench-") as tmp:
        for name in args.servers.split(","):
            if name == "ocserv" and shutil.which("ocserv") is None:
                print("ocserv is not installed: its column is skipped", file=sys.stderr)
                continue
            print(f"benchmarking {name} ...", file=sys.stderr)
            results[name] = bench_server(name, runners[name], args, Path(tmp))
    args.json.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
