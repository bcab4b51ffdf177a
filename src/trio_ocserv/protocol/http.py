"""HTTP/1.1 on the control channel, sans-IO: request parsing, routing and response bytes.

This module owns the request loop of one TLS connection (protocol.md 2.3, 2.4, 3.1, 3.13, 10.1):

* h11 parses each request head and body (head at most 16 KiB, body at most 256 KiB);
* `ControlHttpConnection` hands out one typed request event at a time (no pipelining: the next
  request is not parsed until the current one has been answered), keeps the connection alive across
  auth steps, and after a successful CONNECT switches protocol, handing over the bytes that followed
  the request head (`trailing_data`) to the CSTP layer;
* response builders write the exact header lines ocserv 1.1.6 sends (order and spelling matter for
  Cisco clients, and tests pin them byte for byte).

h11 is used only to *parse*; responses are written here, because ocserv's answers (a bare
`401 Cookie is not acceptable` line, `Content-length` in the 404) are not what h11 would produce.
A fresh `h11.Connection` parses each request, fed with the previous one's unconsumed bytes.

It does no I/O and knows nothing about TLS, auth decisions or cookies' meaning.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs
import h11

__all__ = [
    "CONNECT_PATH",
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_REQUESTS_PER_CONNECTION",
    "NEED_DATA",
    "AuthGet",
    "AuthPost",
    "Connect",
    "ConnectionClosed",
    "ControlHttpConnection",
    "HttpProtocolError",
    "HttpRequest",
    "HttpResponse",
    "Logout",
    "NeedData",
    "NotFound",
    "ProfileGet",
    "RequestEvent",
    "StaticGet",
    "auth_failure_response",
    "auth_form_response",
    "auth_success_response",
    "clear_cookie",
    "connect_response",
    "not_found_response",
    "parse_cookie_header",
    "session_cookie",
    "static_response",
    "status_only_response",
    "stub_response",
    "webvpnc_cookie_value",
]

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024
# ocserv serves at most 16 requests on one TLS connection, then closes it.
MAX_REQUESTS_PER_CONNECTION = 16
# ocserv keeps at most 255 bytes of the request target; longer ones fail the request.
MAX_TARGET_BYTES = 255
CONNECT_PATH = "/CSCOSSLC/tunnel"

AUTH_PATHS = frozenset({"/", "/auth", "/VPN"})
# GET-only fixed answers (10.1). Entries ending in "/" match by prefix.
STATIC_PATHS = (
    "/cert.pem",
    "/cert.cer",
    "/ca.pem",
    "/ca.cer",
    "/+CSCOT+/",
    "/1/VPNManifest.xml",
    "/1/binaries/update.txt",
    "/1/index.html",
    "/1/Linux",
    "/1/Linux_64",
    "/1/Windows",
    "/1/Darwin_i386",
    "/1/binaries/vpndownloader.sh",
)
LOGOUT_PATH = "/logout"
PROFILE_PREFIX = "/profiles/"


class HttpProtocolError(Exception):
    """The peer broke HTTP framing or a limit; the server closes the connection."""


# -- requests ----------------------------------------------------------------------------------


def parse_cookie_header(values: Sequence[str]) -> dict[str, str]:
    """`Cookie:` pairs (`a=b; c=d`), first occurrence wins; malformed pairs are skipped."""
    cookies: dict[str, str] = {}
    for value in values:
        for pair in value.split(";"):
            name, sep, content = pair.strip().partition("=")
            if sep and name:
                cookies.setdefault(name, content.rstrip())
    return cookies


@attrs.frozen
class HttpRequest:
    """One parsed request: names lower-cased, values decoded as latin-1 (HTTP's byte-transparent
    choice), the body fully read."""

    method: str
    target: str
    http_minor: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target without its query string: routing ignores the query (2.3)."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def cookies(self) -> Mapping[str, str]:
        return parse_cookie_header(self.header_values("cookie"))

    @property
    def user_agent(self) -> str:
        return self.header("user-agent") or ""

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")

    @property
    def is_xml_auth(self) -> bool:
        """openconnect marks XML-mode requests with `X-Aggregate-Auth: 1` (3.10 omits it)."""
        return self.header("x-aggregate-auth") == "1"


@attrs.frozen
class AuthGet:
    """`GET /`, `/auth` or `/VPN`: the client asks for the first login form."""

    request: HttpRequest


@attrs.frozen
class AuthPost:
    """`POST /`, `/auth` or `/VPN`: an init, an answer to a form, or a logout document."""

    request: HttpRequest


@attrs.frozen
class Connect:
    """`CONNECT /CSCOSSLC/tunnel`; `cookie` is the raw `webvpn` cookie value, if any."""

    request: HttpRequest
    cookie: str | None


@attrs.frozen
class ProfileGet:
    """`GET /profiles/<name>`; every name serves the same configured profile (10.2)."""

    request: HttpRequest
    name: str
    cookie: str | None


@attrs.frozen
class StaticGet:
    """A fixed answer of 10.1 (certificates and Cisco stubs); `path` is the matched table entry."""

    request: HttpRequest
    path: str


@attrs.frozen
class Logout:
    """`GET /logout`: ocserv 1.1.6 answers `<html></html>` and invalidates nothing (4.3)."""

    request: HttpRequest


@attrs.frozen
class NotFound:
    """Any other method or URL: answer 404 and close."""

    request: HttpRequest


RequestEvent = AuthGet | AuthPost | Connect | ProfileGet | StaticGet | Logout | NotFound


class NeedData(enum.Enum):
    """Sentinel: feed more bytes with `receive_data` before asking again."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@attrs.frozen
