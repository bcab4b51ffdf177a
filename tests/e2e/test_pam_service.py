"""The PAM method against the real libpam, through service files this test writes.

Rules: needs root (it writes /etc/pam.d/trio-ocserv-test-<random>, removed in `finally`); the
service files use only pam_permit and pam_deny, and the user does not exist, so no real
account's password is ever checked.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pam as python_pam
import pytest

from tests.conftest import require_root_tools
from trio_ocserv.auth.methods import LoginAttempt, Verdict
from trio_ocserv.auth.pam import PamMethod, PythonPamBackend

pytestmark = pytest.mark.e2e

PAM_DIR = Path("/etc/pam.d")
NO_SUCH_USER = "trio-ocserv-no-such-user"


@pytest.fixture
def pam_service() -> Iterator[tuple[str, Path]]:
    require_root_tools()
    name = f"trio-ocserv-test-{secrets.token_hex(6)}"
    path = PAM_DIR / name
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)


def write_service(path: Path, auth: str, account: str) -> None:
    path.write_text(f"auth required {auth}\naccount required {account}\n")
    os.chmod(path, 0o644)


def test_permit_service_accepts(pam_service: tuple[str, Path]) -> None:
    name, path = pam_service
    write_service(path, "pam_permit.so", "pam_permit.so")
    assert PythonPamBackend().authenticate(NO_SUCH_USER, "x", name) == python_pam.PAM_SUCCESS
    result = PamMethod(service=name).check(LoginAttempt(NO_SUCH_USER, None, "x"), 0, 0.0)
    assert (result.verdict, result.group) == (Verdict.ACCEPTED, None)
    # the user has no groups, so no group can be chosen
    chosen = PamMethod(service=name).check(LoginAttempt(NO_SUCH_USER, "root", "x"), 0, 0.0)
    assert chosen.verdict is Verdict.DENIED


def test_deny_service_rejects(pam_service: tuple[str, Path]) -> None:
    name, path = pam_service
    write_service(path, "pam_deny.so", "pam_permit.so")
    result = PamMethod(service=name).check(LoginAttempt(NO_SUCH_USER, None, "x"), 0, 0.0)
    assert result.verdict is Verdict.REJECTED


def test_account_refusal_after_a_good_password(pam_service: tuple[str, Path]) -> None:
    name, path = pam_service
    write_service(path, "pam_permit.so", "pam_deny.so")
    result = PamMethod(service=name).check(LoginAttempt(NO_SUCH_USER, None, "x"), 0, 0.0)
    assert result.verdict is not Verdict.ACCEPTED
