"""A VPN test bed: certificates, a password file and an ocserv.conf that both trio-ocserv and the
reference ocserv accept, plus starting either server inside a network namespace.

End-to-end tests and benchmarks use this so both servers run on byte-identical configs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
from passlib.hash import sha512_crypt

from trio_ocserv import certgen
from trio_ocserv.testing.netns import Netns, NetnsPair

DEFAULT_USERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice-pass", ("engineering", "sales")),
    "bob": ("bob-pass", ()),
}


@attrs.frozen
class TestBed:
    """Files of one test bed; `config_path` is the ocserv.conf both servers read."""

    workdir: Path
    config_path: Path
    servercert: str  # openconnect's --servercert pin
    users: Mapping[str, tuple[str, tuple[str, ...]]]
    url: str
    ca: certgen.CertAndKey


def write_passwd(path: Path, users: Mapping[str, tuple[str, tuple[str, ...]]]) -> None:
    # Few rounds: the file is for tests, and the hash cost is not what they measure.
    lines = [
        f"{user}:{','.join(groups) or '*'}:{sha512_crypt.using(rounds=5000).hash(password)}\n"
        for user, (password, groups) in users.items()
    ]
    path.write_text("".join(lines))
    path.chmod(0o600)


def make_testbed(
    workdir: Path,
    pair: NetnsPair,
    *,
    port: int = 443,
    extra_config: str = "",
    users: Mapping[str, tuple[str, tuple[str, ...]]] = DEFAULT_USERS,
    pool: str = "192.168.99.0/24",
    auth: Sequence[str] | None = None,
) -> TestBed:
    """`auth`: the values of the `auth` lines (default: plain with the test bed's passwd file);
    `{workdir}` in them names the test bed's directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = certgen.certificate_authority()
    server = certgen.issue(ca, "vpn.test", server=True, alt_names=["vpn.test", pair.server_addr])
    server.write(workdir / "server-cert.pem", workdir / "server-key.pem")
    (workdir / "ca-cert.pem").write_bytes(ca.cert_pem)
    write_passwd(workdir / "passwd", users)
    auth_values = auth if auth is not None else ["plain[passwd={workdir}/passwd]"]
    auth_lines = "".join(f'auth = "{value.format(workdir=workdir)}"\n' for value in auth_values)
    config = f"""\
{auth_lines}tcp-port = {port}
udp-port = {port}
listen-host = {pair.server_addr}
run-as-user = root
run-as-group = root
socket-file = {workdir}/ocserv.sock
occtl-socket-file = {workdir}/occtl.sock
pid-file = {workdir}/server.pid
server-cert = {workdir}/server-cert.pem
server-key = {workdir}/server-key.pem
ca-cert = {workdir}/ca-cert.pem
isolate-workers = false
max-clients = 0
max-same-clients = 0
keepalive = 32400
dpd = 90
mobile-dpd = 1800
switch-to-tcp-timeout = 25
try-mtu-discovery = false
cert-user-oid = 0.9.2342.19200300.100.1.1
tls-priorities = "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1"
auth-timeout = 240
min-reauth-time = 1
max-ban-score = 0
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-occtl = true
device = vpns
predictable-ips = true
ipv4-network = {pool}
dns = 192.168.99.1
route = 198.19.0.0/16
ping-leases = false
cisco-client-compat = true
dtls-legacy = true
{extra_config}"""
    config_path = workdir / "ocserv.conf"
    config_path.write_text(config)
    return TestBed(
        workdir=workdir,
        config_path=config_path,
        servercert=certgen.pin_sha256(server.cert),
        users=users,
        url=f"https://{pair.server_addr}:{port}/",
        ca=ca,
    )


def wait_for_tcp(
    ns: Netns,
    host: str,
    port: int,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until something listens on host:port inside `ns` (a connect from a netns helper);
    give up early when `process`, the would-be listener, has exited."""
    deadline = time.monotonic() + timeout
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(0.2)\n"
        f"sys.exit(s.connect_ex(({host!r},{port})))\n"
    )
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with status {process.returncode}")
        if subprocess.run(ns.argv([sys.executable, "-c", probe]), check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} in {ns.name} after {timeout}s")


@contextlib.contextmanager
def running_server(
    ns: Netns, argv: list[str], log_path: Path, host: str, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process in `ns`, wait for its TCP port, stop it by PID on exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(ns.argv(argv), stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_tcp(ns, host, port, process=proc)
        except TimeoutError as exc:
            log_text = log_path.read_text(errors="replace")
            raise TimeoutError(f"{exc}; server log:\n{log_text}") from None
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; by PID only."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def ocserv_argv(bed: TestBed) -> list[str]:
    return ["ocserv", "-f", "-d", "1", "-c", str(bed.config_path)]


def trio_ocserv_argv(bed: TestBed) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trio_ocserv",
        "serve",
        "-f",
        "--log-stderr",
        "-c",
        str(bed.config_path),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_listen(ns: Netns, port: int, timeout: float = 10.0) -> None:
    """Poll `ss` inside `ns` until a TCP socket listens on `port` (no probe connection: some
    servers, like `iperf3 -s -1`, would count it as their one client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {ns.name}")


@contextlib.contextmanager
def iperf3_server(ns: Netns, bind: str | None = None) -> Iterator[None]:
    argv = ["iperf3", "-s"] + (["-B", bind] if bind else [])
    proc = subprocess.Popen(ns.argv(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_listen(ns, 5201)
        yield
    finally:
        stop_process(proc)


def iperf3_run(ns: Netns, target: str, seconds: float, reverse: bool) -> tuple[float, float]:
    """One iperf3 TCP run from `ns` to `target`: (Mbit/s received, bytes received)."""
    argv = ["iperf3", "-c", target, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    result = json.loads(ns.run(argv, timeout=seconds + 30).stdout)
    received = result["end"]["sum_received"]
    return received["bits_per_second"] / 1e6, float(received["bytes"])
