"""Interop: our `TlsStream` server against `gnutls-cli --keymatexport` (GnuTLS is what openconnect
9.01 uses), pinning the RFC 5705 / RFC 8446 exporter that PSK-NEGOTIATE keys DTLS with
(protocol.md 7.3.1): the value gnutls-cli prints must equal ours, for TLS 1.2 and TLS 1.3.

Rules: loopback only, port 0, a hard `fail_after`, gnutls-cli killed by PID in `finally`.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

from tests.conftest import require_root_tools
from trio_ocserv import certgen
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.server.tls import TlsServerSettings, TlsStream, TlsVersion, make_server_context
from trio_ocserv.server.tls_config import ServerTlsContexts

pytestmark = pytest.mark.e2e

LABEL = "EXPORTER-openconnect-psk"
TIMEOUT = 20


def _pki(base: Path) -> tuple[Path, Path, Path]:
    ca = certgen.certificate_authority()
    (base / "ca.pem").write_bytes(ca.cert_pem)
    server = certgen.issue(ca, "localhost", server=True, alt_names=["localhost", "127.0.0.1"])
    server.write(base / "server.pem", base / "server.key")
    return base / "ca.pem", base / "server.pem", base / "server.key"


def _plain_context(version: TlsVersion) -> Callable[[Path, Path], SSL.Context]:
    def build(cert: Path, key: Path) -> SSL.Context:
        return make_server_context(
            TlsServerSettings(str(cert), str(key), min_version=version, max_version=version)
        )

    return build


def _config_context(priorities: str | None) -> Callable[[Path, Path], SSL.Context]:
    """A context built the way the server builds it: from ocserv.conf text via tls_config."""

    def build(cert: Path, key: Path) -> SSL.Context:
        text = f'auth = "plain[passwd=/dev/null]"\nserver-cert = {cert}\nserver-key = {key}\n'
        if priorities is not None:
            text += f'tls-priorities = "{priorities}"\n'
        return ServerTlsContexts.build(parse_config_text(text, str(cert.parent / "c.conf"))).default

    return build


@pytest.mark.parametrize(
    ("make_context", "version"),
    [
        (_plain_context(TlsVersion.TLS1_2), "TLS1.2"),
        (_plain_context(TlsVersion.TLS1_3), "TLS1.3"),
        (_config_context(None), "TLS1.3"),
        (_config_context("NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.3"), "TLS1.2"),
    ],
    ids=["tls1.2", "tls1.3", "ocserv-default-priorities", "priorities-without-tls1.3"],
)
async def test_exporter_matches_gnutls(
    tmp_path: Path, make_context: Callable[[Path, Path], SSL.Context], version: str
) -> None:
    require_root_tools("gnutls-cli")
    ca, cert, key = _pki(tmp_path)
    context = make_context(cert, key)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [
            "gnutls-cli", "--x509cafile", str(ca),
            f"--keymatexport={LABEL}", "--keymatexportsize=32",
            "-p", str(port), "127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            async with listeners[0]:
                server = TlsStream(await listeners[0].accept(), context)
                await server.do_handshake()
                ours = server.export_keying_material(LABEL.encode(), 32)
                # gnutls-cli prints the session summary, then echoes what we send.
                await server.send_all(b"marker-from-server\n")
                assert process.stdout is not None and process.stdin is not None
                output = b""
                while b"marker-from-server" not in output:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"gnutls-cli ended early:\n{output.decode(errors='replace')}"
                    output += chunk
                # And the other direction: gnutls-cli sends its stdin as application data.
                await process.stdin.send_all(b"ping\n")
                assert await server.receive_some() == b"ping\n"
                await server.aclose()
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()
    text = output.decode(errors="replace")
    exported = re.search(r"^- Key material: ([0-9a-f]+)$", text, re.MULTILINE)
    assert exported is not None, text
    assert exported.group(1) == ours.hex()
    assert f"({version}-" in text  # the "- Description: (TLS1.3-X.509)-..." line
    assert server.tls_version == version.replace("TLS", "TLSv")