class ConnectionClosed:
    """The peer closed the connection cleanly between requests."""


def _match_fixed(path: str, entry: str) -> bool:
    # ocserv's GET matching: the entry itself, or the entry followed by "/" or a sub-path.
    if entry.endswith("/"):
        return path.startswith(entry)
    return path == entry or path.startswith(entry + "/")


def route(request: HttpRequest) -> RequestEvent:
    """The URL table of 3.1 as a pure function."""
    path = request.path
    cookie = request.cookies.get("webvpn")
    if request.method == "CONNECT":
        return Connect(request, cookie) if path == CONNECT_PATH else NotFound(request)
    if request.method == "POST":
        return AuthPost(request) if path in AUTH_PATHS else NotFound(request)
    if request.method != "GET":
        return NotFound(request)
    if path == "/" or any(_match_fixed(path, entry) for entry in ("/auth", "/VPN")):
        return AuthGet(request)
    if path.startswith(PROFILE_PREFIX):
        return ProfileGet(request, path[len(PROFILE_PREFIX) :], cookie)
    if _match_fixed(path, LOGOUT_PATH):
        return Logout(request)
    for entry in STATIC_PATHS:
        if _match_fixed(path, entry):
            return StaticGet(request, entry)
    return NotFound(request)


# -- responses ---------------------------------------------------------------------------------


@attrs.frozen
class HttpResponse:
    """A response written exactly as given: header order and spelling are preserved.

    `close=True` means the server closes the connection after it (ocserv sends a TLS alert then).
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    close: bool = False

    def to_bytes(self, http_minor: int = 1) -> bytes:
        lines = [f"HTTP/1.{http_minor} {self.status} {self.reason}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + self.body


_EPOCH = "expires=Thu, 01 Jan 1970 22:00:00 GMT; path=/"
_COOKIE_FLAGS = "Secure; HttpOnly"
_XML_CONTENT_TYPE = "text/xml"


def clear_cookie(name: str) -> str:
    """A Set-Cookie value that deletes `name` (the exact ocserv spelling, 3.9)."""
    return f"{name}=; {_EPOCH}; {_COOKIE_FLAGS}"


def session_cookie(name: str, value: str, *, max_age: int | None = None) -> str:
    """`name=value[; Max-Age=N]; Secure; HttpOnly` (3.4, 3.7, 3.9)."""
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return f"{name}={value}{age}; {_COOKIE_FLAGS}"


def webvpnc_cookie_value(
    server_cert_sha1_hex: str,
    *,
    profile_path: str | None = None,
    profile_sha1_hex: str | None = None,
) -> str:
    """The Cisco-client hint cookie's value (3.7): base URL, server cert hash, profile location."""
    value = f"bu:/&p:t&iu:1/&sh:{server_cert_sha1_hex.upper()}"
    if profile_path is not None and profile_sha1_hex is not None:
        value += (
            "&lu:/+CSCOT+/translation-table?textdomain%3DAnyConnect%26type%3Dmanifest"
            f"&fu:profiles%2F{profile_path}&fh:{profile_sha1_hex.upper()}"
        )
    return value


def auth_form_response(body: bytes, context_cookie: str) -> HttpResponse:
    """A login form, headers as in A.2 and A.6; `context_cookie` is the Set-Cookie value."""
    return HttpResponse(
        200,
        "OK",
        (
            ("Set-Cookie", context_cookie),
            ("Content-Type", _XML_CONTENT_TYPE),
            ("Content-Length", str(len(body))),
            ("X-Transcend-Version", "1"),
        ),
        body,
    )


def auth_success_response(body: bytes, cookie: str, webvpnc_value: str) -> HttpResponse:
    """The `complete` document with the session cookies, headers as in A.8."""
    return HttpResponse(
        200,
        "OK",
        (
            ("Connection", "Keep-Alive"),
            ("Content-Type", _XML_CONTENT_TYPE),
            ("Content-Length", str(len(body))),
            ("X-Transcend-Version", "1"),
            ("Set-Cookie", session_cookie("webvpncontext", cookie)),
            ("Set-Cookie", session_cookie("webvpn", cookie)),
            ("Set-Cookie", clear_cookie("webvpnc")),
            ("Set-Cookie", f"webvpnc={webvpnc_value}; path=/; {_COOKIE_FLAGS}"),
        ),
        body,
    )


