"""Tests for auth/methods.py: AND chains, OR alternatives, group settling, the thread helper,
and the few lines of glue between a chain and the login state machine.

Rules: fake methods record their calls; no files, no sockets; the only thread test uses a hard
timeout.
"""

from __future__ import annotations

import base64
import threading

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.auth.flow import (
    OTP_STEP,
    PASSWORD_STEP,
    AuthFlow,
    AuthFlowSettings,
    CheckCredentials,
    CredentialOutcome,
    LoginRequest,
    LoginSucceeded,
    Respond,
)
from trio_ocserv.auth.methods import (
    ADMITTED,
    AuthChain,
    AuthPolicy,
    CertificateIdentity,
    LoginAttempt,
    MethodResult,
    SecretKind,
    Verdict,
    run_check,
    settle_group,
)
from trio_ocserv.protocol.auth_xml import ClientAuthMessage

NOW = 1_700_000_000.0


@attrs.define
class FakeMethod:
    """Accepts `secrets[step]`; admits whatever `admission` says; records every call."""

    name: str = "fake"
    steps: tuple[SecretKind, ...] = (SecretKind.PASSWORD,)
    secrets: tuple[str, ...] = ("right",)
    groups: tuple[str, ...] = ()
    requires_certificate: bool = False
    admission: MethodResult = ADMITTED
    calls: list[tuple[str, LoginAttempt, int | None]] = attrs.field(factory=list)

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        self.calls.append(("admit", attempt, None))
        return self.admission

    def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
        self.calls.append(("check", attempt, step))
        if attempt.secret != self.secrets[step]:
            return MethodResult(Verdict.REJECTED, reason="wrong")
        return settle_group(attempt.group, self.groups, default_to_first=True)

    def available_groups(self) -> tuple[str, ...]:
        return self.groups


@attrs.define
class CertGate(FakeMethod):
    """A stand-in for the certificate method: admits the certificate's own user only."""

    steps: tuple[SecretKind, ...] = ()
    requires_certificate: bool = True

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        self.calls.append(("admit", attempt, None))
        cert = attempt.certificate
        if cert is None or cert.user != attempt.username:
            return MethodResult(Verdict.DENIED, reason="certificate")
        return settle_group(attempt.group, cert.groups, default_to_first=False)


def request(
    step: int, secret: str, *, user: str = "alice", group: str | None = None
) -> CheckCredentials:
    return CheckCredentials("ctx", user, group, step, secret)


# --- settle_group ---------------------------------------------------------------------------


def test_settle_group_rules() -> None:
    assert settle_group(None, ("a", "b"), default_to_first=True) == MethodResult(
        Verdict.ACCEPTED, "a"
    )
    assert settle_group(None, ("a", "b"), default_to_first=False).group is None
    assert settle_group(None, (), default_to_first=True).group is None
    assert settle_group("b", ("a", "b"), default_to_first=True).group == "b"
    assert settle_group("c", ("a", "b"), default_to_first=True).verdict is Verdict.DENIED
    assert settle_group("c", (), default_to_first=False).verdict is Verdict.DENIED


# --- one chain (AND) ------------------------------------------------------------------------


def test_chain_steps_follow_method_order() -> None:
    gate = CertGate()
    plain = FakeMethod(steps=(SecretKind.PASSWORD, SecretKind.OTP), secrets=("pw", "123456"))
    chain = AuthChain((gate, plain))
    assert chain.secret_kinds == (SecretKind.PASSWORD, SecretKind.OTP)
    assert chain.flow_steps == (PASSWORD_STEP, OTP_STEP)
    assert chain.step_plan == ((plain, 0), (plain, 1))
    assert chain.requires_certificate
    assert AuthChain((gate,)).flow_steps == ()  # certificate-only login
    assert not AuthChain((plain,)).requires_certificate


def test_chain_routes_each_step_to_its_owner() -> None:
    plain = FakeMethod(steps=(SecretKind.PASSWORD, SecretKind.OTP), secrets=("pw", "123456"))
    chain = AuthChain((plain,))
    assert chain.check(request(0, "pw"), None, NOW).outcome is CredentialOutcome.ACCEPTED
    assert chain.check(request(1, "123456"), None, NOW).outcome is CredentialOutcome.ACCEPTED
    assert chain.check(request(1, "pw"), None, NOW).outcome is CredentialOutcome.REJECTED
    checked_steps = [step for kind, _, step in plain.calls if kind == "check"]
    assert checked_steps == [0, 1, 1]


