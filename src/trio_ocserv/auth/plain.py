"""`auth = "plain[passwd=FILE,otp=FILE]"`: the ocpasswd file, then optionally a one-time password.

- Password step: the password file is re-read when it changes (`PasswdFileCache`); unknown and
  locked users cost one dummy hash like everyone else. The user's passwd-file groups settle the
  group: a requested group must be one of them, none requested gives the first one.
- OTP step (only with `otp=`): the liboath users file is read afresh, the code verified, and the
  token's new state (counter, last code, time) written back atomically *before* the step is
  accepted, so a code can be used once. A user without a token line fails this step. A token
  line with a PIN expects the PIN typed in front of the code (mod-authn-otp's convention).

Blocking (hashing, file I/O): run in a worker thread. One instance may serve many threads: the
file cache and the OTP read-verify-write are each guarded by a lock.
"""

from __future__ import annotations

import threading
import time

import attrs

from trio_ocserv.auth.methods import (
    ADMITTED,
    LoginAttempt,
    MethodResult,
    SecretKind,
    Verdict,
    settle_group,
)
from trio_ocserv.auth.otp import OtpUsersFile, verify_otp
from trio_ocserv.auth.passwd_file import (
    PasswdFile,
    PasswdFileCache,
    PasswdFileError,
    PasswordHasher,
    write_passwd_file_atomically,
)

_PASSWORD_STEP = 0
_OTP_STEP = 1


def local_utc_offset(now: float) -> int:
    """Seconds east of UTC at `now` in this host's zone (liboath stores local times)."""
    return time.localtime(now).tm_gmtoff


@attrs.define
class PlainMethod:
    passwd_path: str
    otp_path: str | None = None
    hasher: PasswordHasher | None = None  # None: the crypt(3)-compatible default
    _cache: PasswdFileCache = attrs.field(init=False)
    _cache_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _otp_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        self._cache = PasswdFileCache(self.passwd_path)

    @property
    def name(self) -> str:
        return "plain"

    @property
    def steps(self) -> tuple[SecretKind, ...]:
        if self.otp_path is None:
            return (SecretKind.PASSWORD,)
        return (SecretKind.PASSWORD, SecretKind.OTP)

    @property
    def requires_certificate(self) -> bool:
        return False

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        return ADMITTED

    def passwd_file(self) -> PasswdFile:
        """The current parse; raises PasswdFileError when the file is gone or unreadable."""
        with self._cache_lock:
            self._cache.reload_if_changed()
            return self._cache.current

    def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
        if step == _PASSWORD_STEP:
            return self._check_password(attempt)
        if step == _OTP_STEP and self.otp_path is not None:
            return self._check_otp(self.otp_path, attempt, now)
        return MethodResult(Verdict.ERROR, reason=f"plain has no step {step}")

    def _check_password(self, attempt: LoginAttempt) -> MethodResult:
        try:
            passwd = self.passwd_file()
        except PasswdFileError as exc:
            return MethodResult(Verdict.ERROR, reason=str(exc))
        match = passwd.verify(attempt.username, attempt.secret, self.hasher)
        if match is None:
            return MethodResult(Verdict.REJECTED, reason="wrong password or unknown user")
        return settle_group(attempt.group, match.groups, default_to_first=True)

    def _check_otp(self, path: str, attempt: LoginAttempt, now: float) -> MethodResult:
        with self._otp_lock:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
                    users = OtpUsersFile.parse(f.read(), path)
            except OSError as exc:
                return MethodResult(Verdict.ERROR, reason=f"cannot read {path}: {exc}")
            token = users.get(attempt.username)
            if token is None:
                return MethodResult(Verdict.REJECTED, reason="no OTP token for this user")
            pin, code = "", attempt.secret
            if token.pin not in ("-", "+"):
                pin, code = _split_pin(attempt.secret, token.digits)
            accepted = verify_otp(
                token, code, now, pin=pin, utc_offset_seconds=local_utc_offset(now)
            )
            if accepted is None:
                return MethodResult(Verdict.REJECTED, reason="wrong or replayed OTP")
            try:
                write_passwd_file_atomically(path, users.with_token(accepted.token).render())
            except PasswdFileError as exc:
                # an unrecorded code could be replayed: refuse rather than grant
                return MethodResult(Verdict.ERROR, reason=f"cannot record the OTP use: {exc}")
        return MethodResult(Verdict.ACCEPTED, attempt.group)

    def available_groups(self) -> tuple[str, ...]:
        """Every group named in the password file (for auto-select-group)."""
        try:
            passwd = self.passwd_file()
        except PasswdFileError:
            return ()
        found: dict[str, None] = {}
        for entry in passwd.entries:
            found.update(dict.fromkeys(entry.groups))
        return tuple(found)


def _split_pin(secret: str, digits: int) -> tuple[str, str]:
    """`PIN` + `code` typed together: the code is the last `digits` characters."""
    if len(secret) <= digits:
        return "", secret
    return secret[:-digits], secret[-digits:]
