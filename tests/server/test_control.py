"""The control connection against the real server on loopback (no root): hostile input before
login never ends the server, logins through the auth registry, PROXY headers, bans, limits."""

from __future__ import annotations

import ipaddress
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import h11
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import memory_stream_pair

from trio_ocserv import certgen
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.protocol import cstp
from trio_ocserv.server.app import Server, build_state
from trio_ocserv.server.control import read_proxy_header
from trio_ocserv.server.devices import MemoryTunProvider
from trio_ocserv.testing.harness import running_server
from trio_ocserv.testing.testbed import write_passwd

USERS = {"bob": ("bob-pass", ("staff",)), "alice": ("alice-pass", ())}


@attrs.frozen
class Files:
    workdir: Path
    ca: certgen.CertAndKey

    def client_cert(self, name: str) -> tuple[str, str]:
        issued = certgen.issue(self.ca, name, server=False)
        cert, key = self.workdir / f"{name}.pem", self.workdir / f"{name}.key"
        issued.write(cert, key)
        return str(cert), str(key)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    ca = certgen.certificate_authority()
    server = certgen.issue(ca, "vpn.test", server=True, alt_names=["127.0.0.1"])
    server.write(tmp_path / "server-cert.pem", tmp_path / "server-key.pem")
    (tmp_path / "ca-cert.pem").write_bytes(ca.cert_pem)
    write_passwd(tmp_path / "passwd", USERS)
    return Files(tmp_path, ca)


def config_text(files: Files, extra: str = "", auth: str | None = None) -> str:
    w = files.workdir
    return (
        f'auth = "{auth or f"plain[passwd={w}/passwd]"}"\n'
        "tcp-port = 443\n"
        "listen-host = 127.0.0.1\n"
        f"server-cert = {w}/server-cert.pem\n"
        f"server-key = {w}/server-key.pem\n"
        f"ca-cert = {w}/ca-cert.pem\n"
        "cert-user-oid = 2.5.4.3\n"
        "ipv4-network = 192.168.77.0/24\n"
        "auth-timeout = 20\n"
        "cookie-timeout = 300\n"
        f"{extra}"
    )


@attrs.define
class Running:
    server: Server
    port: int
    files: Files


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
def start(files: Files, nursery: trio.Nursery) -> StartServer:
    async def start_server(extra: str = "", auth: str | None = None) -> Running:
        config = parse_config_text(config_text(files, extra, auth), str(files.workdir / "o.conf"))
        config = attrs.evolve(config, settings=attrs.evolve(config.settings, tcp_port=0))
        state = build_state(config, MemoryTunProvider())
        server: Server = await nursery.start(Server(state).serve)
        return Running(server, server.listen_ports[0], files)

    return start_server