def test_chain_step_out_of_range_is_a_backend_error() -> None:
    plain = FakeMethod()
    result = AuthChain((plain,)).check(request(5, "right"), None, NOW)
    assert result.outcome is CredentialOutcome.BACKEND_ERROR
    assert not any(kind == "check" for kind, _, _ in plain.calls)


def test_chain_turns_a_crashing_method_into_backend_error() -> None:
    class Broken(FakeMethod):
        def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
            raise OSError("disk on fire")

    result = AuthChain((Broken(),)).check(request(0, "right"), None, NOW)
    assert result.outcome is CredentialOutcome.BACKEND_ERROR


@pytest.mark.parametrize(
    ("certificate", "user"),
    [
        (None, "alice"),  # password alone
        (CertificateIdentity("mallory"), "alice"),  # someone else's certificate
    ],
)
def test_certificate_and_password_cannot_be_bypassed(
    certificate: CertificateIdentity | None, user: str
) -> None:
    gate, plain = CertGate(), FakeMethod(secrets=("pw",))
    result = AuthChain((gate, plain)).check(request(0, "pw", user=user), certificate, NOW)
    assert result.outcome is CredentialOutcome.DENIED
    # the password is not even looked at when the certificate does not admit the login
    assert not any(kind == "check" for kind, _, _ in plain.calls)


def test_certificate_and_password_succeed_together() -> None:
    gate, plain = CertGate(), FakeMethod(secrets=("pw",))
    cert = CertificateIdentity("alice")
    result = AuthChain((gate, plain)).check(request(0, "pw"), cert, NOW)
    assert result.outcome is CredentialOutcome.ACCEPTED
    wrong = AuthChain((gate, plain)).check(request(0, "nope"), cert, NOW)
    assert wrong.outcome is CredentialOutcome.REJECTED


def test_every_step_needs_the_certificate_again() -> None:
    gate = CertGate()
    plain = FakeMethod(steps=(SecretKind.PASSWORD, SecretKind.OTP), secrets=("pw", "123456"))
    chain = AuthChain((gate, plain))
    cert = CertificateIdentity("alice")
    assert chain.check(request(0, "pw"), cert, NOW).outcome is CredentialOutcome.ACCEPTED
    # the OTP answer arrives on a connection without the certificate
    assert chain.check(request(1, "123456"), None, NOW).outcome is CredentialOutcome.DENIED


def test_default_group_is_returned_for_the_later_steps() -> None:
    plain = FakeMethod(groups=("eng", "ops"))
    result = AuthChain((plain,)).check(request(0, "right"), None, NOW)
    assert result.outcome is CredentialOutcome.ACCEPTED
    assert result.group == "eng"


def test_requested_group_outside_the_users_groups_is_denied() -> None:
    plain = FakeMethod(groups=("eng",))
    result = AuthChain((plain,)).check(request(0, "right", group="sales"), None, NOW)
    assert result.outcome is CredentialOutcome.DENIED


def test_a_default_group_must_also_suit_the_certificate() -> None:
    gate, plain = CertGate(), FakeMethod(groups=("eng", "ops"))
    chain = AuthChain((gate, plain))
    refused = chain.check(request(0, "right"), CertificateIdentity("alice", ("ops",)), NOW)
    assert refused.outcome is CredentialOutcome.DENIED
    chosen = chain.check(
        request(0, "right", group="ops"), CertificateIdentity("alice", ("ops",)), NOW
    )
    assert (chosen.outcome, chosen.group) == (CredentialOutcome.ACCEPTED, "ops")


def test_chain_available_groups_are_merged_in_order() -> None:
    chain = AuthChain((FakeMethod(groups=("a", "b")), FakeMethod(groups=("b", "c"))))
    assert chain.available_groups() == ("a", "b", "c")


