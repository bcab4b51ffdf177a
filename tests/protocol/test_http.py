"""ControlHttpConnection, the URL table and the response builders, without sockets.

Inputs are the decrypted requests of protocol.md Appendix A (tests/protocol/data/appendix_a);
expected bytes are the captured ocserv 1.1.6 responses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.http import (
    NEED_DATA,
    AuthGet,
    AuthPost,
    Connect,
    ConnectionClosed,
    ControlHttpConnection,
    HttpProtocolError,
    HttpRequest,
    HttpResponse,
    Logout,
    NotFound,
    ProfileGet,
    StaticGet,
    auth_failure_response,
    auth_form_response,
    auth_success_response,
    clear_cookie,
    connect_response,
    not_found_response,
    parse_cookie_header,
    session_cookie,
    static_response,
    status_only_response,
    stub_response,
    webvpnc_cookie_value,
)

DATA = Path(__file__).parent / "data" / "appendix_a"
SID = "AETuz/ZDDn7A3yijGR+YH19UGahKBxto7E+lOyhIF7k="
CERT_SHA1 = "4041DFA5C17794A1D55C80CF3EE35B30813BB7EB"
PROFILE_SHA1 = "5D25748E452ADC6C45124AA5C8424AD8298330EE"


def capture(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def one_request(raw: bytes) -> object:
    conn = ControlHttpConnection()
    conn.receive_data(raw)
    return conn.next_event()


# -- parsing the captured requests -------------------------------------------------------------


def test_init_request_a1() -> None:
    event = one_request(capture("a01_request"))
    assert isinstance(event, AuthPost)
    request = event.request
    assert (request.method, request.target, request.path) == ("POST", "/", "/")
    assert request.is_xml_auth
    assert request.user_agent == "Open AnyConnect VPN Agent v9.01-3"
    assert request.content_type == "application/xml; charset=utf-8"
    assert len(request.body) == 365
    assert request.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<config-auth')
    assert request.cookies == {}


def test_password_request_a7_carries_context_cookie() -> None:
    event = one_request(capture("a07_request"))
    assert isinstance(event, AuthPost)
    assert event.request.path == "/auth"
    assert event.request.cookies == {"webvpncontext": SID}
    assert b"<password>test123</password>" in event.request.body


def test_connect_request_a9() -> None:
    event = one_request(capture("a09_request"))
    assert isinstance(event, Connect)
    assert event.cookie == SID
    assert event.request.header("X-CSTP-Base-MTU") == "1500"
    assert (event.request.header("x-dtls-ciphersuite") or "").startswith("PSK-NEGOTIATE:")
    assert event.request.body == b""


def test_whole_captured_session_on_one_connection_then_tunnel_handover() -> None:
    conn = ControlHttpConnection()
    cstp_bye = bytes.fromhex("5354460100120500b041626f727465642062792063616c6c6572")
    expected = [
        ("a01_request", AuthPost, "a02_response"),
        ("a03_request", AuthPost, "a04_response"),
        ("a05_request", AuthPost, "a06_response"),
        ("a07_request", AuthPost, "a08_response"),
    ]
    for request_name, kind, response_name in expected:
        conn.receive_data(capture(request_name))
        event = conn.next_event()
        assert isinstance(event, kind)
        assert conn.next_event() is NEED_DATA
        # The flow tests pin the exact bytes; here any keep-alive answer moves the loop on.
        captured_status = capture(response_name).split(b"\r\n", 1)[0]
        sent = conn.send_response(HttpResponse(200, "OK"))
        assert sent.split(b"\r\n", 1)[0] == captured_status
        assert not conn.closed
    # CONNECT, and a CSTP frame right behind it in the same read.
    conn.receive_data(capture("a09_request") + cstp_bye)
    event = conn.next_event()
    assert isinstance(event, Connect)
    reply = conn.send_response(connect_response([("X-CSTP-Version", "1")]))
    assert reply == b"HTTP/1.1 200 CONNECTED\r\nX-CSTP-Version: 1\r\n\r\n"
    assert conn.tunnel_started
    assert conn.trailing_data == cstp_bye
    assert conn.requests_served == 5
    with pytest.raises(RuntimeError):
        conn.receive_data(b"more")


def test_byte_by_byte_feeding() -> None:
    conn = ControlHttpConnection()
    raw = capture("a05_request")
    events = []
    for i in range(len(raw)):
        conn.receive_data(raw[i : i + 1])
        event = conn.next_event()
        if event is not NEED_DATA:
            events.append(event)
    assert len(events) == 1
    assert isinstance(events[0], AuthPost)
    assert b"<username>alice</username>" in events[0].request.body


def test_legacy_get_a12() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\n"
        b"Accept: */*\r\nX-Transcend-Version: 1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
    )
    event = one_request(raw)
    assert isinstance(event, AuthGet)
    assert not event.request.is_xml_auth


# -- routing ----------------------------------------------------------------------------------


def _req(method: str, target: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpRequest:
    return HttpRequest(method, target, 1, (("host", "vpn"), *headers))


@pytest.mark.parametrize(
    ("method", "target", "kind"),
    [
        ("GET", "/", AuthGet),
        ("GET", "/auth", AuthGet),
        ("GET", "/VPN", AuthGet),
        ("GET", "/auth?x=1", AuthGet),
        ("POST", "/", AuthPost),
        ("POST", "/auth?x=1", AuthPost),
        ("POST", "/VPN", AuthPost),
        ("POST", "/engineering", NotFound),
        ("GET", "/engineering", NotFound),
        ("GET", "/index.html", NotFound),
        ("GET", "/+CSCOE+/logon.html", NotFound),
        ("GET", "/profiles/x.xml", ProfileGet),
        ("GET", "/cert.pem", StaticGet),
        ("GET", "/ca.cer", StaticGet),
        ("GET", "/+CSCOT+/translation-table?textdomain%3DAnyConnect", StaticGet),
        ("GET", "/1/binaries/update.txt", StaticGet),
        ("GET", "/1/Linux_64", StaticGet),
        ("GET", "/logout", Logout),
        ("POST", "/logout", NotFound),
        ("CONNECT", "/CSCOSSLC/tunnel", Connect),
        ("CONNECT", "/other", NotFound),
        ("HEAD", "/", NotFound),
        ("PUT", "/auth", NotFound),
    ],
)
def test_url_table(method: str, target: str, kind: type) -> None:
    from trio_ocserv.protocol.http import route

    assert isinstance(route(_req(method, target)), kind)


def test_static_get_names_the_table_entry_and_profile_gets_name_and_cookie() -> None:
    from trio_ocserv.protocol.http import route

    event = route(_req("GET", "/1/Linux_64"))
    assert isinstance(event, StaticGet)
    assert event.path == "/1/Linux_64"
    profile = route(_req("GET", "/profiles//tmp/p.xml", (("cookie", f"webvpn={SID}"),)))
    assert isinstance(profile, ProfileGet)
    assert (profile.name, profile.cookie) == ("/tmp/p.xml", SID)


def test_cookie_header_parsing() -> None:
    assert parse_cookie_header([" webvpn=abc ;webvpncontext=x=y; junk; =v; webvpn=second"]) == {
        "webvpn": "abc",
        "webvpncontext": "x=y",
    }


# -- responses ----------------------------------------------------------------------------------


def test_first_form_response_is_byte_exact_a2() -> None:
    expected = capture("a02_response")
    response = auth_form_response(body_of(expected), clear_cookie("webvpncontext"))
    assert response.to_bytes() == expected


def test_password_form_response_is_byte_exact_a6() -> None:
    expected = capture("a06_response")
    response = auth_form_response(
        body_of(expected), session_cookie("webvpncontext", SID, max_age=300)
    )
    assert response.to_bytes() == expected


def test_success_response_is_byte_exact_a8() -> None:
    expected = capture("a08_response")
    hint = webvpnc_cookie_value(
        CERT_SHA1.lower(), profile_path="/tmp/oct/profile.xml", profile_sha1_hex=PROFILE_SHA1
    )
    assert auth_success_response(body_of(expected), SID, hint).to_bytes() == expected


def test_webvpnc_without_profile() -> None:
    assert webvpnc_cookie_value(CERT_SHA1) == f"bu:/&p:t&iu:1/&sh:{CERT_SHA1}"


def test_error_responses_are_byte_exact() -> None:
    assert not_found_response().to_bytes() == (
        b"HTTP/1.1 404 Not found\r\nContent-length: 50\r\nConnection: close\r\n\r\n"
        b"<html><body><h1>404 Not Found</h1></body></html>\r\n"
    )
    assert auth_failure_response().to_bytes() == (
        b"HTTP/1.1 401 Authentication failed\r\nContent-Length: 0\r\n\r\n"
    )
    assert status_only_response(401, "Cookie is not acceptable").to_bytes() == (
        b"HTTP/1.1 401 Cookie is not acceptable\r\n\r\n"
    )
    assert status_only_response(
        503, "Service Unavailable", [("X-Reason", "Server configuration error")]
    ).to_bytes() == (
        b"HTTP/1.1 503 Service Unavailable\r\nX-Reason: Server configuration error\r\n\r\n"
    )
    assert all(r.close for r in (not_found_response(), auth_failure_response()))


def test_static_response_header_order() -> None:
    body = b"<html></html>\n"
    assert static_response("text/html", body).to_bytes() == (
        b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Type: text/html\r\n"
        b"X-Transcend-Version: 1\r\nContent-Length: 14\r\n\r\n<html></html>\n"
    )


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        (
            "/+CSCOT+/",
            "text/xml",
            b'<?xml version="1.0" encoding="UTF-8"?>\n<vpn rev="1.0">\n</vpn>\n',
        ),
        ("/1/VPNManifest.xml", "text/xml", None),
        ("/1/binaries/update.txt", "text/xml", b"0,0,0000\n"),
        ("/1/Windows", "text/html", b"<html></html>\n"),
        ("/logout", "text/html", b"<html></html>\n"),
        ("/1/binaries/vpndownloader.sh", "application/x-shellscript", b"#!/bin/sh\n\nexit 0"),
    ],
)
def test_stub_responses(path: str, content_type: str, body: bytes | None) -> None:
    response = stub_response(path)
    assert response is not None
    assert dict(response.headers)["Content-Type"] == content_type
    if body is not None:
        assert response.body == body
    assert dict(response.headers)["Content-Length"] == str(len(response.body))
    assert not response.close


def test_every_static_table_entry_except_certificates_has_a_stub() -> None:
    from trio_ocserv.protocol.http import STATIC_PATHS

    missing = [p for p in STATIC_PATHS if stub_response(p) is None]
    assert missing == ["/cert.pem", "/cert.cer", "/ca.pem", "/ca.cer"]
    manifest = stub_response("/+CSCOT+/")
    assert manifest is not None
    assert len(manifest.body) == 62


# -- the loop's rules -------------------------------------------------------------------------

GET_ROOT = b"GET / HTTP/1.1\r\nHost: vpn\r\nContent-Length: 0\r\n\r\n"


def test_no_pipelining_next_request_waits_for_the_response() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(GET_ROOT + GET_ROOT.replace(b"GET /", b"GET /auth"))
    first = conn.next_event()
    assert isinstance(first, AuthGet)
    assert first.request.target == "/"
    assert conn.next_event() is NEED_DATA
    with pytest.raises(RuntimeError, match="without a request"):
        ControlHttpConnection().send_response(not_found_response())
    conn.send_response(static_response("text/xml", b"x"))
    second = conn.next_event()
    assert isinstance(second, AuthGet)
    assert second.request.target == "/auth"


def test_http10_gets_its_version_and_a_close() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(conn.next_event(), AuthGet)
    data = conn.send_response(static_response("text/xml", b"x"))
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_close_after_error_response() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"HEAD / HTTP/1.1\r\nHost: vpn\r\n\r\n" + GET_ROOT)
    assert isinstance(conn.next_event(), NotFound)
    conn.send_response(not_found_response())
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_failed_connect_closes_instead_of_switching() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: vpn\r\n\r\n")
    event = conn.next_event()
    assert isinstance(event, Connect)
    assert event.cookie is None
    conn.send_response(status_only_response(503, "Service Unavailable"))
    assert conn.closed
    assert not conn.tunnel_started


def test_at_most_16_requests_per_connection() -> None:
    conn = ControlHttpConnection()
    for _ in range(16):
        conn.receive_data(GET_ROOT)
        assert isinstance(conn.next_event(), AuthGet)
        conn.send_response(static_response("text/xml", b"x"))
    assert conn.closed


def test_clean_eof_between_requests() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    conn.receive_data(b"ignored after close")


def test_eof_inside_a_request_is_a_protocol_error() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(capture("a01_request")[:500])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(HttpProtocolError):
        conn.next_event()


def test_oversized_head_is_refused() -> None:
    conn = ControlHttpConnection()
    with pytest.raises(HttpProtocolError):
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: vpn\r\nX-Pad: " + b"0" * 17000)
        conn.next_event()


def test_oversized_complete_head_in_one_read_is_refused() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: vpn\r\nX-Pad: " + b"0" * 17000 + b"\r\n\r\n")
    with pytest.raises(HttpProtocolError, match="head"):
        conn.next_event()
    assert conn.closed


def test_head_of_exactly_16_kib_is_accepted_one_more_byte_is_not() -> None:
    prefix = b"GET / HTTP/1.1\r\nHost: vpn\r\nX-Pad: "
    pad = 16 * 1024 - len(prefix) - len(b"\r\n\r\n")
    conn = ControlHttpConnection()
    conn.receive_data(prefix + b"0" * pad + b"\r\n\r\n")
    assert isinstance(conn.next_event(), AuthGet)
    one_over = ControlHttpConnection()
    one_over.receive_data(prefix + b"0" * (pad + 1) + b"\r\n\r\n")
    with pytest.raises(HttpProtocolError):
        one_over.next_event()


def test_oversized_body_is_refused_by_content_length() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"POST /auth HTTP/1.1\r\nHost: vpn\r\nContent-Length: 262145\r\n\r\n")
    with pytest.raises(HttpProtocolError, match="Content-Length"):
        conn.next_event()


def test_oversized_chunked_body_is_refused() -> None:
    conn = ControlHttpConnection()
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    conn.receive_data(b"POST /auth HTTP/1.1\r\nHost: vpn\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HttpProtocolError, match="body"):
        for _ in range(5):
            conn.receive_data(chunk)
            conn.next_event()


def test_body_at_the_limit_is_accepted() -> None:
    conn = ControlHttpConnection(max_body_bytes=1000)
    conn.receive_data(
        b"POST /auth HTTP/1.1\r\nHost: vpn\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    )
    event = conn.next_event()
    assert isinstance(event, AuthPost)
    assert len(event.request.body) == 1000


def test_long_target_is_refused() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: vpn\r\n\r\n")
    with pytest.raises(HttpProtocolError, match="target"):
        conn.next_event()


def test_garbage_is_a_protocol_error() -> None:
    conn = ControlHttpConnection()
    with pytest.raises(HttpProtocolError):
        conn.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        conn.next_event()


# -- fuzz: nothing but HttpProtocolError escapes -------------------------------------------------


def _drain(conn: ControlHttpConnection, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(20):
            event = conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            conn.send_response(static_response("text/xml", b"ok"))
            if conn.tunnel_started:
                return


def _fuzz(chunks: list[bytes]) -> None:
    conn = ControlHttpConnection()
    try:
        _drain(conn, chunks)
    except HttpProtocolError:
        # A peer error always ends the connection; no further requests are parsed.
        assert conn.closed
        assert isinstance(conn.next_event(), ConnectionClosed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    _fuzz(chunks)


CAPTURED = [capture(n) for n in ("a01_request", "a05_request", "a07_request", "a09_request")]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(CAPTURED),
    st.integers(min_value=0, max_value=1200),
    st.binary(max_size=40),
    st.booleans(),
)
def test_fuzz_truncated_and_mutated_captures(
    raw: bytes, cut: int, insert: bytes, eof: bool
) -> None:
    mutated = raw[:cut] + insert + raw[cut + len(insert) :]
    _fuzz([mutated, b""] if eof else [mutated])
    _fuzz([raw[:cut], b""])


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=40))
def test_fuzz_oversized_headers(filler: bytes, repeat: int) -> None:
    line = b"X-Pad: " + (filler.replace(b"\r", b"").replace(b"\n", b"") or b"0") * 500 + b"\r\n"
    _fuzz([b"POST /auth HTTP/1.1\r\nHost: vpn\r\n", line * repeat, b"Content-Length: 0\r\n\r\n"])
