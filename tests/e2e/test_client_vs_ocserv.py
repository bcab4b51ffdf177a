"""Our Python AnyConnect client (`trio_ocserv.testing.client`) against the REAL ocserv 1.1.6.

The reference server runs in a server network namespace; the client runs as
`python -m trio_ocserv.testing.client_probe` in the client namespace (it needs no tun), logs in,
CONNECTs, pings the server's tunnel address over CSTP, sends BYE and prints one JSON line.
This proves the client against ocserv, so our server's in-process tests can trust it.
Cleanup: servers are stopped by PID, namespaces deleted by `netns_pair`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing import testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.e2e

SERVER_TUN_ADDRESS = "192.168.99.1"
ENGINEERING_ROUTE = "10.77.0.0/16"
# ocserv offers the group list only with select-group lines; alice may pick engineering.
GROUPS_CONFIG = """\
select-group = engineering
select-group = sales[Sales Team]
default-select-group = DEFAULT
auto-select-group = false
compression = true
"""


@attrs.frozen
class Reference:
    pair: NetnsPair
    bed: testbed.TestBed
    log: Path

    def probe(self, args: Sequence[str], stdin: str = "", pin: str | None = None) -> Probe:
        argv = [
            sys.executable,
            "-m",
            "trio_ocserv.testing.client_probe",
            self.pair.server_addr,
            "--pin",
            pin or self.bed.servercert,
            *args,
        ]
        proc = subprocess.run(
            self.pair.client.argv(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        assert lines, f"probe printed nothing; stderr:\n{proc.stderr}"
        return Probe(proc.returncode, json.loads(lines[-1]))

    def wait_for_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{text!r} not in the ocserv log"
            time.sleep(0.05)


@attrs.frozen
class Probe:
    status: int
    result: dict[str, Any]


@pytest.fixture(scope="module")
def reference() -> Iterator[Reference]:
    require_root_tools("ocserv", "ip")
    with tempfile.TemporaryDirectory(prefix="client-vs-ocserv-") as name:
        tmp = Path(name)
        # A route only members of engineering get proves which group the server applied.
        groups = tmp / "groups"
        groups.mkdir()
        (groups / "engineering").write_text(f"route = {ENGINEERING_ROUTE}\n")
        config = GROUPS_CONFIG + f"config-per-group = {groups}/\n"
        with netns_pair() as pair:
            bed = testbed.make_testbed(tmp / "srv", pair, extra_config=config)
            log = tmp / "srv.log"
            with testbed.running_server(
                pair.server, testbed.ocserv_argv(bed), log, pair.server_addr, 443
            ):
                yield Reference(pair, bed, log)


def test_bob_logs_in_connects_and_pings(reference: Reference) -> None:
    probe = reference.probe(
        ["--user", "bob", "--passwords-on-stdin", "--ping", SERVER_TUN_ADDRESS,
         "--count", "2", "--ping-size", "1000"],
        stdin="bob-pass\n",
    )  # fmt: skip
    assert probe.status == 0, probe.result
    result = probe.result
    assert (result["ok"], result["step"]) == (True, "done")
    tunnel = result["tunnel"]
    assert tunnel["address"].startswith("192.168.99.")
    assert tunnel["netmask"] == "255.255.255.0"
    assert tunnel["dns"] == ["192.168.99.1"]
    assert tunnel["split_include"] == ["198.19.0.0/16"]  # no group: no engineering route
    assert (tunnel["dpd"], tunnel["keepalive"]) == (90, 32400)
    assert tunnel["server_name"].startswith("ocserv")
    assert tunnel["encoding"] in ("oc-lz4", "lzs")
    # DTLS was offered in PSK-NEGOTIATE mode, and the TLS exporter gives the 32-byte PSK.
    assert tunnel["dtls"]["cipher_suite"] == "PSK-NEGOTIATE"
    assert tunnel["dtls"]["port"] == 443
    assert len(tunnel["dtls"]["app_id"]) == 64
    assert result["psk_length"] == 32
    assert [p["sequence"] for p in result["pings"]] == [1, 2]
    assert all(p["from"] == SERVER_TUN_ADDRESS and p["payload_ok"] for p in result["pings"])
    # The padded echoes travelled compressed in both directions.
    stats = result["statistics"]
    assert stats["compressed_sent"] == stats["packets_sent"] == 2
    assert stats["compressed_received"] >= 2
    # Our BYE (0xB0 "Aborted by caller") is a logout to ocserv: the session is invalidated...
    reference.wait_for_log("invalidating session of user 'bob'")
    # ...so the cookie no longer opens a tunnel.
    again = reference.probe(["--cookie", result["auth"]["cookie"]])
    assert again.status == 1
    assert (again.result["step"], again.result["error"]) == ("connect", "ConnectRejected")
    assert again.result["message"] == "CONNECT rejected: 401 Cookie is not acceptable"


def test_close_without_bye_keeps_the_cookie(reference: Reference) -> None:
    first = reference.probe(["--user", "bob", "--password", "bob-pass", "--no-bye"])
    assert first.status == 0, first.result
    # Like openconnect -C after a SIGHUP'd session: the same cookie, the same address.
    second = reference.probe(["--cookie", first.result["auth"]["cookie"], "--ping",
                              SERVER_TUN_ADDRESS])  # fmt: skip
    assert second.status == 0, second.result
    assert second.result["tunnel"]["address"] == first.result["tunnel"]["address"]
    assert second.result["pings"][0]["from"] == SERVER_TUN_ADDRESS


def test_alice_selects_engineering_without_dtls(reference: Reference) -> None:
    probe = reference.probe(
        ["--user", "alice", "--group", "engineering", "--password", "alice-pass",
         "--no-dtls", "--ipv4-only", "--no-compression", "--ping", SERVER_TUN_ADDRESS,
         "--ping-size", "1000"]
    )  # fmt: skip
    assert probe.status == 0, probe.result
    tunnel = probe.result["tunnel"]
    assert tunnel["dtls"] is None
    assert tunnel["encoding"] is None
    assert ENGINEERING_ROUTE in tunnel["split_include"]
    assert tunnel["address"].startswith("192.168.99.")
    assert probe.result["pings"][0]["from"] == SERVER_TUN_ADDRESS
    assert probe.result["statistics"]["compressed_received"] == 0


def test_wrong_password_is_a_clear_failure(reference: Reference) -> None:
    probe = reference.probe(["--user", "bob", "--password", "not-bobs"])
    assert probe.status == 1
    assert (probe.result["ok"], probe.result["step"]) == (False, "auth")
    assert probe.result["error"] == "AuthenticationFailed"
    # ocserv answers a wrong password with the password form again (protocol.md 3.4).
    assert probe.result["message"] == "Login failed.\nPlease enter your password."


def test_wrong_password_three_times_gets_401(reference: Reference) -> None:
    probe = reference.probe(["--user", "bob"] + ["--password", "wrong"] * 3)
    assert probe.status == 1
    assert probe.result["error"] == "AuthenticationFailed"
    assert probe.result["message"] == "Authentication failed"


def test_group_the_user_is_not_in_is_rejected(reference: Reference) -> None:
    probe = reference.probe(["--user", "bob", "--group", "sales", "--password", "bob-pass"])
    assert probe.status == 1
    assert probe.result["error"] == "AuthenticationFailed"
    assert probe.result["message"] == "Authentication failed"


def test_wrong_pin_is_refused(reference: Reference) -> None:
    probe = reference.probe(
        ["--user", "bob", "--password", "bob-pass"], pin="pin-sha256:" + "A" * 43 + "="
    )
    assert probe.status == 1
    assert probe.result["error"] == "ServerCertificateError"
    assert "does not match the pin" in probe.result["message"]
