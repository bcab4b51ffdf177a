"""Tests for auth/plain.py: the password step over an ocpasswd file, the OTP step over a liboath
users file, and the OTP write-back that must happen before a step is accepted.

Rules: files live in tmp_path; time is passed in; hashes are real sha512-crypt (5000 rounds).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.auth import plain as plain_module
from trio_ocserv.auth.flow import CheckCredentials, CredentialOutcome
from trio_ocserv.auth.methods import AuthChain, LoginAttempt, SecretKind, Verdict
from trio_ocserv.auth.otp import OtpUsersFile, hotp, totp
from trio_ocserv.auth.passwd_file import CryptHasher, PasswdFileError
from trio_ocserv.auth.plain import PlainMethod

NOW = 1_700_000_000.0
KEY = bytes.fromhex("3132333435363738393031323334353637383930")
HASHER = CryptHasher()


@attrs.define
class CountingHasher:
    inner: CryptHasher = HASHER
    verifications: int = 0

    def hash(self, password: str) -> str:
        return self.inner.hash(password)

    def verify(self, password: str, password_hash: str) -> bool:
        self.verifications += 1
        return self.inner.verify(password, password_hash)


def write_passwd(path: Path, users: dict[str, tuple[str, str]]) -> None:
    lines = [f"{name}:{groups}:{HASHER.hash(pw)}\n" for name, (groups, pw) in users.items()]
    path.write_text("".join(lines))


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "ocpasswd"
    write_passwd(path, {"alice": ("eng,ops", "secret1"), "bob": ("*", "secret2")})
    return path


def attempt(secret: str, user: str = "alice", group: str | None = None) -> LoginAttempt:
    return LoginAttempt(user, group, secret)


# --- password step --------------------------------------------------------------------------


def test_password_step_accepts_and_settles_the_first_group(passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.steps == (SecretKind.PASSWORD,)
    result = method.check(attempt("secret1"), 0, NOW)
    assert (result.verdict, result.group) == (Verdict.ACCEPTED, "eng")
    chosen = method.check(attempt("secret1", group="ops"), 0, NOW)
    assert (chosen.verdict, chosen.group) == (Verdict.ACCEPTED, "ops")


def test_user_without_groups_gets_none_and_cannot_pick_one(passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.check(attempt("secret2", "bob"), 0, NOW).group is None
    # observed with ocserv: bob, who has no groups, selecting sales -> 401 after the password
    denied = method.check(attempt("secret2", "bob", "sales"), 0, NOW)
    assert denied.verdict is Verdict.DENIED


def test_wrong_password_is_rejected_not_denied(passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.check(attempt("nope"), 0, NOW).verdict is Verdict.REJECTED
    # a wrong password with a foreign group is still just a wrong password
    assert method.check(attempt("nope", group="sales"), 0, NOW).verdict is Verdict.REJECTED


def test_unknown_user_costs_one_hash_like_a_known_one(passwd: Path) -> None:
    hasher = CountingHasher()
    method = PlainMethod(str(passwd), hasher=hasher)
    assert method.check(attempt("secret1", "nobody"), 0, NOW).verdict is Verdict.REJECTED
    assert hasher.verifications == 1
    method.check(attempt("wrong"), 0, NOW)
    assert hasher.verifications == 2


def test_password_file_is_reread_when_it_changes(passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.check(attempt("secret1"), 0, NOW).verdict is Verdict.ACCEPTED
    write_passwd(passwd, {"alice": ("eng", "changed-password")})
    stat = passwd.stat()
    os.utime(passwd, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert method.check(attempt("secret1"), 0, NOW).verdict is Verdict.REJECTED
    assert method.check(attempt("changed-password"), 0, NOW).verdict is Verdict.ACCEPTED


def test_missing_password_file_is_a_backend_error(tmp_path: Path, passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.check(attempt("secret1"), 0, NOW).verdict is Verdict.ACCEPTED
    passwd.unlink()
    # a deleted file must not keep authenticating from the cache
    assert method.check(attempt("secret1"), 0, NOW).verdict is Verdict.ERROR
    assert PlainMethod(str(tmp_path / "absent")).available_groups() == ()


def test_available_groups_lists_every_group_of_the_file(passwd: Path) -> None:
    assert PlainMethod(str(passwd)).available_groups() == ("eng", "ops")


def test_steps_beyond_the_configured_ones_are_errors(passwd: Path) -> None:
    method = PlainMethod(str(passwd))
    assert method.check(attempt("x"), 1, NOW).verdict is Verdict.ERROR
    assert method.admit(attempt("x"), NOW).verdict is Verdict.ACCEPTED


# --- OTP step -------------------------------------------------------------------------------


@pytest.fixture
def otp_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.otp"
    path.write_text(
        "# tokens\n"
        f"HOTP/T30\talice\t-\t{KEY.hex()}\n"
        f"HOTP\tcarol\t-\t{KEY.hex()}\t0\n"
        f"HOTP/T30/8\tdave\t4321\t{KEY.hex()}\n"
    )
    return path


def test_otp_adds_a_second_step(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    assert method.steps == (SecretKind.PASSWORD, SecretKind.OTP)


def test_totp_is_accepted_once_and_recorded_first(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    code = totp(KEY, NOW)
    result = method.check(attempt(code, group="eng"), 1, NOW)
    assert (result.verdict, result.group) == (Verdict.ACCEPTED, "eng")
    token = OtpUsersFile.parse(otp_file.read_text()).get("alice")
    assert token is not None
    assert token.last_otp == code
    assert otp_file.read_text().startswith("# tokens\n")  # other lines survive the rewrite
    # the same code again (a replay) fails
    assert method.check(attempt(code), 1, NOW + 1).verdict is Verdict.REJECTED


def test_hotp_counter_advances(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    assert method.check(attempt(hotp(KEY, 3), "carol"), 1, NOW).verdict is Verdict.ACCEPTED
    token = OtpUsersFile.parse(otp_file.read_text()).get("carol")
    assert token is not None
    assert token.counter == 3
    assert method.check(attempt(hotp(KEY, 1), "carol"), 1, NOW).verdict is Verdict.REJECTED


def test_otp_pin_is_typed_before_the_code(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    code = totp(KEY, NOW, 30, 8)
    assert method.check(attempt(code, "dave"), 1, NOW).verdict is Verdict.REJECTED
    assert method.check(attempt("0000" + code, "dave"), 1, NOW).verdict is Verdict.REJECTED
    assert method.check(attempt("4321" + code, "dave"), 1, NOW).verdict is Verdict.ACCEPTED


def test_extra_characters_before_a_code_without_pin_fail(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    assert method.check(attempt("99" + totp(KEY, NOW)), 1, NOW).verdict is Verdict.REJECTED


@pytest.fixture(scope="module")
def shared_passwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "ocpasswd"
    write_passwd(path, {"alice": ("eng", "secret1")})
    return path


@settings(max_examples=25, deadline=None)
@given(username=st.text(max_size=40), secret=st.text(max_size=80))
def test_any_peer_text_is_a_rejection_not_an_error(
    shared_passwd: Path, username: str, secret: str
) -> None:
    method = PlainMethod(str(shared_passwd))
    assert method.check(attempt(secret, username), 0, NOW).verdict in (
        Verdict.REJECTED,
        Verdict.ACCEPTED,
    )
    assert method.check(attempt(secret + "x", "alice"), 0, NOW).verdict is Verdict.REJECTED


def test_user_without_a_token_fails_the_otp_step(passwd: Path, otp_file: Path) -> None:
    method = PlainMethod(str(passwd), str(otp_file))
    assert method.check(attempt(totp(KEY, NOW), "bob"), 1, NOW).verdict is Verdict.REJECTED


def test_unrecorded_otp_is_never_accepted(
    passwd: Path, otp_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write(path: str, text: str) -> None:
        raise PasswdFileError(f"cannot write {path}: disk full")

    monkeypatch.setattr(plain_module, "write_passwd_file_atomically", failing_write)
    method = PlainMethod(str(passwd), str(otp_file))
    before = otp_file.read_text()
    assert method.check(attempt(totp(KEY, NOW)), 1, NOW).verdict is Verdict.ERROR
    assert otp_file.read_text() == before


def test_unreadable_otp_file_is_a_backend_error(passwd: Path, tmp_path: Path) -> None:
    method = PlainMethod(str(passwd), str(tmp_path / "no-such.otp"))
    assert method.check(attempt("123456"), 1, NOW).verdict is Verdict.ERROR


def test_password_then_otp_through_a_chain(passwd: Path, otp_file: Path) -> None:
    chain = AuthChain((PlainMethod(str(passwd), str(otp_file)),))
    first = chain.check(CheckCredentials("ctx", "alice", None, 0, "secret1"), None, NOW)
    assert (first.outcome, first.group) == (CredentialOutcome.ACCEPTED, "eng")
    second = chain.check(CheckCredentials("ctx", "alice", "eng", 1, totp(KEY, NOW)), None, NOW)
    assert (second.outcome, second.group) == (CredentialOutcome.ACCEPTED, "eng")
