#!/usr/bin/env python3
"""Where a session's memory goes in trio-ocserv: Python allocations (tracemalloc) against the
process's PSS, for N idle sessions.

Root only. The real server (kernel tuns) runs in a netns with tracemalloc on; SIGUSR1 makes it
write a snapshot. The load generator (`loadgen.py run`) opens the sessions from the client netns.
Prints the top allocation sites by size growth per session, and the share of PSS growth that
Python objects explain (the rest is native: OpenSSL, the allocator, thread stacks).

    python3 benchmarks/memory_profile.py [--sessions 500] [--top 25]
    python3 benchmarks/memory_profile.py serve-traced CONFIG SNAPSHOT_PREFIX   (internal)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType

from trio_ocserv.testing import testbed
from trio_ocserv.testing.netns import netns_pair

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (a sibling script, not a package)

FRAMES = 8


def serve_traced(config: str, prefix: str) -> int:
    """Run the server with tracemalloc; SIGUSR1 writes `<prefix><n>.snap`."""
    from trio_ocserv.server.main import serve_main

    tracemalloc.start(FRAMES)
    count = 0

    def dump(_signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        tracemalloc.take_snapshot().dump(f"{prefix}{count}.snap")
        Path(f"{prefix}{count}.done").touch()
        count += 1

    signal.signal(signal.SIGUSR1, dump)
    return serve_main(["-f", "-c", config])


def snapshot(pid: int, prefix: str, index: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    done = Path(f"{prefix}{index}.done")
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the server wrote no snapshot")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(f"{prefix}{index}.snap")


def profile(args: argparse.Namespace) -> int:
    loadgen.raise_fd_limit(4 * args.sessions + 4096)
    with tempfile.TemporaryDirectory(prefix="memprof-") as tmp, netns_pair() as pair:
        root = Path(tmp)
        bed = testbed.make_testbed(
            root / "bed", pair, pool=loadgen.POOL, extra_config=loadgen.BENCH_CONFIG
        )
        prefix = str(root / "snap")
        argv = [sys.executable, __file__, "serve-traced", str(bed.config_path), prefix]
        with testbed.running_server(
            pair.server, argv, root / "server.log", pair.server_addr, 443
        ) as proc:
            # Hold sessions in the background: the load generator at one level, kept open.
            command = [
                sys.executable,
                str(HERE / "loadgen.py"),
                "run",
                f"--host={pair.server_addr}",
                f"--pin={bed.servercert}",
                "--user=bob",
                f"--password={bed.users['bob'][0]}",
                f"--server-pid={proc.pid}",
                f"--levels=0,{args.sessions}",
                f"--hold-file={root / 'holding'}",
            ]
            gen = subprocess.Popen(
                pair.client.argv(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            try:
                holding = root / "holding"
                marks = [root / "holding.0", root / f"holding.{args.sessions}"]
                before_mark, after_mark = marks
                _wait(before_mark, gen)
                before = snapshot(proc.pid, prefix, 0)
                pss_before = loadgen.tree_memory_kib(proc.pid)["pss"]
                (holding.with_suffix(".go0")).touch()
                _wait(after_mark, gen)
                after = snapshot(proc.pid, prefix, 1)
                pss_after = loadgen.tree_memory_kib(proc.pid)["pss"]
                (holding.with_suffix(f".go{args.sessions}")).touch()
                gen.communicate(timeout=300)
            finally:
                if gen.poll() is None:
                    testbed.stop_process(gen)
    report(before, after, args.sessions, pss_after - pss_before, args.top)
    return 0


def _wait(mark: Path, gen: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while not mark.exists():
        if gen.poll() is not None:
            detail = gen.stderr.read().decode(errors="replace") if gen.stderr else ""
            raise RuntimeError(f"load generator exited: {detail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {mark.name}")
        time.sleep(0.2)


def report(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    sessions: int,
    pss_growth_kib: int,
    top: int,
) -> None:
    by_line = after.compare_to(before, "lineno")
    by_file = after.compare_to(before, "filename")
    python_growth = sum(stat.size_diff for stat in by_file) / 1024
    summary = {
        "sessions": sessions,
        "pss_per_session_kib": round(pss_growth_kib / sessions, 1),
        "python_per_session_kib": round(python_growth / sessions, 1),
        "native_per_session_kib": round((pss_growth_kib - python_growth) / sessions, 1),
    }
    print(json.dumps(summary))
    print(f"\ntop {top} files by growth (bytes per session):")
    for stat in sorted(by_file, key=lambda s: -s.size_diff)[:top]:
        frame = stat.traceback[0]
        per = f"{stat.size_diff / sessions:10.0f}  {stat.count_diff / sessions:6.1f} obj"
        print(f"{per}  {frame.filename}")
    print(f"\ntop {top} lines by growth (bytes per session):")
    for stat in sorted(by_line, key=lambda s: -s.size_diff)[:top]:
        frame = stat.traceback[0]
        print(
            f"{stat.size_diff / sessions:10.0f}  {stat.count_diff / sessions:6.1f} obj  "
            f"{frame.filename}:{frame.lineno}"
        )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-traced":
        return serve_traced(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    return profile(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
