"""`ctl` against the real server in-process (loopback, in-memory tuns, no root).

The control socket runs beside `Server` on `make_server_view(state)`, as the lead wires it in
server/app.py; a Python AnyConnect client logs in, moves packets and gets disconnected.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import attrs
import pytest
import trio

from trio_ocserv import certgen
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.ctl.cli import run_command
from trio_ocserv.ctl.commands import parse_command
from trio_ocserv.ctl.server import CtlServer
from trio_ocserv.ctl.state_view import make_server_actions, make_server_view
from trio_ocserv.server.app import Server, build_state
from trio_ocserv.server.devices import MemoryTunProvider
from trio_ocserv.testing.client import (
    AnyConnectClient,
    ConnectRejected,
    ServerDisconnected,
    TlsClientSettings,
)
from trio_ocserv.testing.client_xml import Credentials
from trio_ocserv.testing.packets import build_echo_request, parse_icmp_echo, reply_to
from trio_ocserv.testing.testbed import write_passwd

TIMEOUT = 20
USERS = {"bob": ("bob-pass", ("staff",))}


@attrs.define
class Bed:
    server: Server
    port: int
    tuns: MemoryTunProvider
    socket: Path


async def start(tmp_path: Path, nursery: trio.Nursery, extra: str = "") -> Bed:
    ca = certgen.certificate_authority()
    certgen.issue(ca, "vpn.test", server=True, alt_names=["127.0.0.1"]).write(
        tmp_path / "cert.pem", tmp_path / "key.pem"
    )
    write_passwd(tmp_path / "passwd", USERS)
    text = (
        f'auth = "plain[passwd={tmp_path}/passwd]"\n'
        "tcp-port = 443\nlisten-host = 127.0.0.1\n"
        f"server-cert = {tmp_path}/cert.pem\nserver-key = {tmp_path}/key.pem\n"
        "ipv4-network = 192.168.77.0/24\ncookie-timeout = 300\n" + extra
    )
    config = parse_config_text(text, str(tmp_path / "ocserv.conf"))
    config = attrs.evolve(config, settings=attrs.evolve(config.settings, tcp_port=0))
    tuns = MemoryTunProvider()
    state = build_state(config, tuns)
    server: Server = await nursery.start(Server(state).serve)
    view = make_server_view(state)
    actions = make_server_actions(view, reload=lambda: None, stop=lambda: None)
    ctl = CtlServer(tmp_path / "occtl.socket", view, actions, view.events)
    await nursery.start(ctl.serve)
    return Bed(server, server.listen_ports[0], tuns, ctl.path)


async def ctl(bed: Bed, words: str, as_json: bool = False) -> tuple[str, int]:
    out = StringIO()
    code = await run_command(bed.socket, parse_command(words.split()), as_json=as_json, out=out)
    return out.getvalue(), code


def client(bed: Bed) -> AnyConnectClient:
    return AnyConnectClient("127.0.0.1", bed.port, TlsClientSettings(insecure=True))


async def test_show_users_counts_traffic_and_disconnect_ends_the_tunnel(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery)
        vpn = client(bed)
        auth = await vpn.authenticate(Credentials("bob", ["bob-pass"]))
        tunnel = await vpn.connect_tunnel(auth.cookie)
        address = tunnel.config.address
        assert address is not None
        tun = await bed.tuns.configured(str(address))

        request = build_echo_request(address, "192.168.77.1", identifier=7, sequence=1)
        await tunnel.send_packet(request)
        seen = await tun.receive_written()
        reply = reply_to(parse_icmp_echo(seen))
        tun.inject(reply)
        assert await tunnel.receive_packet() == reply

        text, code = await ctl(bed, "show users", as_json=True)
        assert code == 0
        [user] = json.loads(text)
        assert (user["Username"], user["Groupname"], user["IPv4"]) == ("bob", "staff", str(address))
        assert (user["RX"], user["TX"]) == (str(len(request)), str(len(reply)))
        assert user["Remote IP"] == "127.0.0.1"

        # The counters grow with traffic.
        await tunnel.send_packet(request)
        await tun.receive_written()
        [user] = json.loads((await ctl(bed, "show users", as_json=True))[0])
        assert user["RX"] == str(2 * len(request))

        [session] = json.loads((await ctl(bed, "show sessions all", as_json=True))[0])
        assert (session["Full session"], session["in_use"]) == (user["Full session"], 1)

        assert await ctl(bed, "disconnect user bob") == ("user 'bob' was disconnected\n", 0)
        with pytest.raises(ServerDisconnected):
            await tunnel.receive_packet()
        assert await ctl(bed, "show users", as_json=True) == ("[\n]\n", 0)
        await tunnel.aclose()


async def test_terminate_makes_a_persistent_cookie_unusable(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery, "persistent-cookies = true\n")
        vpn = client(bed)
        auth = await vpn.authenticate(Credentials("bob", ["bob-pass"]))
        tunnel = await vpn.connect_tunnel(auth.cookie)

        # A plain disconnect keeps a persistent cookie: the client may come back.
        [user] = json.loads((await ctl(bed, "show users", as_json=True))[0])
        assert (await ctl(bed, f"disconnect id {user['ID']}"))[1] == 0
        with pytest.raises(ServerDisconnected):
            await tunnel.receive_packet()
        await tunnel.aclose()
        again = await client(bed).connect_tunnel(auth.cookie)

        [user] = json.loads((await ctl(bed, "show users", as_json=True))[0])
        assert await ctl(bed, f"terminate id {user['ID']}") == (
            f"connection ID '{user['ID']}' was terminated\n", 0
        )
        with pytest.raises(ServerDisconnected):
            await again.receive_packet()
        await again.aclose()
        with pytest.raises(ConnectRejected) as rejected:
            await client(bed).connect_tunnel(auth.cookie)
        assert rejected.value.status == 401
        assert await ctl(bed, "show sessions all") == ("", 0)