def auth_failure_response(reason: str = "Authentication failed") -> HttpResponse:
    """`401 <reason>` with `Content-Length: 0`, then close (3.13)."""
    return HttpResponse(401, reason, (("Content-Length", "0"),), close=True)


def status_only_response(
    status: int, reason: str, headers: Sequence[tuple[str, str]] = ()
) -> HttpResponse:
    """A bare status line (+ optional headers) and close: `401 Cookie is not acceptable`,
    `503 Service Unavailable` (3.13)."""
    return HttpResponse(status, reason, tuple(headers), close=True)


_NOT_FOUND_BODY = b"<html><body><h1>404 Not Found</h1></body></html>\r\n"


def not_found_response() -> HttpResponse:
    """ocserv's 404, byte for byte (2.4)."""
    return HttpResponse(
        404,
        "Not found",
        (("Content-length", str(len(_NOT_FOUND_BODY))), ("Connection", "close")),
        _NOT_FOUND_BODY,
        close=True,
    )


def static_response(content_type: str, body: bytes) -> HttpResponse:
    """A fixed GET answer (10.1), headers in ocserv's order."""
    return HttpResponse(
        200,
        "OK",
        (
            ("Connection", "Keep-Alive"),
            ("Content-Type", content_type),
            ("X-Transcend-Version", "1"),
            ("Content-Length", str(len(body))),
        ),
        body,
    )


_EMPTY_HTML = b"<html></html>\n"
_EMPTY_MANIFEST = b'<?xml version="1.0" encoding="UTF-8"?>\n<vpn rev="1.0">\n</vpn>\n'
# The fixed answers of 10.1 that need no server state (certificates are served by the caller).
_STUB_BODIES: dict[str, tuple[str, bytes]] = {
    "/+CSCOT+/": (_XML_CONTENT_TYPE, _EMPTY_MANIFEST),
    "/1/VPNManifest.xml": (_XML_CONTENT_TYPE, _EMPTY_MANIFEST),
    "/1/binaries/update.txt": (_XML_CONTENT_TYPE, b"0,0,0000\n"),
    "/1/index.html": ("text/html", _EMPTY_HTML),
    "/1/Linux": ("text/html", _EMPTY_HTML),
    "/1/Linux_64": ("text/html", _EMPTY_HTML),
    "/1/Windows": ("text/html", _EMPTY_HTML),
    "/1/Darwin_i386": ("text/html", _EMPTY_HTML),
    LOGOUT_PATH: ("text/html", _EMPTY_HTML),
    "/1/binaries/vpndownloader.sh": ("application/x-shellscript", b"#!/bin/sh\n\nexit 0"),
}


def stub_response(path: str) -> HttpResponse | None:
    """The Cisco-client stub answer for a `StaticGet.path` or `/logout`; None for the
    certificate paths, whose bodies come from the server's configuration."""
    stub = _STUB_BODIES.get(path)
    return static_response(*stub) if stub is not None else None


def connect_response(headers: Sequence[tuple[str, str]]) -> HttpResponse:
    """`200 CONNECTED` with the tunnel's X-CSTP-/X-DTLS- headers (5.3), no body."""
    return HttpResponse(200, "CONNECTED", tuple(headers))


# -- the request loop --------------------------------------------------------------------------


class _State(enum.Enum):
    READING = "reading"  # parsing the next request
    RESPONDING = "responding"  # a request was handed out; waiting for its response
    CLOSED = "closed"  # response sent with close, or the peer went away
    TUNNEL = "tunnel"  # CONNECT accepted; the bytes now belong to CSTP


