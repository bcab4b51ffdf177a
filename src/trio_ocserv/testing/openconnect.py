"""Drive the real `openconnect` client inside a network namespace.

The client runs with a tiny vpnc-compatible script of ours that records its environment per `reason`
(what the server pushed: addresses, routes, DNS, banner) and configures the tun just enough for
traffic: address, MTU, link up, the pushed routes. It never touches /etc/resolv.conf (namespaces
share the file system).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from trio_ocserv.testing.netns import Netns

SCRIPT = r"""#!/bin/sh
# Written by trio_ocserv.testing.openconnect: configure the tun minimally, then record the
# environment (renamed into place last, so its presence means the tun is ready).
env | sort > "$OC_TEST_DIR/$reason.env.tmp"
if [ "$reason" = connect ]; then
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1400}"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    if [ -n "$INTERNAL_IP4_NETADDR" ] && [ -n "$INTERNAL_IP4_NETMASKLEN" ]; then
        ip route replace "$INTERNAL_IP4_NETADDR/$INTERNAL_IP4_NETMASKLEN" dev "$TUNDEV"
    fi
    i=0
    while [ "$i" -lt "${CISCO_SPLIT_INC:-0}" ]; do
        eval addr=\$CISCO_SPLIT_INC_${i}_ADDR
        eval len=\$CISCO_SPLIT_INC_${i}_MASKLEN
        ip route replace "$addr/$len" dev "$TUNDEV"
        i=$((i + 1))
    done
fi
mv "$OC_TEST_DIR/$reason.env.tmp" "$OC_TEST_DIR/$reason.env"
exit 0
"""


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


@attrs.define
class OpenconnectClient:
    """A running `openconnect` process; stop() sends SIGINT (the client says BYE) then SIGKILL."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                break
            time.sleep(0.001)  # fine-grained: login time is measured with it (1 ms steps)
        raise AssertionError(
            f"openconnect never printed {text!r} (exit {self.proc.poll()}); log:\n{self.log()}"
        )

    def script_env(self, reason: str = "connect", timeout: float = 10.0) -> dict[str, str]:
        """The environment the script saw for `reason`, waiting until that run has finished."""
        path = self.workdir / f"{reason}.env"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the script never ran with reason={reason}:\n{self.log()}")
            time.sleep(0.001)  # cycle timings are measured with it
        return read_env_file(path)

    def stop(self, sig: int = signal.SIGINT, grace: float = 5.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            # Not Popen.wait(timeout): it sleeps in doubling steps (up to 50 ms), so an exit
            # 35 ms after the signal was seen at 63.5 ms and cycle timings jumped in 32 ms steps.
            deadline = time.monotonic() + grace
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _prepare(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "vpnc-script.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    return script


def _base_argv(url: str, servercert: str, user: str | None, args: Sequence[str]) -> list[str]:
    argv = ["openconnect", "--non-inter", "--servercert", servercert]
    if user is not None:
        argv += ["--user", user]
    return [*argv, *args, url]


@contextlib.contextmanager
def openconnect_tunnel(
    ns: Netns,
    url: str,
    *,
    servercert: str,
    workdir: Path,
    user: str | None = None,
    password: str | None = None,
    args: Sequence[str] = (),
    wait_for: str | None = "Configured as",
    timeout: float = 30.0,
) -> Iterator[OpenconnectClient]:
    """Run openconnect with a tun in `ns` until the block ends; waits for `wait_for` in its log."""
    script = _prepare(workdir)
    log_path = workdir / "openconnect.log"
    argv = _base_argv(url, servercert, user, ["-v", "--script", str(script), *args])
    if password is not None:
        argv.insert(1, "--passwd-on-stdin")
    env = {**os.environ, "OC_TEST_DIR": str(workdir)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ns.argv(argv), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    client = OpenconnectClient(proc, workdir, log_path)
    try:
        assert proc.stdin is not None
        if password is not None:
            proc.stdin.write(password.encode() + b"\n")
        proc.stdin.close()
        if wait_for is not None:
            client.wait_for_log(wait_for, timeout)
            if wait_for == "Configured as":
                client.script_env("connect", timeout)  # the tun is up and routed
        yield client
    finally:
        client.stop()


def authenticate(
    ns: Netns,
    url: str,
    *,
    servercert: str,
    user: str | None = None,
    password: str | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """`openconnect --authenticate`: log in, print COOKIE=/HOST=/... and exit; no tunnel."""
    argv = _base_argv(url, servercert, user, ["--authenticate", *args])
    if password is not None:
        argv.insert(1, "--passwd-on-stdin")
    return subprocess.run(
        ns.argv(argv),
        input=(password + "\n") if password is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def parse_authenticate_output(stdout: str) -> dict[str, str]:
    """COOKIE='...' HOST='...' lines as a dict (shell-quoted values unquoted)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            out[key] = shlex.split(value)[0] if value else ""
    return out
