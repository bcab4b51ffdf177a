"""The server's operation in-process (loopback, in-memory tuns, no root): the ctl socket wired in,
reload (good, broken, new listen port), the draining stop, and the metrics endpoint."""

from __future__ import annotations

import json
import socket
from io import StringIO
from pathlib import Path

import attrs
import pytest
import trio

from trio_ocserv import certgen
from trio_ocserv.config import load_config
from trio_ocserv.ctl.cli import run_command
from trio_ocserv.ctl.commands import parse_command
from trio_ocserv.server import app, systemd
from trio_ocserv.server.app import Server, build_state
from trio_ocserv.server.devices import MemoryTunProvider
from trio_ocserv.testing.client import (
    AnyConnectClient,
    AuthenticationFailed,
    CstpTunnel,
    ServerDisconnected,
    TlsClientSettings,
)
from trio_ocserv.testing.client_xml import Credentials
from trio_ocserv.testing.packets import build_echo_request, parse_icmp_echo, reply_to
from trio_ocserv.testing.testbed import free_port, write_passwd

TIMEOUT = 20
USERS = {"bob": ("bob-pass", ("staff",)), "alice": ("alice-pass", ())}


@attrs.define
class Bed:
    tmp: Path
    server: Server
    tuns: MemoryTunProvider
    config_path: Path

    @property
    def port(self) -> int:
        return self.server.listen_ports[0]

    @property
    def socket(self) -> Path:
        return self.tmp / "occtl.socket"

    def client(self, port: int | None = None) -> AnyConnectClient:
        return AnyConnectClient("127.0.0.1", port or self.port, TlsClientSettings(insecure=True))


def config_text(tmp: Path, port: int, extra: str = "") -> str:
    return (
        f'auth = "plain[passwd={tmp}/passwd]"\n'
        f"tcp-port = {port}\nlisten-host = 127.0.0.1\n"
        f"server-cert = {tmp}/cert.pem\nserver-key = {tmp}/key.pem\n"
        "ipv4-network = 192.168.77.0/24\ncookie-timeout = 300\n"
        f"use-occtl = true\nocctl-socket-file = {tmp}/occtl.socket\n"
        "max-ban-score = 20\nban-points-wrong-password = 5\n" + extra
    )


async def start(tmp: Path, nursery: trio.Nursery, extra: str = "", metrics: bool = False) -> Bed:
    ca = certgen.certificate_authority()
    certgen.issue(ca, "vpn.test", server=True, alt_names=["127.0.0.1"]).write(
        tmp / "cert.pem", tmp / "key.pem"
    )
    write_passwd(tmp / "passwd", USERS)
    path = tmp / "ocserv.conf"
    path.write_text(config_text(tmp, free_port(), extra))
    config = load_config(str(path))
    if metrics:  # the config file refuses port 0; the test wants any free port
        config = attrs.evolve(
            config, settings=attrs.evolve(config.settings, metrics_listen="127.0.0.1:0")
        )
    tuns = MemoryTunProvider()
    server: Server = await nursery.start(Server(build_state(config, tuns)).serve)
    return Bed(tmp, server, tuns, path)


async def ctl(bed: Bed, words: str, as_json: bool = False) -> tuple[str, int]:
    out = StringIO()
    code = await run_command(bed.socket, parse_command(words.split()), as_json=as_json, out=out)
    return out.getvalue(), code


async def connect(bed: Bed, user: str = "bob") -> CstpTunnel:
    vpn = bed.client()
    auth = await vpn.authenticate(Credentials(user, [USERS[user][0]]))
    return await vpn.connect_tunnel(auth.cookie)


async def ping(bed: Bed, tunnel: CstpTunnel, sequence: int = 1) -> int:
    """One echo through the tunnel and the in-memory tun; the request's size."""
    address = tunnel.config.address
    assert address is not None
    tun = await bed.tuns.configured(str(address))
    request = build_echo_request(address, "192.168.77.1", identifier=7, sequence=sequence)
    await tunnel.send_packet(request)
    reply = reply_to(parse_icmp_echo(await tun.receive_written()))
    tun.inject(reply)
    assert await tunnel.receive_packet() == reply
    return len(request)


