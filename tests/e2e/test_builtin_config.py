"""README's first command: `trio-ocserv serve -f` on a machine without /etc/ocserv/ocserv.conf runs
the built-in config, makes a self-signed certificate and a first user, and openconnect connects.

Root + netns. The server runs in its own mount namespace where /etc/ocserv is an empty tmpfs, so the
Debian ocserv package installed for other tests does not hide the built-in config.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_root_tools
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import netns_pair

pytestmark = pytest.mark.e2e


def test_first_start_on_the_builtin_config(tmp_path: Path) -> None:
    require_root_tools("openconnect", "ip", "ping", "unshare")
    state = tmp_path / "state"
    script = (
        "mkdir -p /etc/ocserv && mount -t tmpfs none /etc/ocserv && "
        f"exec {sys.executable} -m trio_ocserv serve -f --log-stderr"
    )
    with netns_pair() as pair:
        log = tmp_path / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                pair.server.argv(
                    ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TRIO_OCSERV_STATE_DIR": str(state)},
            )
        try:
            testbed.wait_for_tcp(pair.server, pair.server_addr, 443, process=proc)
            text = log.read_text()
            pin = re.search(r"--servercert (pin-sha256:\S+)", text)
            password = re.search(r"the user 'vpnuser' with the password '([^']+)'", text)
            assert pin and password, text
            url = f"https://{pair.server_addr}/"
            with openconnect.openconnect_tunnel(
                pair.client,
                url,
                servercert=pin.group(1),
                workdir=tmp_path / "cli",
                user="vpnuser",
                password=password.group(1),
                wait_for="Configured as",
            ) as client:
                env = client.script_env("connect")
                assert env["INTERNAL_IP4_ADDRESS"].startswith("10.147.93.")
                log = client.wait_for_log("Established DTLS connection")
                # "connected" once a record from the server came, "established" before.
                assert re.search(r"with SSL connected and DTLS (connected|established)", log)
                ping = pair.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.147.93.1"])
                assert "2 received" in ping.stdout
            assert (state / "ocpasswd").exists() and (state / "server-cert.pem").exists()
        finally:
            testbed.stop_process(proc)