def client_context(cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


async def tls_connect(
    port: int, cert: tuple[str, str] | None = None, prefix: bytes = b""
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if prefix:
        await tcp.send_all(prefix)
    stream = trio.SSLStream(tcp, client_context(cert), server_hostname="vpn.test")
    await stream.do_handshake()
    return stream


async def read_all(stream: trio.abc.Stream, limit: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or `limit` seconds pass)."""
    data = bytearray()
    with trio.move_on_after(limit):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def send_and_close(port: int, payload: bytes) -> None:
    """One fresh TLS connection that ends in the middle of a request."""
    stream = await tls_connect(port)
    await stream.send_all(payload)
    with trio.move_on_after(1):
        await stream.aclose()


async def send_raw(port: int, payload: bytes) -> bytes:
    """One fresh TLS connection: send `payload`, read the answer until the server closes."""
    stream = await tls_connect(port)
    try:
        await stream.send_all(payload)
        return await read_all(stream, 3.0)
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


@attrs.define
class HttpClient:
    """A keep-alive HTTP/1.1 client over one TLS stream (h11), carrying cookies."""

    stream: trio.abc.Stream
    conn: h11.Connection = attrs.Factory(lambda: h11.Connection(h11.CLIENT))
    cookies: dict[str, str] = attrs.Factory(dict)

    async def request(
        self, method: str, target: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[h11.Response, bytes]:
        headers = [("Host", "vpn.test"), ("Content-Length", str(len(body)))]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        if self.cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        response: h11.Response | None = None
        received = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert response is not None
        for name, value in response.headers:
            if name == b"set-cookie":
                key, _, rest = value.decode().partition("=")
                self.cookies[key] = rest.split(";")[0]
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return response, bytes(received)


async def login(
    port: int,
    user: str | None,
    secrets: tuple[str, ...] = (),
    *,
    cert: tuple[str, str] | None = None,
    group: str | None = None,
    prefix: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """Form-encoded login (openconnect --no-xmlpost style): the last status, cookies, body."""
    stream = await tls_connect(port, cert, prefix)
    client = HttpClient(stream)
    form = "application/x-www-form-urlencoded"
    try:
        first = f"username={user}" if user is not None else ""
        if group is not None:
            first += f"&group_list={group}"
        response, body = await client.request("POST", "/auth", first.encode(), form)
        for secret in secrets:
            if response.status_code != 200:
                break
            response, body = await client.request(
                "POST", "/auth", f"password={secret}".encode(), form
            )
        return response.status_code, client.cookies, body
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def assert_good_login(port: int) -> None:
    status, cookies, body = await login(port, "bob", ("bob-pass",))
    assert status == 200, body
    assert len(cookies.get("webvpn", "")) == 44
    assert b'<auth id="success">' in body


# -- hostile input ------------------------------------------------------------------------------

XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<config-auth client="vpn" type="auth-reply"><auth><username>&lol3;</username></auth>
</config-auth>"""


def _post(body: bytes, content_type: str = "text/xml", extra: bytes = b"") -> bytes:
    head = (
        b"POST /auth HTTP/1.1\r\nHost: vpn.test\r\nX-Aggregate-Auth: 1\r\n"
        b"Content-Type: " + content_type.encode() + b"\r\n" + extra
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )  # fmt: skip
    return head + body


async def test_hostile_input_never_ends_the_server(start: StartServer) -> None:
    run: Running = await start()
    rng = random.Random(1234)
    for size in (300, 5000, 70000):
        answer = await send_raw(run.port, rng.randbytes(size))
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # an incomplete request line or request, then the client leaves
    for payload in (rng.randbytes(1), rng.randbytes(17), _post(b"username=bob")[:-5]):
        await send_and_close(run.port, payload)
    assert (await send_raw(run.port, _post(XML_BOMB))).startswith(b"HTTP/1.1 401")
    huge_header = b"X-Filler: " + b"a" * 40000 + b"\r\n"
    assert (await send_raw(run.port, _post(b"", extra=huge_header))).startswith(b"HTTP/1.1 400")
    many_headers = b"".join(b"X-H%d: v\r\n" % i for i in range(3000))
    assert (await send_raw(run.port, _post(b"", extra=many_headers))).startswith(b"HTTP/1.1 400")
    big_body = _post(b"", extra=b"Content-Length: 99999999\r\n")
    assert (await send_raw(run.port, big_body)).startswith(b"HTTP/1.1 400")
    bad_xml = _post(b"<config-auth><auth><username>x</user")
    assert (await send_raw(run.port, bad_xml)).startswith(b"HTTP/1.1 401")
    # not TLS at all
    tcp = await trio.open_tcp_stream("127.0.0.1", run.port)
    await tcp.send_all(b"GET / HTTP/1.0\r\n\r\n" + rng.randbytes(200))
    assert not (await read_all(tcp, 3.0)).startswith(b"HTTP")
    await tcp.aclose()
    await assert_good_login(run.port)


# -- logins through the auth registry ------------------------------------------------------------


async def test_password_retry_then_wrong_group(start: StartServer) -> None:
    run: Running = await start("select-group = staff[Staff]\nselect-group = sales\n")
    status, _, body = await login(run.port, "bob", ("nope", "bob-pass"), group="Staff")
    assert status == 200 and b'<auth id="success">' in body
    status, cookies, _ = await login(run.port, "alice", ("alice-pass",), group="sales")
    assert status == 401 and "webvpn" not in cookies
    status, _, _ = await login(run.port, "nobody", ("bob-pass",))
    assert status == 200  # the form again: "Login failed." (unknown users look like wrong ones)


async def test_auto_select_group_offers_the_password_file_groups(start: StartServer) -> None:
    run: Running = await start("auto-select-group = true\n")
    stream = await tls_connect(run.port)
    response, body = await HttpClient(stream).request("GET", "/")
    await stream.aclose()
    assert response.status_code == 200
    assert b'<option value="staff">staff</option>' in body
    status, _, _ = await login(run.port, "bob", ("bob-pass",), group="staff")
    assert status == 200
    assert next(iter(run.server.state.sessions)).group == "staff"


async def test_certificate_only_login(start: StartServer, files: Files) -> None:
    run: Running = await start(auth="certificate")
    status, cookies, body = await login(run.port, None, cert=files.client_cert("carol"))
    assert status == 200 and b'<auth id="success">' in body and "webvpn" in cookies
    user = next(iter(run.server.state.sessions)).username
    assert user == "carol"


async def test_certificate_and_password_must_name_the_same_user(
    start: StartServer, files: Files
) -> None:
    extra = f'auth = "plain[passwd={files.workdir}/passwd]"\n'
    run: Running = await start(extra, auth="certificate")
    status, _, body = await login(run.port, "bob", ("bob-pass",), cert=files.client_cert("bob"))
    assert status == 200 and b'<auth id="success">' in body
    status, _, _ = await login(run.port, "bob", ("bob-pass",), cert=files.client_cert("alice"))
    assert status == 401
    status, _, _ = await login(run.port, "bob", ("bob-pass",))
    assert status == 401


async def test_foreign_ca_certificate_is_not_an_identity(start: StartServer) -> None:
    run: Running = await start(auth="certificate")
    other = certgen.certificate_authority("someone else")
    issued = certgen.issue(other, "carol", server=False)
    cert = (run.files.workdir / "x.pem", run.files.workdir / "x.key")
    issued.write(*cert)
    # the handshake fails (TLS 1.3: the client learns it on its first read)
    with pytest.raises(trio.BrokenResourceError):
        await login(run.port, None, cert=(str(cert[0]), str(cert[1])))


# -- PROXY protocol, bans, limits --------------------------------------------------------------

PROXY_FROM = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n"


async def test_proxy_header_gives_the_real_address(start: StartServer) -> None:
    run: Running = await start("listen-proxy-proto = true\n")
    status, _, _ = await login(run.port, "bob", ("bob-pass",), prefix=PROXY_FROM)
    assert status == 200
    session = next(iter(run.server.state.sessions))
    assert str(session.auth_address) == "203.0.113.7"
    with pytest.raises(trio.BrokenResourceError):
        await tls_connect(run.port)  # no header: dropped


async def test_wrong_passwords_ban_the_address(start: StartServer) -> None:
    extra = "listen-proxy-proto = true\nmax-ban-score = 20\nmin-reauth-time = 60\n"
    run: Running = await start(extra)
    status, _, _ = await login(run.port, "bob", ("x1", "x2"), prefix=PROXY_FROM)
    assert status == 401  # banned by the second wrong password: refused at once
    with pytest.raises(trio.BrokenResourceError):
        await tls_connect(run.port, prefix=PROXY_FROM)
    other = b"PROXY TCP4 203.0.113.8 127.0.0.1 5555 443\r\n"
    status, _, _ = await login(run.port, "bob", ("bob-pass",), prefix=other)
    assert status == 200


async def test_max_same_clients_and_max_clients(start: StartServer) -> None:
    run: Running = await start("max-same-clients = 1\nmax-clients = 2\n")
    await assert_good_login(run.port)
    status, cookies, _ = await login(run.port, "bob", ("bob-pass",))
    assert status == 401 and "webvpn" not in cookies
    status, _, _ = await login(run.port, "alice", ("alice-pass",))
    assert status == 200
    stream = await tls_connect(run.port)
    client = HttpClient(stream)
    form = "application/x-www-form-urlencoded"
    await client.request("POST", "/auth", b"username=alice", form)
    response, _ = await client.request("POST", "/auth", b"password=alice-pass", form)
    assert response.status_code == 503
    assert (b"x-reason", b"max-clients (2) reached") in response.headers
    await stream.aclose()


async def test_rate_limit_spaces_accepts(start: StartServer) -> None:
    run: Running = await start("rate-limit-ms = 300\n")
    started = trio.current_time()
    done: list[float] = []

    async def connect() -> None:
        stream = await tls_connect(run.port)
        done.append(trio.current_time() - started)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(connect)
    assert max(done) >= 0.55


# -- the PROXY reader on arbitrary bytes -----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), split=st.integers(1, 64))
async def test_read_proxy_header_never_raises(data: bytes, split: int) -> None:
    sender, receiver = memory_stream_pair()
    chunks = [data[i : i + split] for i in range(0, len(data), split)]

    async def feed() -> None:
        for chunk in chunks:
            await sender.send_all(chunk)
        await sender.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        result = await read_proxy_header(receiver, ipaddress.ip_address("127.0.0.1"))
        nursery.cancel_scope.cancel()
    assert result is None or result[0].version in (4, 6)


async def test_after_the_clients_bye_the_connection_closes_without_close_notify() -> None:
    # As with ocserv: the client has left, a close_notify would only come back as a reset.
    with trio.fail_after(20):
        async with running_server(dtls=False) as server:
            tunnel = await server.connect("bob")
            await tunnel.stream.send_all(cstp.encode_disconnect("Aborted by caller"))
            raw = tunnel.stream.transport_stream
            received = b""
            while chunk := await raw.receive_some(65536):
                received += chunk
            assert received == b""  # end of stream, no TLS record first
            await tunnel.aclose()
            assert not server.state.tunnels
