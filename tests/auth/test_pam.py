"""Tests for auth/pam.py with an injected PAM library and group database.

Rules: no test here calls the system's PAM for a user (the real-PAM test with pam_permit and
pam_deny service files is tests/e2e/test_pam_service.py); NSS is only asked about a user that
does not exist and about the group list.
"""

from __future__ import annotations

import attrs
import pam as python_pam
import pytest

from trio_ocserv.auth.flow import CheckCredentials, CredentialOutcome
from trio_ocserv.auth.methods import AuthChain, LoginAttempt, SecretKind, Verdict
from trio_ocserv.auth.pam import (
    DEFAULT_PAM_SERVICE,
    PamMethod,
    PythonPamBackend,
    SystemGroupDatabase,
)

NOW = 1_700_000_000.0


@attrs.define
class FakePam:
    """A PAM stack that knows one password per user and answers `code` for everyone else."""

    passwords: dict[str, str]
    failure: int = python_pam.PAM_AUTH_ERR
    calls: list[tuple[str, str]] = attrs.field(factory=list)

    def authenticate(self, username: str, password: str, service: str) -> int:
        self.calls.append((username, service))
        if self.passwords.get(username) == password:
            return int(python_pam.PAM_SUCCESS)
        return self.failure


@attrs.frozen
class FakeGroups:
    members: dict[str, tuple[tuple[str, int], ...]]
    everything: tuple[tuple[str, int], ...] = ()

    def groups_of(self, username: str) -> tuple[tuple[str, int], ...]:
        return self.members.get(username, ())

    def all_groups(self) -> tuple[tuple[str, int], ...]:
        return self.everything


GROUPS = FakeGroups(
    {"alice": (("alice", 1000), ("users", 100), ("vpn-eng", 2001), ("vpn-ops", 2002))},
    (("root", 0), ("users", 100), ("alice", 1000), ("vpn-eng", 2001), ("vpn-ops", 2002)),
)


def method(fake: FakePam, gid_min: int = 0, service: str = DEFAULT_PAM_SERVICE) -> PamMethod:
    return PamMethod(service=service, gid_min=gid_min, backend=fake, groups=GROUPS)


def attempt(secret: str, group: str | None = None, user: str = "alice") -> LoginAttempt:
    return LoginAttempt(user, group, secret)


def test_password_accepted_through_the_configured_service() -> None:
    fake = FakePam({"alice": "pw"})
    pam_method = method(fake, service="vpn-test")
    assert pam_method.steps == (SecretKind.PASSWORD,)
    result = pam_method.check(attempt("pw"), 0, NOW)
    # PAM gives no default group: without a choice the login has none
    assert (result.verdict, result.group) == (Verdict.ACCEPTED, None)
    assert fake.calls == [("alice", "vpn-test")]


def test_wrong_password_and_unknown_user_may_retry() -> None:
    assert method(FakePam({"alice": "pw"})).check(attempt("x"), 0, NOW).verdict is Verdict.REJECTED
    unknown = FakePam({}, failure=python_pam.PAM_USER_UNKNOWN)
    assert method(unknown).check(attempt("pw"), 0, NOW).verdict is Verdict.REJECTED


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (python_pam.PAM_ACCT_EXPIRED, Verdict.DENIED),
        (python_pam.PAM_PERM_DENIED, Verdict.DENIED),
        (python_pam.PAM_NEW_AUTHTOK_REQD, Verdict.DENIED),
        (python_pam.PAM_MAXTRIES, Verdict.DENIED),
        (python_pam.PAM_AUTHINFO_UNAVAIL, Verdict.ERROR),
        (python_pam.PAM_SERVICE_ERR, Verdict.ERROR),
        (python_pam.PAM_SYSTEM_ERR, Verdict.ERROR),
    ],
)
def test_pam_failures_map_to_verdicts(code: int, verdict: Verdict) -> None:
    assert method(FakePam({}, failure=code)).check(attempt("pw"), 0, NOW).verdict is verdict


def test_group_must_be_one_of_the_users_groups_above_gid_min() -> None:
    pam_method = method(FakePam({"alice": "pw"}), gid_min=2000)
    chosen = pam_method.check(attempt("pw", "vpn-ops"), 0, NOW)
    assert (chosen.verdict, chosen.group) == (Verdict.ACCEPTED, "vpn-ops")
    # "users" is alice's group, but below gid-min
    assert pam_method.check(attempt("pw", "users"), 0, NOW).verdict is Verdict.DENIED
    assert pam_method.check(attempt("pw", "root"), 0, NOW).verdict is Verdict.DENIED
    # a wrong password is a wrong password, whatever the group
    assert pam_method.check(attempt("x", "root"), 0, NOW).verdict is Verdict.REJECTED


def test_available_groups_honour_gid_min() -> None:
    assert method(FakePam({}), gid_min=1000).available_groups() == ("alice", "vpn-eng", "vpn-ops")
    assert method(FakePam({})).available_groups()[0] == "root"


def test_pam_has_one_step_and_admits_everyone() -> None:
    pam_method = method(FakePam({"alice": "pw"}))
    assert pam_method.check(attempt("pw"), 1, NOW).verdict is Verdict.ERROR
    assert pam_method.admit(attempt("pw"), NOW).verdict is Verdict.ACCEPTED
    assert not pam_method.requires_certificate


def test_pam_in_a_chain() -> None:
    chain = AuthChain((method(FakePam({"alice": "pw"}), gid_min=2000),))
    ok = chain.check(CheckCredentials("ctx", "alice", "vpn-eng", 0, "pw"), None, NOW)
    assert (ok.outcome, ok.group) == (CredentialOutcome.ACCEPTED, "vpn-eng")


def test_python_pam_backend_refuses_nul_without_calling_pam() -> None:
    # python-pam checks for NUL before pam_start: nothing reaches a PAM stack here
    assert (
        PythonPamBackend().authenticate("alice\x00root", "pw", "ocserv") == python_pam.PAM_AUTH_ERR
    )
    assert PythonPamBackend().authenticate("alice", "p\x00w", "ocserv") == python_pam.PAM_AUTH_ERR
    # a lone surrogate cannot be encoded: refused before PAM too
    assert PythonPamBackend().authenticate("al\udcffice", "pw", "ocserv") == python_pam.PAM_AUTH_ERR


def test_system_group_database_for_an_unknown_user() -> None:
    database = SystemGroupDatabase()
    assert database.groups_of("trio-ocserv-no-such-user-7f3a") == ()
    assert database.groups_of("nul\x00name") == ()
    assert ("root", 0) in database.all_groups()
