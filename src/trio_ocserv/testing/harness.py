"""An in-process trio-ocserv for tests: start the real server on loopback from an ocserv.conf
text, and get the URL, the certificate pin, the server-side tun of every client and connected
Python AnyConnect clients.

No root, no tun devices: the server runs with `MemoryTunProvider`, so a test plays the network
behind the VPN by reading what a client sent (`tun.receive_written()`) and injecting the answer
(`tun.inject()`). Ports are chosen by the kernel (TCP and UDP port 0 on 127.0.0.1).

What the harness fills in when the config text leaves it out: `auth` (plain, with a password
file of `users`), `server-cert`/`server-key`/`ca-cert` (a fresh test CA and a server certificate
for 127.0.0.1 and vpn.test), `ipv4-network`, and `udp-port` (DTLS) unless `dtls=False`. What it
always overrides: listen-host (127.0.0.1), tcp-port and udp-port (0). `{workdir}` in the text is
replaced by the directory holding those files, so a config can name its own extra files there.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import attrs
import trio
from OpenSSL import SSL

from trio_ocserv import certgen
from trio_ocserv.auth.registry import MethodFactory
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.server.app import Server, build_state
from trio_ocserv.server.devices import MemoryTunProvider
from trio_ocserv.server.state import ServerState
from trio_ocserv.server.udp import UdpEndpoint
from trio_ocserv.testing.client import (
    AnyConnectClient,
    ConnectOptions,
    CstpTunnel,
    TlsClientSettings,
    make_client_context,
)
from trio_ocserv.testing.client_xml import Credentials
from trio_ocserv.testing.packets import parse_icmp_echo, reply_to
from trio_ocserv.testing.testbed import write_passwd

__all__ = [
    "DEFAULT_HARNESS_USERS",
    "HarnessServer",
    "StartServer",
    "answer_ping",
    "running_server",
]

DEFAULT_HARNESS_USERS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "bob": ("bob-pass", ()),
    "alice": ("alice-pass", ("engineering", "sales")),
}
HOST = "127.0.0.1"
#: The `ocserv_server` fixture: `await start(config_text, *, users=..., dtls=..., methods=...)`.
StartServer = Callable[..., Awaitable["HarnessServer"]]
SERVER_NAME = "vpn.test"


@attrs.define(eq=False)
class HarnessServer:
    """A running in-process server and what a test needs to talk to it."""

    server: Server
    port: int
    udp_port: int | None
    pin: str  # `pin-sha256:...` of the server key, openconnect's --servercert
    workdir: Path
    tuns: MemoryTunProvider
    users: Mapping[str, tuple[str, tuple[str, ...]]]
    ca: certgen.CertAndKey
    host: str = HOST
    _tls: TlsClientSettings | None = None
    _context: SSL.Context | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/"

    @property
    def state(self) -> ServerState:
        return self.server.state

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca-cert.pem"

    def tls_settings(self) -> TlsClientSettings:
        return TlsClientSettings(pin_sha256=self.pin)

    def client(self, tls: TlsClientSettings | None = None) -> AnyConnectClient:
        """A new, not yet logged-in client trusting the server by its pin (or `tls`)."""
        if tls is not None:
            return AnyConnectClient(self.host, self.port, tls)
        if self._tls is None:
            self._tls = self.tls_settings()
            self._context = make_client_context(self._tls)
        return AnyConnectClient(self.host, self.port, self._tls, context=self._context)

    def credentials(self, user: str, *secrets: str, group: str | None = None) -> Credentials:
        """`user` with the given secrets, or with the harness password of `user`."""
        if not secrets and user in self.users:
            secrets = (self.users[user][0],)
        return Credentials(user, secrets, group=group)

    async def connect(
        self,
        user: str = "bob",
        *secrets: str,
        group: str | None = None,
        options: ConnectOptions | None = None,
        dtls: bool = False,
        tls: TlsClientSettings | None = None,
    ) -> CstpTunnel:
        """Log in and CONNECT (and set up DTLS with `dtls=True`); the caller closes the tunnel
        (`await tunnel.disconnect()`), or use `session()`."""
        async with self.client(tls) as vpn:
            auth = await vpn.authenticate(self.credentials(user, *secrets, group=group))
            tunnel = await vpn.connect_tunnel(auth.cookie, options)
        with contextlib.suppress(KeyError):  # a tunnel without an address has no tun to find
            await self.tuns.configured(_tun_key(tunnel))
        if dtls:
            try:
                await tunnel.start_dtls()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await tunnel.aclose()
                raise
        return tunnel

    @contextlib.asynccontextmanager
    async def session(
        self,
        user: str = "bob",
        *secrets: str,
        group: str | None = None,
        options: ConnectOptions | None = None,
        dtls: bool = False,
        tls: TlsClientSettings | None = None,
    ) -> AsyncIterator[CstpTunnel]:
        """`connect()`, yield the tunnel, send BYE (DISCONNECT) on the way out."""
        tunnel = await self.connect(
            user, *secrets, group=group, options=options, dtls=dtls, tls=tls
        )
        try:
            yield tunnel
        finally:
            with trio.CancelScope(shield=True):
                await tunnel.disconnect()

    def tun_for(self, tunnel_or_address: CstpTunnel | str) -> MemoryTun:
        """The server-side tun of a client, by its tunnel or its VPN address."""
        if isinstance(tunnel_or_address, CstpTunnel):
            return self.tuns.by_peer[_tun_key(tunnel_or_address)]
        return self.tuns.by_peer[tunnel_or_address]

    async def stop(self) -> None:
        await self.server.stop()


def _tun_key(tunnel: CstpTunnel) -> str:
    config = tunnel.config
    if config.address is not None:
        return str(config.address)
    if config.address_ipv6 is not None:
        return str(config.address_ipv6.ip)
    raise KeyError("the tunnel has no address")


async def answer_ping(tun: MemoryTun) -> bytes:
    """Play the host behind the VPN: take the next packet the client sent (an ICMP echo
    request) from the server-side tun and inject the echo reply. Returns the request."""
    request = await tun.receive_written()
    tun.inject(reply_to(parse_icmp_echo(request)))
    return request


def _has_key(text: str, key: str) -> bool:
    return re.search(rf"^\s*{re.escape(key)}\s*=", text, re.MULTILINE) is not None


def _complete_config(text: str, workdir: Path, *, dtls: bool) -> str:
    defaults = {
        "auth": f'"plain[passwd={workdir}/passwd]"',
        "tcp-port": "443",
        "server-cert": f"{workdir}/server-cert.pem",
        "server-key": f"{workdir}/server-key.pem",
        "ca-cert": f"{workdir}/ca-cert.pem",
        "ipv4-network": "192.168.77.0/24",
        "socket-file": f"{workdir}/ocserv.sock",
    }
    if dtls:
        defaults["udp-port"] = "443"
    # enable-auth / auth both configure authentication; only add ours when neither is there.
    if _has_key(text, "enable-auth"):
        defaults.pop("auth")
    head = "".join(
        f"{key} = {value}\n" for key, value in defaults.items() if not _has_key(text, key)
    )
    return head + text.replace("{workdir}", str(workdir))


def _write_files(
    workdir: Path, users: Mapping[str, tuple[str, tuple[str, ...]]]
) -> tuple[certgen.CertAndKey, str]:
    ca = certgen.certificate_authority()
    server = certgen.issue(ca, SERVER_NAME, server=True, alt_names=[SERVER_NAME, HOST])
    server.write(workdir / "server-cert.pem", workdir / "server-key.pem")
    (workdir / "ca-cert.pem").write_bytes(ca.cert_pem)
    write_passwd(workdir / "passwd", users)
    return ca, certgen.pin_sha256(server.cert)


@contextlib.asynccontextmanager
async def running_server(
    config_text: str = "",
    *,
    workdir: Path | None = None,
    users: Mapping[str, tuple[str, tuple[str, ...]]] = DEFAULT_HARNESS_USERS,
    dtls: bool = True,
    methods: MethodFactory | None = None,
) -> AsyncIterator[HarnessServer]:
    """Run trio-ocserv in this process from `config_text` (an ocserv.conf; see the module
    docstring for what is filled in) until the block ends; tunnels are told to go on exit.

    `users` (name -> (password, groups)) fill the default password file; `methods` replaces
    how authentication methods are built (e.g. a fake PAM backend for your own tests).
    """
    with contextlib.ExitStack() as files:
        if workdir is None:
            workdir = Path(files.enter_context(tempfile.TemporaryDirectory(prefix="ocserv-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ca, pin = _write_files(workdir, users)
        text = _complete_config(config_text, workdir, dtls=dtls)
        (workdir / "ocserv.conf").write_text(text)
        config = parse_config_text(text, str(workdir / "ocserv.conf"))
        settings = attrs.evolve(
            config.settings,
            listen_host=(HOST,),
            udp_listen_host=(),
            tcp_port=0,
            udp_port=0 if config.settings.udp_port is not None else None,
        )
        config = attrs.evolve(config, settings=settings)
        tuns = MemoryTunProvider()
        state = build_state(config, tuns, methods=methods)
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(Server(state).serve)
            udp = state.udp
            assert udp is None or isinstance(udp, UdpEndpoint)
            harness = HarnessServer(
                server=server,
                port=server.listen_ports[0],
                udp_port=udp.port if udp is not None else None,
                pin=pin,
                workdir=workdir,
                tuns=tuns,
                users=users,
                ca=ca,
            )
            try:
                yield harness
            finally:
                with trio.CancelScope(shield=True):
                    await server.stop()
                nursery.cancel_scope.cancel()