async def test_ctl_socket_is_served_by_the_server(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery)
        assert (tmp_path / "occtl.socket").stat().st_mode & 0o777 == 0o600
        tunnel = await connect(bed)
        size = await ping(bed, tunnel)
        [user] = json.loads((await ctl(bed, "show users", as_json=True))[0])
        assert (user["Username"], user["IPv4"]) == ("bob", str(tunnel.config.address))
        assert user["RX"] == str(size)
        status = json.loads((await ctl(bed, "show status", as_json=True))[0])
        assert status["Active sessions"] == 1

        assert await ctl(bed, "disconnect user bob") == ("user 'bob' was disconnected\n", 0)
        with pytest.raises(ServerDisconnected):
            await tunnel.receive_packet()
        await tunnel.aclose()
        status = json.loads((await ctl(bed, "show status", as_json=True))[0])
        assert (status["Active sessions"], status["Sessions handled"]) == (0, 1)


async def test_ctl_stop_now_disconnects_clients_and_ends_the_server(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            bed = await start(tmp_path, nursery)
            tunnel = await connect(bed)
            assert (await ctl(bed, "stop now"))[1] == 0
            with pytest.raises(ServerDisconnected):
                await tunnel.receive_packet()
            await tunnel.aclose()
        # The nursery ended: the server stopped by itself, and removed its socket.
        assert not (tmp_path / "occtl.socket").exists()
        assert bed.server.state.tunnels == {}


async def test_reload_applies_banner_and_routes_and_keeps_the_tunnel(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery, "banner = old banner\nroute = 10.1.0.0/16\n")
        tunnel = await connect(bed)
        port = bed.port
        text = bed.config_path.read_text()
        bed.config_path.write_text(
            text.replace("old banner", "new banner").replace("10.1.0.0/16", "10.2.0.0/16")
        )
        assert await bed.server.reload()
        assert bed.port == port  # the listeners were not restarted
        await ping(bed, tunnel, 2)  # the old tunnel still works

        vpn = bed.client()
        auth = await vpn.authenticate(Credentials("alice", ["alice-pass"]))
        assert auth.banner == "new banner"
        second = await vpn.connect_tunnel(auth.cookie)
        assert [str(r) for r in second.config.split_include] == ["10.2.0.0/16"]
        await second.aclose()
        await tunnel.aclose()


async def test_broken_config_on_reload_keeps_everything(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery, "banner = kept\n")
        tunnel = await connect(bed)
        config = bed.server.state.config
        bed.config_path.write_text(bed.config_path.read_text() + "max-clients = lots\n")
        assert not await bed.server.reload()
        (tmp_path / "cert.pem").unlink()  # a valid file naming a missing certificate
        bed.config_path.write_text(config_text(tmp_path, bed.port))
        assert not await bed.server.reload()
        assert bed.server.state.config is config
        await ping(bed, tunnel)
        auth = await bed.client().authenticate(Credentials("alice", ["alice-pass"]))
        assert auth.banner == "kept"
        await tunnel.aclose()


async def test_reload_with_a_new_port_restarts_only_the_listener(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery)
        tunnel = await connect(bed)
        old_port, new_port = bed.port, free_port()
        bed.config_path.write_text(
            bed.config_path.read_text().replace(f"tcp-port = {old_port}", f"tcp-port = {new_port}")
        )
        assert await bed.server.reload()
        assert bed.server.listen_ports == [new_port]
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", old_port)
        await ping(bed, tunnel)  # the session nursery outlived the listener
        second = await connect(bed, "alice")
        await second.aclose()
        await tunnel.aclose()


async def test_stop_closes_the_listener_then_drains_then_disconnects(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            bed = await start(tmp_path, nursery, "server-drain-ms = 500\n")
            tunnel = await connect(bed)
            started = trio.current_time()
            nursery.start_soon(bed.server.stop)
            await trio.sleep(0.1)
            with pytest.raises(OSError):  # no new clients during the drain
                await trio.open_tcp_stream("127.0.0.1", bed.port)
            await ping(bed, tunnel)  # ... while the tunnel still works
            with pytest.raises(ServerDisconnected):
                await tunnel.receive_packet()
            assert trio.current_time() - started >= 0.5
            await tunnel.aclose()


async def _scrape(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    return body.decode()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics:\n{text}")


async def test_metrics_match_ctl_show_status(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery, metrics=True)
        assert bed.server.metrics_port
        with pytest.raises(AuthenticationFailed):
            await bed.client().authenticate(Credentials("bob", ["wrong"]))
        tunnel = await connect(bed)
        await ping(bed, tunnel)
        other = await connect(bed, "alice")
        await ping(bed, other)
        assert (await ctl(bed, "disconnect user alice"))[1] == 0
        await other.aclose()

        text = await _scrape(bed.server.metrics_port)
        status = json.loads((await ctl(bed, "show status", as_json=True))[0])
        assert _sample(text, 'trio_ocserv_sessions{channel="cstp"}') == status["Active sessions"]
        assert _sample(text, 'trio_ocserv_bytes_total{direction="rx"}') == status["raw_rx"] > 0
        assert _sample(text, 'trio_ocserv_bytes_total{direction="tx"}') == status["raw_tx"] > 0
        assert _sample(text, "trio_ocserv_sessions_handled_total") == status["Sessions handled"]
        assert _sample(text, 'trio_ocserv_logins_total{result="ok"}') == 2
        assert _sample(text, 'trio_ocserv_logins_total{result="failed"}') == 1
        assert status["Total authentication failures"] == 1
        assert _sample(text, 'trio_ocserv_user_bytes_total{direction="rx",user="bob"}') > 0
        await tunnel.aclose()


async def test_socket_activated_listener_is_used(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        passed = socket.create_server(("127.0.0.1", 0))
        port = passed.getsockname()[1]
        bed = await start(tmp_path, nursery)  # a server of its own, for the files
        config = attrs.evolve(bed.server.state.config, settings=attrs.evolve(
            bed.server.state.settings, occtl_socket_file=str(tmp_path / "other.socket")
        ))  # fmt: skip
        activated = systemd.ActivatedSockets(tcp=(passed,))
        server: Server = await nursery.start(
            Server(build_state(config, bed.tuns), activated=activated).serve
        )
        assert server.listen_ports == [port]
        auth = await bed.client(port).authenticate(Credentials("bob", ["bob-pass"]))
        assert auth.cookie


async def test_run_reports_readiness_and_stopping_to_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    with trio.fail_after(TIMEOUT), manager:
        async with trio.open_nursery() as nursery:
            bed = await start(tmp_path, nursery)
            config = attrs.evolve(bed.server.state.config, settings=attrs.evolve(
                bed.server.state.settings, tcp_port=0, use_occtl=False, device="opstest"
            ))  # fmt: skip
            servers: list[Server] = []
            nursery.start_soon(app.run, config, servers.append)
            message = await manager.recv(4096)
            assert message.startswith(b"READY=1\nMAINPID=")
            [server] = servers
            assert await server.reload() is True
            assert [await manager.recv(4096) for _ in range(2)] == [b"RELOADING=1", b"READY=1"]
            server.request_stop()
            assert await manager.recv(4096) == b"STOPPING=1"
            bed.server.request_stop()


async def test_ctl_reload_applies_the_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        bed = await start(tmp_path, nursery, "banner = one\n")
        bed.config_path.write_text(bed.config_path.read_text().replace("one", "two"))
        assert (await ctl(bed, "reload"))[1] == 0
        # The reply comes before the reload (it is scheduled); poll for the new settings.
        while bed.server.state.settings.banner != "two":
            await trio.sleep(0.02)
        auth = await bed.client().authenticate(Credentials("alice", ["alice-pass"]))
        assert auth.banner == "two"