class ControlHttpConnection:
    """The HTTP side of one control connection.

    Drive it like h11: `receive_data(bytes)` (b"" for EOF), then `next_event()` until it returns
    `NEED_DATA`; answer each request event with `send_response()`, which returns the bytes to
    write. After a 2xx answer to `Connect`, `tunnel_started` is true and `trailing_data` holds
    the bytes that arrived after the CONNECT head.
    """

    def __init__(
        self,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_requests: int = MAX_REQUESTS_PER_CONNECTION,
    ) -> None:
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._max_requests = max_requests
        self._parser = self._new_parser(b"", closed=False)
        self._state = _State.READING
        self._requests = 0
        self._current: RequestEvent | None = None
        self._pending_head: h11.Request | None = None
        self._pending_headers: tuple[tuple[str, str], ...] = ()
        self._body = bytearray()
        self._tunnel_data = b""

    def _new_parser(self, leftover: bytes, *, closed: bool) -> h11.Connection:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        if leftover:
            parser.receive_data(leftover)
        if closed:
            parser.receive_data(b"")
        return parser

    @property
    def requests_served(self) -> int:
        return self._requests

    @property
    def tunnel_started(self) -> bool:
        return self._state is _State.TUNNEL

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the CONNECT head; only meaningful once the tunnel started."""
        return self._tunnel_data

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; `b""` means the peer closed its side."""
        if self._state is _State.TUNNEL:
            raise RuntimeError("the connection switched to CSTP; feed the tunnel instead")
        if self._state is _State.CLOSED:
            return
        try:
            self._parser.receive_data(data)
        except h11.RemoteProtocolError as exc:
            self._state = _State.CLOSED
            raise HttpProtocolError(str(exc)) from None
        except RuntimeError:
            # h11 refuses data after EOF: the peer cannot send after closing its side.
            self._state = _State.CLOSED
            raise HttpProtocolError("data after end of stream") from None

    def next_event(self) -> RequestEvent | NeedData | ConnectionClosed:
        """The next complete request, `NEED_DATA`, or `ConnectionClosed`."""
        if self._state is _State.CLOSED:
            return ConnectionClosed()
        if self._state is not _State.READING:
            # No pipelining: the current request must be answered first.
            return NEED_DATA
        try:
            return self._next_event()
        except h11.RemoteProtocolError as exc:
            self._state = _State.CLOSED
            raise HttpProtocolError(str(exc)) from None
        except HttpProtocolError:
            self._state = _State.CLOSED
            raise

    def _next_event(self) -> RequestEvent | NeedData | ConnectionClosed:
        while True:
            event = self._parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return NEED_DATA
            if isinstance(event, h11.ConnectionClosed):
                if self._pending_head is not None:
                    raise HttpProtocolError("connection closed inside a request")
                self._state = _State.CLOSED
                return ConnectionClosed()
            if isinstance(event, h11.Request):
                self._start_request(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self._max_body:
                    raise HttpProtocolError(f"request body exceeds {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return self._finish_request()
            # h11 yields no other events on the server side before EndOfMessage.

    def _start_request(self, head: h11.Request) -> None:
        if len(head.target) > MAX_TARGET_BYTES:
            raise HttpProtocolError(f"request target longer than {MAX_TARGET_BYTES} bytes")
        # h11 bounds only an *incomplete* head; a complete one that arrived in one read is
        # measured here (request line + "name: value\r\n" lines + blank line).
        # One pass over raw_items(): iterating h11's Headers itself goes through the generic
        # Sequence.__iter__, an indexing call per header (a third of a request's parse time).
        raw = head.headers.raw_items()
        head_size = len(head.method) + len(head.target) + 14
        head_size += sum(len(name) + len(value) + 4 for name, value in raw)
        if head_size > self._max_head:
            raise HttpProtocolError(f"request head of {head_size} bytes exceeds {self._max_head}")
        headers = tuple(
            (name.lower().decode("latin-1"), value.decode("latin-1")) for name, value in raw
        )
        for name, value in headers:
            if name == "content-length" and int(value) > self._max_body:
                raise HttpProtocolError(f"Content-Length {int(value)} exceeds {self._max_body}")
        self._pending_head = head
        self._pending_headers = headers
        self._body = bytearray()

    def _finish_request(self) -> RequestEvent:
        head = self._pending_head
        if head is None:  # pragma: no cover - h11 always yields Request before EndOfMessage
            raise HttpProtocolError("end of message without a request")
        self._pending_head = None
        request = HttpRequest(
            method=head.method.decode("ascii", "replace"),
            target=head.target.decode("latin-1"),
            http_minor=1 if head.http_version == b"1.1" else 0,
            headers=self._pending_headers,
            body=bytes(self._body),
        )
        self._body = bytearray()
        self._requests += 1
        self._state = _State.RESPONDING
        self._current = route(request)
        return self._current

    def send_response(self, response: HttpResponse) -> bytes:
        """Bytes answering the current request; moves to the next request, the tunnel, or close."""
        if self._state is not _State.RESPONDING or self._current is None:
            raise RuntimeError("send_response() without a request to answer")
        request = self._current.request
        data = response.to_bytes(request.http_minor)
        keep_alive = (
            not response.close and request.http_minor == 1 and self._requests < self._max_requests
        )
        if isinstance(self._current, Connect) and 200 <= response.status < 300:
            leftover, _closed = self._parser.trailing_data
            self._tunnel_data = bytes(leftover)
            self._state = _State.TUNNEL
        elif keep_alive:
            leftover, closed = self._parser.trailing_data
            self._parser = self._new_parser(bytes(leftover), closed=closed)
            self._state = _State.READING
        else:
            self._state = _State.CLOSED
        self._current = None
        return data
