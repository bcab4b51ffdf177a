"""Playbook tests for the login state machine: exact request/response sequences, no sockets.

The Appendix A session is replayed through `ControlHttpConnection` and `AuthFlow`, and every
response must equal the bytes ocserv 1.1.6 sent.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.auth.flow import (
    OTP_STEP,
    PASSWORD_STEP,
    AuthFlow,
    AuthFlowSettings,
    CheckCredentials,
    CredentialOutcome,
    CredentialResult,
    LoginRequest,
    LoginSucceeded,
    Respond,
    SelectableGroup,
    login_request_from_http,
)
from trio_ocserv.protocol.auth_xml import ClientAuthMessage, ProfileManifest, parse_config_auth
from trio_ocserv.protocol.http import AuthGet, AuthPost, ControlHttpConnection

DATA = Path(__file__).parents[1] / "protocol" / "data" / "appendix_a"
SID = "AETuz/ZDDn7A3yijGR+YH19UGahKBxto7E+lOyhIF7k="
CERT_SHA1 = "4041DFA5C17794A1D55C80CF3EE35B30813BB7EB"
PROFILE_SHA1 = "5D25748E452ADC6C45124AA5C8424AD8298330EE"

APPENDIX_SETTINGS = AuthFlowSettings(
    steps=(PASSWORD_STEP,),
    select_groups=(SelectableGroup("engineering"), SelectableGroup("sales", "Sales Team")),
    default_select_group="DEFAULT",
    pre_login_banner="Authorized users only",
    banner="Welcome to the spec test VPN",
    cookie_timeout=300,
    server_cert_sha1_hex=CERT_SHA1,
    profile=ProfileManifest("/tmp/oct/profile.xml", PROFILE_SHA1),
)

Authenticator = Callable[[CheckCredentials], CredentialResult]


def capture(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def fixed_tokens(*sids: str) -> Callable[[int], bytes]:
    queue = [base64.b64decode(s) for s in sids]

    def source(size: int) -> bytes:
        token = queue.pop(0) if queue else bytes(range(1, size + 1))
        assert len(token) == size
        return token

    return source


def password_is(expected: str, log: list[CheckCredentials] | None = None) -> Authenticator:
    def check(request: CheckCredentials) -> CredentialResult:
        if log is not None:
            log.append(request)
        ok = request.secret == expected
        return CredentialResult(CredentialOutcome.ACCEPTED if ok else CredentialOutcome.REJECTED)

    return check


@attrs.define
class Server:
    """The few lines of glue the real server will have, minus I/O."""

    flow: AuthFlow
    authenticator: Authenticator
    now: float = 1000.0
    succeeded: list[LoginSucceeded] = attrs.field(factory=list)

    def exchange(self, conn: ControlHttpConnection, raw: bytes) -> bytes:
        conn.receive_data(raw)
        event = conn.next_event()
        assert isinstance(event, AuthGet | AuthPost), event
        action = self.flow.handle_request(login_request_from_http(event), self.now)
        while isinstance(action, CheckCredentials):
            action = self.flow.credentials_checked(action, self.authenticator(action), self.now)
        if isinstance(action, LoginSucceeded):
            self.succeeded.append(action)
            return conn.send_response(self.flow.success_response(action.context_id))
        return conn.send_response(action.response)


def test_appendix_a_session_replays_byte_exact() -> None:
    checks: list[CheckCredentials] = []
    server = Server(
        AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("test123", checks)
    )
    conn = ControlHttpConnection()
    for request, response in [
        ("a01_request", "a02_response"),  # init -> username form
        ("a03_request", "a04_response"),  # --authgroup re-init -> reordered form
        ("a05_request", "a06_response"),  # username -> password form + webvpncontext
        ("a07_request", "a08_response"),  # password -> complete + webvpn cookie
    ]:
        assert server.exchange(conn, capture(request)) == capture(response), request
    assert checks == [CheckCredentials(SID, "alice", "engineering", 0, "test123")]
    assert server.succeeded == [LoginSucceeded(SID, "alice", "engineering")]
    assert server.flow.pending_count == 0
    assert not conn.closed


def legacy_post(body: bytes, cookie: str | None = None) -> bytes:
    cookie_line = f"Cookie: webvpncontext={cookie}\r\n".encode() if cookie else b""
    return (
        b"POST /auth HTTP/1.1\r\nHost: 198.18.0.1\r\n" + cookie_line + b"Content-Type: "
        b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


LEGACY_GET = (
    b"GET / HTTP/1.1\r\nHost: 198.18.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
)


def test_legacy_no_xmlpost_session_a12() -> None:
    server = Server(
        AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("test123")
    )
    conn = ControlHttpConnection()
    assert server.exchange(conn, LEGACY_GET) == capture("a02_response")
    assert server.exchange(conn, legacy_post(b"group_list=sales&username=alice")) == capture(
        "a06_response"
    )
    final = server.exchange(conn, legacy_post(b"password=test123", SID))
    assert final == capture("a08_response")
    assert server.succeeded == [LoginSucceeded(SID, "alice", "sales")]


def test_each_step_on_a_new_connection_continues_by_context() -> None:
    # openconnect with a client certificate opens a new TLS connection per request.
    server = Server(
        AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("test123")
    )
    for request, response in [
        ("a01_request", "a02_response"),
        ("a05_request", "a06_response"),
        ("a07_request", "a08_response"),
    ]:
        assert server.exchange(ControlHttpConnection(), capture(request)) == capture(response)


def status_line(raw: bytes) -> bytes:
    return raw.split(b"\r\n", 1)[0]


def test_three_wrong_passwords_give_two_login_failed_forms_then_401() -> None:
    server = Server(AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("x"))
    conn = ControlHttpConnection()
    server.exchange(conn, legacy_post(b"username=alice"))
    for _ in range(2):
        form = server.exchange(conn, legacy_post(b"password=wrong", SID))
        assert status_line(form) == b"HTTP/1.1 200 OK"
        assert b"<message>Login failed.\nPlease enter your password.</message>" in form
        assert f"Set-Cookie: webvpncontext={SID}; Max-Age=300; Secure; HttpOnly".encode() in form
    final = server.exchange(conn, legacy_post(b"password=wrong", SID))
    assert final == b"HTTP/1.1 401 Authentication failed\r\nContent-Length: 0\r\n\r\n"
    assert conn.closed
    assert server.flow.pending_count == 0
    # The context is gone: a late retry starts over with the first form.
    again = server.exchange(ControlHttpConnection(), legacy_post(b"password=x", SID))
    assert b"Please enter your username." in again


def test_otp_second_step() -> None:
    settings = attrs.evolve(APPENDIX_SETTINGS, steps=(PASSWORD_STEP, OTP_STEP))
    answers = {0: "pw", 1: "123456"}

    def check(request: CheckCredentials) -> CredentialResult:
        ok = answers[request.step_index] == request.secret
        return CredentialResult(CredentialOutcome.ACCEPTED if ok else CredentialOutcome.REJECTED)

    server = Server(AuthFlow(settings, token_source=fixed_tokens(SID)), check)
    conn = ControlHttpConnection()
    server.exchange(conn, legacy_post(b"username=bob"))
    otp_form = server.exchange(conn, legacy_post(b"password=pw", SID))
    assert b"<message>Please enter your OTP password.</message>" in otp_form
    bad = server.exchange(conn, legacy_post(b"password=000000", SID))
    assert b"<message>Login failed.\nPlease enter your OTP password.</message>" in bad
    done = server.exchange(conn, legacy_post(b"password=123456", SID))
    assert f"Set-Cookie: webvpn={SID}; Secure; HttpOnly".encode() in done
    assert server.succeeded == [LoginSucceeded(SID, "bob", None)]


def test_backend_challenge_uses_secondary_password() -> None:
    outcomes = iter(
        [
            CredentialResult(CredentialOutcome.CHALLENGE, prompt="Enter token code"),
            CredentialResult(CredentialOutcome.ACCEPTED, group="sales"),
        ]
    )
    server = Server(
        AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), lambda _c: next(outcomes)
    )
    conn = ControlHttpConnection()
    server.exchange(conn, legacy_post(b"username=carol"))
    form = server.exchange(conn, legacy_post(b"password=pw", SID))
    assert b"<message>Enter token code</message>" in form
    assert b'name="secondary_password" label="Password1:"' in form
    server.exchange(conn, legacy_post(b"secondary_password=777", SID))
    assert server.succeeded == [LoginSucceeded(SID, "carol", "sales")]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (CredentialOutcome.DENIED, b"HTTP/1.1 401 Authentication failed"),
        (CredentialOutcome.BACKEND_ERROR, b"HTTP/1.1 401 Internal error"),
    ],
)
def test_final_failures(outcome: CredentialOutcome, status: bytes) -> None:
    server = Server(
        AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)),
        lambda _c: CredentialResult(outcome),
    )
    conn = ControlHttpConnection()
    server.exchange(conn, legacy_post(b"group_list=sales&username=bob"))
    assert status_line(server.exchange(conn, legacy_post(b"password=pw", SID))) == status
    assert conn.closed
    assert server.flow.pending_count == 0


def test_missing_password_with_context_is_401_no_password() -> None:
    server = Server(AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("x"))
    conn = ControlHttpConnection()
    server.exchange(conn, legacy_post(b"username=alice"))
    reply = server.exchange(conn, legacy_post(b"other=1", SID))
    assert status_line(reply) == b"HTTP/1.1 401 No password"


def test_expired_context_restarts_the_login() -> None:
    server = Server(AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID)), password_is("x"))
    server.exchange(ControlHttpConnection(), legacy_post(b"username=alice"))
    server.now += 301
    reply = server.exchange(ControlHttpConnection(), legacy_post(b"password=x", SID))
    assert b"Please enter your username." in reply
    assert b"Set-Cookie: webvpncontext=; expires=Thu, 01 Jan 1970 22:00:00 GMT" in reply
    assert server.succeeded == []


def test_secrets_stay_out_of_reprs() -> None:
    check = CheckCredentials(SID, "alice", None, 0, "hunter2")
    message = ClientAuthMessage("form", username="alice", password="hunter2")
    assert "hunter2" not in repr(check)
    assert "hunter2" not in repr(message)
    assert "alice" in repr(check)


def test_verdict_after_expiry_is_refused() -> None:
    flow = AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID))
    flow.handle_request(LoginRequest(ClientAuthMessage("form", username="alice")), 0.0)
    check = flow.handle_request(
        LoginRequest(ClientAuthMessage("form", password="x"), context_id=SID), 1.0
    )
    assert isinstance(check, CheckCredentials)
    late = flow.credentials_checked(check, CredentialResult(CredentialOutcome.ACCEPTED), 400.0)
    assert isinstance(late, Respond)
    assert late.response.status == 401


def test_second_answer_while_checking_is_refused() -> None:
    flow = AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID))
    flow.handle_request(LoginRequest(ClientAuthMessage("form", username="alice")), 0.0)
    answer = LoginRequest(ClientAuthMessage("form", password="x"), context_id=SID)
    first = flow.handle_request(answer, 1.0)
    assert isinstance(first, CheckCredentials)
    second = flow.handle_request(answer, 1.0)
    assert isinstance(second, Respond)
    assert (second.response.status, second.response.close) == (401, True)
    stale = flow.credentials_checked(first, CredentialResult(CredentialOutcome.ACCEPTED), 2.0)
    assert isinstance(stale, Respond)
    assert stale.response.status == 401


def test_get_abandons_a_pending_context() -> None:
    flow = AuthFlow(APPENDIX_SETTINGS, token_source=fixed_tokens(SID))
    flow.handle_request(LoginRequest(ClientAuthMessage("form", username="alice")), 0.0)
    assert flow.pending_count == 1
    action = flow.handle_request(LoginRequest(None, context_id=SID), 1.0)
    assert isinstance(action, Respond)
    assert b"Please enter your username." in action.response.body
    assert flow.pending_count == 0


def test_pending_logins_are_bounded() -> None:
    flow = AuthFlow(attrs.evolve(APPENDIX_SETTINGS, max_pending=2))
    start = LoginRequest(ClientAuthMessage("form", username="alice"))
    assert isinstance(flow.handle_request(start, 0.0), Respond)
    assert isinstance(flow.handle_request(start, 0.0), Respond)
    refused = flow.handle_request(start, 0.0)
    assert isinstance(refused, Respond)
    assert refused.response.status == 503
    # Expiry frees room again.
    later = flow.handle_request(start, 1000.0)
    assert isinstance(later, Respond)
    assert later.response.status == 200


def test_context_ids_are_random_44_char_base64_with_zero_first_byte() -> None:
    flow = AuthFlow(APPENDIX_SETTINGS)
    ids = set()
    for _ in range(5):
        action = flow.handle_request(LoginRequest(ClientAuthMessage("form", username="a")), 0.0)
        assert isinstance(action, Respond)
        cookie = dict(action.response.headers)["Set-Cookie"]
        value = cookie.split(";", 1)[0].removeprefix("webvpncontext=")
        assert len(value) == 44
        raw = base64.b64decode(value)
        assert (len(raw), raw[0]) == (32, 0)
        ids.add(value)
    assert len(ids) == 5


# -- groups ---------------------------------------------------------------------------------------


def group_selected(select: str | None, settings: AuthFlowSettings = APPENDIX_SETTINGS) -> object:
    flow = AuthFlow(settings, token_source=fixed_tokens(SID))
    flow.handle_request(
        LoginRequest(ClientAuthMessage("form", username="u", group_select=select)), 0.0
    )
    check = flow.handle_request(
        LoginRequest(ClientAuthMessage("form", password="p"), context_id=SID), 0.0
    )
    assert isinstance(check, CheckCredentials)
    return check.group


@pytest.mark.parametrize(
    ("select", "group"),
    [
        ("sales", "sales"),
        ("Sales Team", "sales"),  # the label is accepted too
        ("DEFAULT", None),  # default-select-group: the user's default group
        (None, None),
        ("", None),
        ("unlisted", "unlisted"),  # the back-end decides membership
    ],
)
def test_group_resolution(select: str | None, group: str | None) -> None:
    assert group_selected(select) == group


def form_options(action: object) -> list[tuple[str | None, str | None]]:
    assert isinstance(action, Respond)
    root = ET.fromstring(action.response.body)
    return [(o.get("value"), o.text) for o in root.iter("option")]


def test_reinit_with_label_moves_that_group_first() -> None:
    flow = AuthFlow(APPENDIX_SETTINGS)
    action = flow.handle_request(
        LoginRequest(ClientAuthMessage("init", group_select="Sales Team")), 0.0
    )
    assert form_options(action) == [
        ("sales", "Sales Team"),
        (None, "DEFAULT"),
        ("engineering", "engineering"),
    ]


def test_auto_select_groups_are_offered() -> None:
    settings = AuthFlowSettings(auto_select_groups=("admins", "staff"))
    action = AuthFlow(settings).handle_request(LoginRequest(None), 0.0)
    assert form_options(action) == [("admins", "admins"), ("staff", "staff")]
    assert group_selected("staff", settings) == "staff"


def test_no_groups_no_selector() -> None:
    action = AuthFlow(AuthFlowSettings()).handle_request(LoginRequest(None), 0.0)
    assert isinstance(action, Respond)
    assert b"<select" not in action.response.body
    assert b'<input type="text" name="username" label="Username:" />' in action.response.body


# -- certificates ---------------------------------------------------------------------------------

CERT_ONLY = AuthFlowSettings(steps=(), certificate_required=True)


def test_certificate_only_without_certificate_is_401_no_certificate() -> None:
    action = AuthFlow(CERT_ONLY).handle_request(LoginRequest(ClientAuthMessage("init")), 0.0)
    assert isinstance(action, Respond)
    assert action.response.to_bytes() == b"HTTP/1.1 401 No certificate\r\nContent-Length: 0\r\n\r\n"


def test_certificate_only_form_has_no_inputs() -> None:
    action = AuthFlow(CERT_ONLY).handle_request(LoginRequest(None), 0.0)
    assert isinstance(action, Respond)
    assert b"<input" not in action.response.body


def test_certificate_groups_must_be_chosen_first() -> None:
    flow = AuthFlow(CERT_ONLY, token_source=fixed_tokens(SID))
    init = LoginRequest(
        ClientAuthMessage("init"), certificate_user="certuser", certificate_groups=("admins", "ops")
    )
    ask = flow.handle_request(init, 0.0)
    assert isinstance(ask, Respond)
    assert b"<message>Please select your group.</message>" in ask.response.body
    assert form_options(ask) == [(None, "admins"), (None, "ops")]
    chosen = attrs.evolve(init, message=ClientAuthMessage("init", group_select="ops"))
    assert flow.handle_request(chosen, 0.0) == LoginSucceeded(SID, "certuser", "ops")
    foreign = attrs.evolve(init, message=ClientAuthMessage("init", group_select="root"))
    refused = flow.handle_request(foreign, 0.0)
    assert isinstance(refused, Respond)
    assert refused.response.status == 401


def test_certificate_without_groups_succeeds_at_once() -> None:
    flow = AuthFlow(CERT_ONLY, token_source=fixed_tokens(SID))
    done = flow.handle_request(
        LoginRequest(ClientAuthMessage("init"), certificate_user="certuser"), 0.0
    )
    assert done == LoginSucceeded(SID, "certuser", None)
    body = flow.success_response(SID).body
    assert b'<auth id="success">' in body
    assert b"vpn-profile-manifest" not in body


def test_certificate_plus_password_needs_the_certificate() -> None:
    settings = attrs.evolve(APPENDIX_SETTINGS, certificate_required=True)
    flow = AuthFlow(settings, token_source=fixed_tokens(SID))
    no_cert = flow.handle_request(LoginRequest(ClientAuthMessage("form", username="a")), 0.0)
    assert isinstance(no_cert, Respond)
    assert no_cert.response.reason == "No certificate"
    with_cert = flow.handle_request(
        LoginRequest(ClientAuthMessage("form", username="a"), certificate_user="a"), 0.0
    )
    assert isinstance(with_cert, Respond)
    assert b'name="password"' in with_cert.response.body


def test_success_response_without_profile() -> None:
    flow = AuthFlow(AuthFlowSettings(server_cert_sha1_hex=CERT_SHA1))
    response = flow.success_response(SID)
    headers = response.headers
    assert headers[-1] == (
        "Set-Cookie",
        f"webvpnc=bu:/&p:t&iu:1/&sh:{CERT_SHA1}; path=/; Secure; HttpOnly",
    )
    assert response.body.endswith(b"<title>SSL VPN Service</title></auth></config-auth>\n")


def test_xml_body_is_parsed_from_http() -> None:
    conn = ControlHttpConnection()
    conn.receive_data(capture("a07_request"))
    event = conn.next_event()
    assert isinstance(event, AuthPost)
    request = login_request_from_http(event, certificate_user="x", certificate_groups=["g"])
    assert request.context_id == SID
    assert request.message == parse_config_auth(event.request.body)
    assert request.certificate_groups == ("g",)


# -- property: any request sequence keeps the machine sane ---------------------------------------

MESSAGES = st.builds(
    ClientAuthMessage,
    kind=st.sampled_from(["init", "auth-reply", "form"]),
    username=st.one_of(st.none(), st.sampled_from(["alice", "", "bob"])),
    password=st.one_of(st.none(), st.sampled_from(["pw", "", "bad"])),
    group_select=st.one_of(st.none(), st.sampled_from(["sales", "Sales Team", "DEFAULT", "x"])),
)
STEPS = st.lists(
    st.tuples(
        st.one_of(st.none(), MESSAGES),
        st.sampled_from([None, SID, "bogus", "other"]),
        st.sampled_from(list(CredentialOutcome)),
        st.floats(min_value=0, max_value=200),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_any_request_sequence_keeps_invariants(
    steps: list[tuple[ClientAuthMessage | None, str | None, CredentialOutcome, float]],
) -> None:
    flow = AuthFlow(attrs.evolve(APPENDIX_SETTINGS, max_pending=3, steps=(PASSWORD_STEP, OTP_STEP)))
    now = 0.0
    for message, context, outcome, delay in steps:
        now += delay
        action = flow.handle_request(LoginRequest(message, context_id=context), now)
        if isinstance(action, CheckCredentials):
            assert action.context_id == context
            action = flow.credentials_checked(action, CredentialResult(outcome), now)
        assert flow.pending_count <= 3
        if isinstance(action, Respond):
            response = action.response
            assert response.status in (200, 401, 503)
            # Every refusal ends the connection; every form keeps it.
            assert response.close == (response.status != 200)
        else:
            assert isinstance(action, LoginSucceeded)
            assert action.username in ("alice", "bob")