@settings(max_examples=80, deadline=None)
@given(
    step=st.integers(min_value=-3, max_value=5),
    username=st.text(max_size=20),
    group=st.none() | st.text(max_size=10),
    secret=st.text(max_size=20),
    cert_user=st.none() | st.text(max_size=20),
)
def test_chain_never_raises_and_never_grants_without_the_secret(
    step: int, username: str, group: str | None, secret: str, cert_user: str | None
) -> None:
    gate = CertGate()
    plain = FakeMethod(steps=(SecretKind.PASSWORD, SecretKind.OTP), secrets=("pw", "123456"))
    certificate = CertificateIdentity(cert_user) if cert_user is not None else None
    check = CheckCredentials("ctx", username, group, step, secret)
    result = AuthChain((gate, plain)).check(check, certificate, NOW)
    if result.outcome is CredentialOutcome.ACCEPTED:
        assert cert_user == username
        assert secret == ("pw", "123456")[step]


# --- alternatives (OR) ----------------------------------------------------------------------


def test_policy_selects_by_certificate() -> None:
    password = AuthChain((FakeMethod(),), "auth")
    certificate = AuthChain((CertGate(),), "enable-auth[0]")
    policy = AuthPolicy((password, certificate))
    assert policy.select(None) is password
    assert policy.select(CertificateIdentity("alice")) is certificate
    assert policy.requests_certificate
    assert not policy.requires_certificate


def test_policy_without_a_matching_alternative_uses_the_auth_chain() -> None:
    both = AuthChain((CertGate(), FakeMethod()))
    policy = AuthPolicy((both,))
    assert policy.select(None) is both  # the flow then answers "No certificate"
    assert policy.requires_certificate
    plain_only = AuthPolicy((AuthChain((FakeMethod(),)),))
    assert plain_only.select(CertificateIdentity("alice")) is plain_only.primary
    assert not plain_only.requests_certificate


def test_policy_needs_a_chain() -> None:
    with pytest.raises(ValueError, match="at least"):
        AuthPolicy(())


# --- the thread helper ----------------------------------------------------------------------


async def test_run_check_runs_in_a_worker_thread_within_the_limit() -> None:
    limiter = trio.CapacityLimiter(1)
    lock = threading.Lock()
    active = [0]
    peak = [0]
    threads: set[int] = set()

    def blocking(value: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads.add(threading.get_ident())
        threading.Event().wait(0.02)
        with lock:
            active[0] -= 1
        return value * 2

    results: list[int] = []

    async def one(value: int) -> None:
        results.append(await run_check(limiter, blocking, value))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for value in range(3):
                nursery.start_soon(one, value)
    assert sorted(results) == [0, 2, 4]
    assert peak[0] == 1
    assert threading.get_ident() not in threads


# --- the glue with the login state machine --------------------------------------------------

SID = bytes(range(32))
SID_B64 = base64.b64encode(b"\x00" + SID[1:]).decode()


def drive(
    flow: AuthFlow, chain: AuthChain, req: LoginRequest, certificate: CertificateIdentity | None
) -> object:
    """The server glue: what the control connection does with one login request."""
    action = flow.handle_request(req, NOW)
    if isinstance(action, CheckCredentials):
        result = chain.check(action, certificate, NOW)
        action = flow.credentials_checked(action, result, NOW)
    return action


def post(
    certificate: CertificateIdentity | None,
    *,
    username: str | None = None,
    password: str | None = None,
    context: str | None = None,
) -> LoginRequest:
    """A login POST as the control connection builds it, naming the connection's certificate."""
    return LoginRequest(
        ClientAuthMessage("auth-reply", username, password),
        context,
        certificate_user=certificate.user if certificate is not None else None,
        certificate_groups=certificate.groups if certificate is not None else (),
    )


@pytest.mark.parametrize(
    ("certificate", "succeeds"),
    [(CertificateIdentity("alice"), True), (CertificateIdentity("bob"), False)],
)
def test_glue_with_the_flow_for_certificate_plus_password(
    certificate: CertificateIdentity, succeeds: bool
) -> None:
    chain = AuthChain((CertGate(), FakeMethod(secrets=("pw",))))
    settings = AuthFlowSettings(
        steps=chain.flow_steps, certificate_required=chain.requires_certificate
    )
    flow = AuthFlow(settings, token_source=lambda n: SID[:n])
    first = drive(flow, chain, post(certificate, username="alice"), certificate)
    assert isinstance(first, Respond)
    assert first.response.status == 200
    final = drive(flow, chain, post(certificate, password="pw", context=SID_B64), certificate)
    if succeeds:
        assert final == LoginSucceeded(SID_B64, "alice", None)
    else:
        assert isinstance(final, Respond)
        assert final.response.status == 401
