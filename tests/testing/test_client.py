"""The AnyConnect test client: sans-IO pieces against Appendix A, then the whole client against a
scripted server that answers with the captured Appendix A bytes.

Test rules: loopback only (127.0.0.1, port 0), every I/O test under `fail_after`, certificates
generated per module. Fixtures in data/ are the Appendix A messages (`a_N_head.txt` = CRLF
header block, `a_N_body.xml` = body).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import h11
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv import certgen
from trio_ocserv.protocol import auth_xml, cstp
from trio_ocserv.protocol.compress import ChannelCompressor, CompressionAlgorithm
from trio_ocserv.protocol.cstp import CstpPacketType
from trio_ocserv.server.tls import (
    ClientCertMode,
    TlsServerSettings,
    TlsStream,
    make_server_context,
)
from trio_ocserv.testing import client, packets
from trio_ocserv.testing.client import (
    AnyConnectClient,
    AuthenticationFailed,
    ConnectOptions,
    ConnectRejected,
    ServerCertificateError,
    ServerDisconnected,
    TimerAction,
    TlsClientSettings,
    TunnelClosed,
    TunnelProtocolError,
)
from trio_ocserv.testing.client_xml import Credentials

DATA = Path(__file__).parent / "data"
TIMEOUT = 10
CAPTURED_COOKIE = "AETuz/ZDDn7A3yijGR+YH19UGahKBxto7E+lOyhIF7k="
CAPTURED_SECRET = bytes.fromhex(
    "AF636A2B862A1FF56A1C9C6D061D3EB055D8B23A4530CE29AB236499C7DC13CE"
    "FFD03A2559A682D090AEAD86BB882A91"
)
STRAP_HEADERS = ("X-AnyConnect-STRAP-Verify", "X-AnyConnect-STRAP-Pubkey")


def head(name: str) -> bytes:
    return (DATA / f"{name}_head.txt").read_bytes()


def body(name: str) -> bytes:
    return (DATA / f"{name}_body.xml").read_bytes()


def header_lines(name: str) -> tuple[str, list[tuple[str, str]]]:
    lines = [line for line in head(name).decode().split("\r\n") if line]
    pairs = [tuple(line.split(": ", 1)) for line in lines[1:]]
    return lines[0], [(k, v) for k, v in pairs]


# -- CONNECT request and reply ---------------------------------------------------------------


def test_connect_headers_match_openconnect() -> None:
    _, captured = header_lines("a_9")
    headers = client.build_connect_headers(
        ConnectOptions(hostname="vm"),
        host="198.18.0.1",
        cookie=CAPTURED_COOKIE,
        hostname="ignored",
        master_secret=CAPTURED_SECRET,
    )
    # Everything openconnect sent, in its order, except the STRAP keys ocserv ignores.
    assert headers == [(k, v) for k, v in captured if k not in STRAP_HEADERS]


def test_connect_headers_without_dtls_compression_or_ipv6() -> None:
    options = ConnectOptions(
        dtls=False,
        accept_encoding=None,
        address_type="IPv4",
        full_ipv6=False,
        base_mtu=1400,
        previous_addresses=("192.168.99.106",),
    )
    headers = dict(
        client.build_connect_headers(
            options, host="h:4443", cookie="c", hostname="box", master_secret=b"", ipv6_outer=True
        )
    )
    assert headers["X-CSTP-Hostname"] == "box"
    assert headers["X-CSTP-Address-Type"] == "IPv4"
    assert headers["X-CSTP-Address"] == "192.168.99.106"
    assert headers["X-CSTP-MTU"] == str(client.requested_mtu(1400, ipv6_outer=True))
    assert not [k for k in headers if k.startswith(("X-DTLS", "X-CSTP-Accept", "X-CSTP-Full"))]


def test_requested_mtu_is_openconnects_formula() -> None:
    # 1500 -> 1390 is what openconnect sent over IPv4 (A.9).
    assert client.requested_mtu(1500) == 1390
    assert client.requested_mtu(1500, ipv6_outer=True) == 1370


def test_dtls_needs_a_48_byte_master_secret() -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        client.build_connect_headers(
            ConnectOptions(), host="h", cookie="c", hostname="x", master_secret=b"short"
        )


def test_captured_connected_reply() -> None:
    status, headers = header_lines("a_10")
    assert status == "HTTP/1.1 200 CONNECTED"
    config = client.parse_connect_response(headers)
    assert config.address == ipaddress.IPv4Address("192.168.99.50")
    assert config.netmask == ipaddress.IPv4Address("255.255.255.0")
    assert config.ipv4_network == ipaddress.IPv4Network("192.168.99.0/24")
    assert config.address_ipv6 == ipaddress.IPv6Interface(
        "fd99:4efe:7e3b:8e4f:9a7c:c09f:b76e:58ef/64"
    )
    assert config.dns == (
        ipaddress.ip_address("192.168.99.1"),
        ipaddress.ip_address("fd99:4efe:7e3b:3ea::1"),
    )
    assert config.split_include == (
        ipaddress.ip_network("192.168.100.0/24"),
        ipaddress.ip_network("fd98::/64"),
    )
    assert config.split_exclude == (ipaddress.ip_network("192.168.100.128/25"),)
    assert (config.default_domain, config.split_dns) == ("example.com", ("example.com",))
    assert not config.tunnel_all_dns
    assert (config.dpd, config.keepalive, config.idle_timeout) == (90, 32400, 1200)
    assert (config.rekey_time, config.rekey_method, config.session_timeout) == (172824, "ssl", 0)
    assert (config.mtu, config.base_mtu) == (1434, 1500)
    assert (config.server_name, config.hostname) == ("ocserv 1.1.6", "vm")
    assert config.banner == "Welcome to the spec test VPN"
    assert config.encoding is CompressionAlgorithm.OC_LZ4
    dtls = config.dtls
    assert dtls is not None
    assert dtls.psk_negotiate
    assert dtls.app_id == "c97ac42e3a6b21cb0b5bdc19ed1739014851610f8cccef14231887eda05375ae"
    assert (dtls.port, dtls.dpd, dtls.keepalive, dtls.rekey_time) == (443, 90, 32400, 172834)
    assert (dtls.rekey_method, dtls.encoding, dtls.session_id) == (
        "ssl",
        CompressionAlgorithm.OC_LZ4,
        None,
    )
    assert len(config.headers) == len(headers)


MINIMAL_REPLY = """\
X-CSTP-Version: 1
X-CSTP-Server-Name: ocserv 1.1.6
X-CSTP-DPD: 90
X-CSTP-Address: 192.168.99.106
X-CSTP-Netmask: 255.255.255.0
X-CSTP-Address: fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849
X-CSTP-Netmask: fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849/64
X-CSTP-Idle-Timeout: none
X-CSTP-Session-Timeout: 0
X-CSTP-Session-Timeout-Remaining: 0
X-CSTP-MTU: 1472"""


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (line.split(": ", 1) for line in text.splitlines())]


def test_minimal_reply_with_old_style_ipv6() -> None:
    config = client.parse_connect_response([("Date", "x"), *_pairs(MINIMAL_REPLY)])
    assert config.address == ipaddress.IPv4Address("192.168.99.106")
    assert config.address_ipv6 == ipaddress.IPv6Interface(
        "fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849/64"
    )
    assert (config.mtu, config.idle_timeout, config.keepalive) == (1472, 0, 0)
    assert config.dtls is None
    assert config.encoding is None
    assert all(name.startswith("X-") for name, _ in config.headers)


def test_legacy_dtls_reply() -> None:
    reply = _pairs(
        MINIMAL_REPLY + "\nX-DTLS-Port: 4443\nX-DTLS-Session-ID: " + "ab" * 32 + "\n"
        "X-DTLS12-CipherSuite: AES256-GCM-SHA384\nX-DTLS-MTU: 1480\nX-CSTP-Session-Timeout: 600"
    )
    config = client.parse_connect_response(reply)
    assert config.mtu == 1480  # the larger of X-CSTP-MTU and X-DTLS-MTU, like openconnect
    assert config.session_timeout == 600
    dtls = config.dtls
    assert dtls is not None
    assert (dtls.port, dtls.cipher_suite, dtls.dtls12, dtls.mtu) == (
        4443,
        "AES256-GCM-SHA384",
        True,
        1480,
    )
    assert not dtls.psk_negotiate


@pytest.mark.parametrize(
    "extra",
    [
        "X-DTLS-Port: 443\nX-DTLS-CipherSuite: PSK-NEGOTIATE",  # no App-ID
        "X-DTLS-Port: 443\nX-DTLS-App-ID: zz\nX-DTLS-CipherSuite: PSK-NEGOTIATE",
        "X-DTLS-App-ID: abcd\nX-DTLS-CipherSuite: PSK-NEGOTIATE",  # no port
        "X-DTLS-Port: 443\nX-DTLS-Session-ID: abcd\nX-DTLS-CipherSuite: AES128-SHA",
        "X-DTLS-Port: 443\nX-DTLS-App-ID: abcd",  # no suite
    ],
)
def test_incomplete_dtls_offers_leave_dtls_off(extra: str) -> None:
    assert client.parse_connect_response(_pairs(MINIMAL_REPLY + "\n" + extra)).dtls is None


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("X-CSTP-MTU: 1400", "no IP address"),
        ("X-CSTP-Address: 10.0.0.2", "no MTU"),
        ("X-CSTP-Address: 10.0.0.300\nX-CSTP-MTU: 1400", "bad address"),
        ("X-CSTP-Address: 10.0.0.2\nX-CSTP-MTU: 1400\nX-CSTP-Content-Encoding: deflate", "unknown"),
        ("X-CSTP-Address: 10.0.0.2\nX-CSTP-MTU: 1\nX-CSTP-Split-Include: 10.0.0.0/99", "route"),
    ],
)
def test_unusable_replies_are_refused(reply: str, error: str) -> None:
    with pytest.raises(TunnelProtocolError, match=error):
        client.parse_connect_response(_pairs(reply))


_header_names = st.sampled_from(
    [
        "X-CSTP-Address",
        "X-CSTP-Netmask",
        "X-CSTP-Address-IP6",
        "X-CSTP-MTU",
        "X-DTLS-MTU",
        "X-CSTP-DNS",
        "X-CSTP-Split-Include",
        "X-CSTP-Content-Encoding",
        "X-DTLS-Port",
        "X-DTLS-App-ID",
        "X-DTLS-CipherSuite",
        "X-CSTP-DPD",
        "Other",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_header_names, st.text(max_size=40)), max_size=12))
def test_arbitrary_replies_raise_only_our_error(headers: list[tuple[str, str]]) -> None:
    try:
        config = client.parse_connect_response(headers)
    except TunnelProtocolError:
        return
    assert config.mtu > 0
    assert config.address is not None or config.address_ipv6 is not None


# -- login HTTP pieces -----------------------------------------------------------------------


def test_auth_headers_follow_openconnect() -> None:
    _, captured = header_lines("a_7")
    ours = client.auth_request_headers(
        "198.18.0.1", context_cookie="AETuz/ZDDn7A3yijGR+YH19UGahKBxto7E+lOyhIF7k=", body_length=364
    )
    ignored = (*STRAP_HEADERS, "X-AnyConnect-STRAP-DH-Pubkey", "X-Pad")
    assert ours == [(k, v) for k, v in captured if k not in ignored]


def test_host_header() -> None:
    assert client.host_header("198.18.0.1", 443) == "198.18.0.1"
    assert client.host_header("vpn.test", 4443) == "vpn.test:4443"
    assert client.host_header("::1", 8443) == "[::1]:8443"


def test_set_cookie_values_of_the_capture() -> None:
    _, success = header_lines("a_8")
    cookies = client.cookies_from_set_cookie(v for k, v in success if k == "Set-Cookie")
    assert cookies["webvpn"] == CAPTURED_COOKIE
    assert cookies["webvpncontext"] == CAPTURED_COOKIE
    assert cookies["webvpnc"] is not None  # the second webvpnc header replaces the cleared one
    _, first_form = header_lines("a_2")
    cleared = client.cookies_from_set_cookie(v for k, v in first_form if k == "Set-Cookie")
    assert cleared == {"webvpncontext": None}


# -- timers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "last_received", "last_sent", "last_dpd", "expected"),
    [
        (10.0, 5.0, 5.0, None, TimerAction.NOTHING),
        (40.0, 0.0, 39.0, None, TimerAction.SEND_DPD),  # 30 s silence = dpd
        (45.0, 0.0, 40.0, 40.0, TimerAction.NOTHING),  # asked 5 s ago; repeat after dpd/2
        (55.0, 0.0, 54.0, 40.0, TimerAction.SEND_DPD),
        (60.0, 0.0, 59.0, 55.0, TimerAction.DEAD_PEER),  # 2 x dpd of silence
        (100.0, 99.0, 0.0, None, TimerAction.SEND_KEEPALIVE),
    ],
)
def test_timer_actions(
    now: float,
    last_received: float,
    last_sent: float,
    last_dpd: float | None,
    expected: TimerAction,
) -> None:
    action = client.cstp_timer_action(
        now,
        last_received=last_received,
        last_sent=last_sent,
        last_dpd_sent=last_dpd,
        dpd=30,
        keepalive=60,
    )
    assert action is expected


def test_timer_deadline_is_when_the_action_changes() -> None:
    state = {"last_received": 0.0, "last_sent": 0.0, "last_dpd_sent": None, "dpd": 30}
    deadline = client.next_timer_deadline(keepalive=60, **state)  # type: ignore[arg-type]
    assert deadline == 30.0
    assert client.cstp_timer_action(29.9, keepalive=60, **state) is TimerAction.NOTHING  # type: ignore[arg-type]
    assert client.cstp_timer_action(30.0, keepalive=60, **state) is TimerAction.SEND_DPD  # type: ignore[arg-type]
    assert (
        client.next_timer_deadline(
            last_received=0.0, last_sent=0.0, last_dpd_sent=None, dpd=0, keepalive=0
        )
        is None
    )


_times = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    now=_times,
    received_ago=_times,
    sent_ago=_times,
    dpd_ago=st.none() | _times,
    dpd=st.integers(0, 3600),
    keepalive=st.integers(0, 3600),
)
def test_timer_deadline_never_lies_in_the_past_while_idle(
    now: float,
    received_ago: float,
    sent_ago: float,
    dpd_ago: float | None,
    dpd: int,
    keepalive: int,
) -> None:
    # run_timers sleeps until the deadline whenever the action is NOTHING; a deadline at or
    # before `now` there would spin forever.
    state = {
        "last_received": now - received_ago,
        "last_sent": now - sent_ago,
        "last_dpd_sent": None if dpd_ago is None else now - dpd_ago,
        "dpd": dpd,
        "keepalive": keepalive,
    }
    if client.cstp_timer_action(now, **state) is TimerAction.NOTHING:  # type: ignore[arg-type]
        deadline = client.next_timer_deadline(**state)  # type: ignore[arg-type]
        assert deadline is None or deadline > now


# -- certificates ----------------------------------------------------------------------------


@attrs.frozen
class Pki:
    ca: certgen.CertAndKey
    server: certgen.CertAndKey
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = certgen.certificate_authority()
    server = certgen.issue(ca, "vpn.test", server=True, alt_names=["vpn.test", "127.0.0.1"])
    server.write(tmp / "server.pem", tmp / "server.key")
    (tmp / "ca.pem").write_bytes(ca.cert_pem)
    return Pki(ca, server, tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")


def test_pin_matches_certgen(pki: Pki) -> None:
    assert client.spki_pin_sha256(pki.server.cert) == certgen.pin_sha256(pki.server.cert)


def test_certificate_checks(pki: Pki) -> None:
    cert = pki.server.cert
    pin = certgen.pin_sha256(cert)
    client.check_server_certificate(cert, TlsClientSettings(pin_sha256=pin), "anything")
    bare_pin = TlsClientSettings(pin_sha256=pin.removeprefix("pin-sha256:"))
    client.check_server_certificate(cert, bare_pin, "anything")
    by_ca = TlsClientSettings(ca_file=str(pki.ca_file))
    client.check_server_certificate(cert, by_ca, "127.0.0.1")
    client.check_server_certificate(cert, by_ca, "VPN.test.")
    with pytest.raises(ServerCertificateError, match="does not name"):
        client.check_server_certificate(cert, by_ca, "other.test")
    other = certgen.issue(pki.ca, "x", server=True, alt_names=["x"]).cert
    with pytest.raises(ServerCertificateError, match="pin"):
        client.check_server_certificate(other, TlsClientSettings(pin_sha256=pin), "x")
    with pytest.raises(ServerCertificateError, match="no certificate"):
        client.check_server_certificate(None, by_ca, "x")


def test_tls_settings_need_a_trust_decision() -> None:
    with pytest.raises(ValueError, match="pin_sha256 or ca_file"):
        TlsClientSettings()
    with pytest.raises(ValueError, match="both"):
        TlsClientSettings(insecure=True, cert_file="c.pem")


# -- the whole client against a scripted server ----------------------------------------------


@attrs.define
class ScriptedServer:
    """Answers like the server of Appendix A (byte-exact replies); records what it saw."""

    password: str = "test123"
    requests: list[tuple[str, str, dict[str, str], bytes]] = attrs.field(factory=list)
    connections: int = 0
    peer_names: list[str | None] = attrs.field(factory=list)
    tunnel: Callable[[TlsStream, bytes], Awaitable[None]] | None = None

    def reply_for(self, method: str, target: str, headers: dict[str, str], data: bytes) -> bytes:
        if (method, target) == ("GET", "/logout"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n<html></html>\n"
        if method == "CONNECT":
            if headers.get("cookie") != f"webvpn={CAPTURED_COOKIE}":
                return b"HTTP/1.1 401 Cookie is not acceptable\r\n\r\n"
            return head("a_10")
        message = auth_xml.parse_config_auth(data)
        if message.kind == "init":
            return head("a_4" if message.group_select else "a_2") + body(
                "a_4" if message.group_select else "a_2"
            )
        if message.username is not None:
            return head("a_6") + body("a_6")
        if message.password == self.password:
            return head("a_8") + body("a_8")
        return b"HTTP/1.1 401 Authentication failed\r\nContent-Length: 0\r\n\r\n"

    async def handle(self, tls: TlsStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        data = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await tls.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request, data = event, b""
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                method, target = request.method.decode(), request.target.decode()
                headers = {k.decode(): v.decode() for k, v in request.headers}
                self.requests.append((method, target, headers, data))
                reply = self.reply_for(method, target, headers, data)
                await tls.send_all(reply)
                if b" 401 " in reply.split(b"\r\n", 1)[0]:
                    await tls.aclose()
                    return
                if method == "CONNECT":
                    assert self.tunnel is not None
                    await self.tunnel(tls, conn.trailing_data[0])
                    return
                # Replies are raw captured bytes, so h11 only parses: a fresh one per request.
                leftover = conn.trailing_data[0]
                conn = h11.Connection(h11.SERVER)
                if leftover:  # b"" would mean EOF to h11
                    conn.receive_data(leftover)
            else:
                return


@contextlib.asynccontextmanager
async def serving(
    pki: Pki, server: ScriptedServer, client_cert: ClientCertMode = ClientCertMode.NONE
) -> AsyncIterator[int]:
    context = make_server_context(
        TlsServerSettings(
            cert_chain_file=str(pki.cert_file),
            key_file=str(pki.key_file),
            ca_file=str(pki.ca_file),
            client_cert=client_cert,
        )
    )

    async def on_connection(stream: trio.SocketStream) -> None:
        tls = TlsStream(stream, context)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await tls.do_handshake()
            peer = tls.peer_certificate()
            server.peer_names.append(peer.subject.rfc4514_string() if peer else None)
            await server.handle(tls)
        await trio.aclose_forcefully(tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def make_client(pki: Pki, port: int, **tls: object) -> AnyConnectClient:
    settings = TlsClientSettings(**({"pin_sha256": certgen.pin_sha256(pki.server.cert)} | tls))  # type: ignore[arg-type]
    return AnyConnectClient("127.0.0.1", port, settings)


ALICE = Credentials(username="alice", secrets=["test123"], group="engineering")


async def test_login_follows_the_captured_conversation(pki: Pki) -> None:
    server = ScriptedServer()
    with trio.fail_after(TIMEOUT):
        async with serving(pki, server) as port, make_client(pki, port) as vpn:
            result = await vpn.authenticate(ALICE)
    assert result.cookie == CAPTURED_COOKIE
    assert result.banner == "Welcome to the spec test VPN"
    # init, init with group (the list did not start with engineering), username, password.
    assert [(m, t) for m, t, _, _ in server.requests] == [
        ("POST", "/"),
        ("POST", "/auth"),
        ("POST", "/auth"),
        ("POST", "/auth"),
    ]
    assert [d for *_, d in server.requests] == [
        body("a_1").replace(b"198.18.0.1", f"127.0.0.1:{port}".encode()),
        body("a_3").replace(b"198.18.0.1", f"127.0.0.1:{port}".encode()),
        body("a_5"),
        body("a_7"),
    ]
    # The context cookie from the password form came back with the password.
    assert server.requests[3][2]["cookie"] == f"webvpncontext={CAPTURED_COOKIE}"
    assert "cookie" not in server.requests[0][2]
    assert server.connections == 1  # keep-alive, as openconnect
    assert server.peer_names == [None]


async def test_client_certificate_and_logout(pki: Pki, tmp_path: Path) -> None:
    user = certgen.issue(pki.ca, "alice", server=False)
    user.write(tmp_path / "alice.pem", tmp_path / "alice.key")
    server = ScriptedServer()
    with trio.fail_after(TIMEOUT):
        async with serving(pki, server, ClientCertMode.REQUIRED) as port:
            vpn = make_client(
                pki,
                port,
                cert_file=str(tmp_path / "alice.pem"),
                key_file=str(tmp_path / "alice.key"),
            )
            reply = await vpn.logout()
            await vpn.aclose()
    assert (reply.status, reply.body) == (200, b"<html></html>\n")
    assert server.requests[0][:2] == ("GET", "/logout")
    assert server.peer_names == ["CN=alice"]


async def test_wrong_password_surfaces_the_servers_words(pki: Pki) -> None:
    server = ScriptedServer()
    wrong = Credentials(username="alice", secrets=["nope"], group="engineering")
    with trio.fail_after(TIMEOUT):
        async with serving(pki, server) as port, make_client(pki, port) as vpn:
            with pytest.raises(AuthenticationFailed) as caught:
                await vpn.authenticate(wrong)
    assert (caught.value.status, caught.value.message) == (401, "Authentication failed")


async def test_wrong_pin_and_ca_hostname(pki: Pki, tmp_path: Path) -> None:
    server = ScriptedServer()
    other = certgen.pin_sha256(certgen.issue(pki.ca, "x", server=True).cert)
    with trio.fail_after(TIMEOUT):
        async with serving(pki, server) as port:
            with pytest.raises(ServerCertificateError):
                await make_client(pki, port, pin_sha256=other).authenticate(ALICE)
            by_ca = make_client(pki, port, pin_sha256=None, ca_file=str(pki.ca_file))
            assert (await by_ca.authenticate(ALICE)).cookie == CAPTURED_COOKIE
            await by_ca.aclose()
            wrong_name = make_client(
                pki, port, pin_sha256=None, ca_file=str(pki.ca_file), server_hostname="evil.test"
            )
            with pytest.raises(ServerCertificateError, match=r"evil\.test"):
                await wrong_name.authenticate(ALICE)
            other_ca = tmp_path / "other-ca.pem"
            other_ca.write_bytes(certgen.certificate_authority().cert_pem)
            untrusted = make_client(pki, port, pin_sha256=None, ca_file=str(other_ca))
            with pytest.raises(client.TlsHandshakeError, match="certificate verify failed"):
                await untrusted.authenticate(ALICE)


async def test_rejected_cookie(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(pki, ScriptedServer()) as port, make_client(pki, port) as vpn:
            with pytest.raises(ConnectRejected) as caught:
                await vpn.connect_tunnel("bogus")
    assert (caught.value.status, caught.value.reason) == (401, "Cookie is not acceptable")


ECHO_REQUEST = packets.build_echo_request(
    "192.168.99.1", "192.168.99.50", identifier=7, sequence=1, payload=bytes(600)
)


async def test_tunnel_packets_dpd_and_server_disconnect(pki: Pki) -> None:
    seen: list[cstp.CstpFrame] = []
    lz4 = ChannelCompressor(CompressionAlgorithm.OC_LZ4)

    async def tunnel(tls: TlsStream, early: bytes) -> None:
        decoder = cstp.CstpDecoder()
        decoder.receive_data(early)

        async def frames(count: int) -> None:
            while len(seen) < count:
                if (frame := decoder.next_frame()) is not None:
                    seen.append(frame)
                    continue
                decoder.receive_data(await tls.receive_some(65536))

        # A DPD request, a keepalive and an uncompressed packet in one write, then a compressed one.
        await tls.send_all(
            cstp.encode_frame(CstpPacketType.DPD_REQUEST, b"probe")
            + cstp.encode_frame(CstpPacketType.KEEPALIVE)
            + cstp.encode_frame(CstpPacketType.DATA, ECHO_REQUEST[:40])
        )
        await tls.send_all(lz4.cstp_frame(ECHO_REQUEST))
        await frames(3)  # DPD response, the client's echo reply, the client's DPD request
        await tls.send_all(cstp.encode_frame(CstpPacketType.DPD_RESPONSE))
        await tls.send_all(cstp.encode_disconnect())
        await frames(4)  # the client's BYE

    server = ScriptedServer(tunnel=tunnel)
    with trio.fail_after(TIMEOUT):
        async with serving(pki, server) as port, make_client(pki, port) as vpn:
            auth = await vpn.authenticate(ALICE)
            tun = await vpn.connect_tunnel(auth.cookie, ConnectOptions(hostname="vm"))
            assert tun.config.address == ipaddress.IPv4Address("192.168.99.50")
            assert len(tun.export_psk()) == 32
            assert await tun.receive_packet() == ECHO_REQUEST[:40]
            assert await tun.receive_packet() == ECHO_REQUEST
            await tun.send_packet(packets.reply_to(packets.parse_icmp_echo(ECHO_REQUEST)))
            await tun.send_dpd()
            with pytest.raises(ServerDisconnected) as caught:
                await tun.receive_packet()
            assert tun.closed
            with pytest.raises(TunnelClosed):
                await tun.send_packet(ECHO_REQUEST)
    assert caught.value.reason == cstp.DisconnectReason(cstp.DisconnectKind.TEMPORARY, None, "")
    assert seen[0] == cstp.CstpFrame(CstpPacketType.DPD_RESPONSE, b"probe")
    assert seen[1].packet_type == CstpPacketType.COMPRESSED  # oc-lz4 negotiated in A.10
    reply = packets.parse_icmp_echo(lz4.decompress(seen[1].payload))
    assert (reply.is_reply, reply.payload) == (True, bytes(600))
    assert seen[2] == cstp.CstpFrame(CstpPacketType.DPD_REQUEST, b"")
    assert seen[3] == cstp.CstpFrame(CstpPacketType.DISCONNECT, b"\xb0Server request")
    assert tun.statistics() == client.CstpStatistics(1, 1, 2, 1, 1)
    connect = server.requests[-1]
    assert connect[:2] == ("CONNECT", "/CSCOSSLC/tunnel")
    assert connect[2]["x-cstp-hostname"] == "vm"
    assert len(connect[2]["x-dtls-master-secret"]) == 96


@pytest.mark.parametrize(
    ("server_bytes", "error"),
    [
        (cstp.encode_frame(0x42), TunnelProtocolError),  # openconnect quits on unknown types
        (b"XXXX\x00\x00\x00\x00", TunnelProtocolError),
        (cstp.encode_frame(CstpPacketType.TERMINATE), ServerDisconnected),
        (cstp.encode_frame(CstpPacketType.COMPRESSED, b"\xff\xff"), TunnelProtocolError),
        (b"", TunnelClosed),
    ],
)
async def test_tunnel_ends(pki: Pki, server_bytes: bytes, error: type[Exception]) -> None:
    async def tunnel(tls: TlsStream, _early: bytes) -> None:
        if server_bytes:
            await tls.send_all(server_bytes)
        await tls.aclose()

    with trio.fail_after(TIMEOUT):
        async with serving(pki, ScriptedServer(tunnel=tunnel)) as port:
            vpn = make_client(pki, port)
            tun = await vpn.connect_tunnel(CAPTURED_COOKIE)
            with pytest.raises(error):
                await tun.receive_packet()
            assert tun.closed


async def test_vpn_session_logs_in_and_says_bye(pki: Pki) -> None:
    received = bytearray()

    async def tunnel(tls: TlsStream, early: bytes) -> None:
        received.extend(early)
        while data := await tls.receive_some(65536):
            received.extend(data)

    settings = TlsClientSettings(pin_sha256=certgen.pin_sha256(pki.server.cert))
    with trio.fail_after(TIMEOUT):
        async with serving(pki, ScriptedServer(tunnel=tunnel)) as port:
            async with client.vpn_session("127.0.0.1", port, settings, ALICE) as tun:
                assert tun.config.banner == "Welcome to the spec test VPN"
            assert tun.closed
            await trio.testing.wait_all_tasks_blocked()
    assert bytes(received) == cstp.encode_disconnect("Aborted by caller")


async def test_user_disconnect_sends_bye(pki: Pki) -> None:
    received = bytearray()

    async def tunnel(tls: TlsStream, early: bytes) -> None:
        received.extend(early)
        while data := await tls.receive_some(65536):
            received.extend(data)

    with trio.fail_after(TIMEOUT):
        async with serving(pki, ScriptedServer(tunnel=tunnel)) as port:
            tun = await make_client(pki, port).connect_tunnel(CAPTURED_COOKIE)
            await tun.send_keepalive()
            await tun.disconnect()
            await tun.disconnect()  # idempotent
            await trio.testing.wait_all_tasks_blocked()
    # A.11: the BYE openconnect sends when the user quits.
    assert bytes(received) == cstp.encode_frame(CstpPacketType.KEEPALIVE) + bytes.fromhex(
        "5354460100120500b041626f727465642062792063616c6c6572"
    )


async def test_run_timers_sends_dpd_then_declares_the_peer_dead(
    pki: Pki, autojump_clock: trio.testing.MockClock
) -> None:
    # In memory: the mock clock may jump only while no real I/O is pending.
    del autojump_clock
    server_context = make_server_context(
        TlsServerSettings(cert_chain_file=str(pki.cert_file), key_file=str(pki.key_file))
    )
    client_context = client.make_client_context(TlsClientSettings(insecure=True))
    server_side, client_side = trio.testing.memory_stream_pair()
    server_tls = TlsStream(server_side, server_context)
    client_tls = TlsStream(client_side, client_context, server_side=False)
    received = bytearray()

    async def server_reads() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await server_tls.receive_some(65536):
                received.extend(data)

    _, reply = header_lines("a_10")  # dpd 90, keepalive 32400
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_reads)
            await client_tls.do_handshake()
            tun = client.CstpTunnel(client_tls, client.parse_connect_response(reply))
            started = trio.current_time()
            with pytest.raises(client.DeadPeer):
                await tun.run_timers()
            elapsed = trio.current_time() - started
    # dpd 90: requests at 90 and 135 s of silence, dead at 180 s (protocol.md 8.1).
    frames = cstp.CstpDecoder()
    frames.receive_data(received)
    assert [f.packet_type for f in frames.frames()] == [CstpPacketType.DPD_REQUEST] * 2
    assert 180 <= elapsed < 182
    assert tun.closed
