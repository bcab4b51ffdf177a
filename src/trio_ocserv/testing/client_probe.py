"""`python -m trio_ocserv.testing.client_probe`: log in, CONNECT, ping over CSTP, disconnect, and
print one JSON object describing what happened.

End-to-end tests run it inside a client network namespace (the Python client needs no tun), and
it is a quick manual check of a server. Exit status 0 when every step passed, 1 otherwise; the
JSON always says which step failed and the server's words. Secrets come from `--password`
(repeatable) or, one per line, from stdin with `--passwords-on-stdin`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from trio_ocserv.testing import packets
from trio_ocserv.testing.client import (
    AnyConnectClient,
    ClientError,
    ConnectOptions,
    CstpTunnel,
    TlsClientSettings,
    TunnelConfig,
)
from trio_ocserv.testing.client_xml import Credentials

_PING_IDENTIFIER = 0x7C0C


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trio_ocserv.testing.client_probe")
    parser.add_argument("host")
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--pin", help="server key pin, pin-sha256:<base64>")
    parser.add_argument("--ca-file")
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    parser.add_argument("--user")
    parser.add_argument("--group", help="like openconnect --authgroup")
    parser.add_argument("--password", action="append", default=[])
    parser.add_argument("--passwords-on-stdin", action="store_true")
    parser.add_argument("--cookie", help="skip the login and CONNECT with this webvpn cookie")
    parser.add_argument(
        "--no-bye", action="store_true", help="close without BYE, keeping the cookie valid"
    )
    parser.add_argument("--no-dtls", action="store_true", help="leave out the X-DTLS headers")
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--ipv4-only", action="store_true", help="like --disable-ipv6")
    parser.add_argument("--ping", help="tunnel address to send ICMP echo requests to")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument(
        "--ping-size", type=int, default=0, help="pad echo payloads to this many bytes"
    )
    parser.add_argument("--timeout", type=float, default=20.0)
    return parser


def _tunnel_summary(config: TunnelConfig) -> dict[str, Any]:
    dtls = config.dtls
    return {
        "address": str(config.address) if config.address else None,
        "netmask": str(config.netmask) if config.netmask else None,
        "address_ipv6": str(config.address_ipv6) if config.address_ipv6 else None,
        "mtu": config.mtu,
        "dns": [str(d) for d in config.dns],
        "split_include": [str(n) for n in config.split_include],
        "split_exclude": [str(n) for n in config.split_exclude],
        "dpd": config.dpd,
        "keepalive": config.keepalive,
        "server_name": config.server_name,
        "banner": config.banner,
        "encoding": config.encoding.value if config.encoding else None,
        "dtls": None
        if dtls is None
        else {
            "port": dtls.port,
            "cipher_suite": dtls.cipher_suite,
            "app_id": dtls.app_id,
            "session_id": dtls.session_id,
        },
    }


async def ping(tunnel: CstpTunnel, target: str, sequence: int, size: int = 0) -> dict[str, Any]:
    """Send one ICMP echo request from the tunnel address to `target` and wait for its reply
    (other packets are skipped); returns sequence, sender, payload check and round-trip time."""
    source = tunnel.config.address
    if source is None:
        raise ClientError("no IPv4 address to ping from")
    payload = f"trio-ocserv probe {sequence}".encode()
    # Zero padding compresses well, so large pings exercise COMPRESSED frames both ways.
    payload += bytes(max(0, size - len(payload)))
    await tunnel.send_packet(
        packets.build_echo_request(
            source, target, identifier=_PING_IDENTIFIER, sequence=sequence, payload=payload
        )
    )
    started = trio.current_time()
    while True:
        packet = await tunnel.receive_packet()
        try:
            echo = packets.parse_icmp_echo(packet)
        except packets.PacketError:
            continue  # other traffic the server routes to us
        if (
            echo.is_reply
            and echo.identifier == _PING_IDENTIFIER
            and echo.sequence == sequence
            and echo.source == ipaddress.IPv4Address(target)
        ):
            return {
                "sequence": sequence,
                "from": str(echo.source),
                "payload_ok": echo.payload == payload,
                "rtt_ms": round((trio.current_time() - started) * 1000, 3),
            }


async def probe(args: argparse.Namespace, secrets: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False, "step": "tls"}
    tls = TlsClientSettings(
        pin_sha256=args.pin,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    credentials = Credentials(username=args.user, secrets=tuple(secrets), group=args.group)
    options = ConnectOptions(
        dtls=not args.no_dtls,
        accept_encoding=None if args.no_compression else ConnectOptions().accept_encoding,
        address_type="IPv4" if args.ipv4_only else "IPv6,IPv4",
        full_ipv6=not args.ipv4_only,
    )
    try:
        with trio.fail_after(args.timeout):
            async with AnyConnectClient(args.host, args.port, tls) as client:
                cookie = args.cookie
                if cookie is None:
                    result["step"] = "auth"
                    auth = await client.authenticate(credentials)
                    cookie = auth.cookie
                    # A test tool: callers reuse the cookie to check reconnect and logout.
                    result["auth"] = {"banner": auth.banner, "cookie": cookie}
                result["step"] = "connect"
                tunnel = await client.connect_tunnel(cookie, options)
            result["tunnel"] = _tunnel_summary(tunnel.config)
            result["psk_length"] = len(tunnel.export_psk())
            try:
                result["pings"] = []
                if args.ping:
                    result["step"] = "ping"
                    for sequence in range(1, args.count + 1):
                        result["pings"].append(
                            await ping(tunnel, args.ping, sequence, args.ping_size)
                        )
            finally:
                result["statistics"] = attrs.asdict(tunnel.statistics())
                if args.no_bye:
                    await tunnel.aclose()
                else:
                    await tunnel.disconnect()
            result["step"] = "done"
            result["ok"] = True
    except (ClientError, OSError, trio.TooSlowError) as exc:
        result["error"] = type(exc).__name__
        result["message"] = getattr(exc, "message", None) or str(exc)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    secrets = list(args.password)
    if args.passwords_on_stdin:
        secrets += [line.rstrip("\r\n") for line in sys.stdin]
    result = trio.run(probe, args, secrets)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
