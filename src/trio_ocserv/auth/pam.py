"""`auth = "pam[gid-min=N]"`: the password checked by a PAM service (python-pam), groups from NSS.

- One password step: `pam_authenticate` then `pam_acct_mgmt` of the configured service (ocserv's
  is `ocserv`, /etc/pam.d/ocserv). Wrong password or unknown user: rejected (the user may retry);
  expired or refused account: denied; any other PAM failure: back-end error.
- Groups: the user's primary and supplementary groups with gid >= gid-min. A requested group must
  be one of them; with none requested the login has no group (PAM gives no "first" group).
- `available_groups` lists every system group with gid >= gid-min (auto-select-group).

Both PAM and NSS block: run in a worker thread. The PAM library and the group database are
injected so unit tests never touch the system's users.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Final, Protocol

import attrs
import pam as python_pam

from trio_ocserv.auth.methods import (
    ADMITTED,
    LoginAttempt,
    MethodResult,
    SecretKind,
    Verdict,
    settle_group,
)

DEFAULT_PAM_SERVICE: Final = "ocserv"

PAM_SUCCESS: Final[int] = python_pam.PAM_SUCCESS
_RETRYABLE: Final = frozenset(
    {python_pam.PAM_AUTH_ERR, python_pam.PAM_USER_UNKNOWN, python_pam.PAM_CRED_INSUFFICIENT}
)
_FINAL: Final = frozenset(
    {
        python_pam.PAM_ACCT_EXPIRED,
        python_pam.PAM_PERM_DENIED,
        python_pam.PAM_MAXTRIES,
        python_pam.PAM_NEW_AUTHTOK_REQD,
        python_pam.PAM_AUTHTOK_EXPIRED,
    }
)


class PamBackend(Protocol):
    def authenticate(self, username: str, password: str, service: str) -> int:
        """Authenticate and check the account; the PAM return code (0 is success)."""
        ...


class GroupDatabase(Protocol):
    def groups_of(self, username: str) -> tuple[tuple[str, int], ...]:
        """(name, gid) of the user's primary then supplementary groups; () if no such user."""
        ...

    def all_groups(self) -> tuple[tuple[str, int], ...]: ...


class PythonPamBackend:
    """The system's libpam through python-pam; a fresh handle per call (thread-safe)."""

    def authenticate(self, username: str, password: str, service: str) -> int:
        authenticator = python_pam.PamAuthenticator()
        try:
            # resetcreds=False: a VPN login establishes no Unix credentials
            authenticator.authenticate(username, password, service, resetcreds=False)
        except ValueError:  # NUL in a peer-given name or password
            return int(python_pam.PAM_AUTH_ERR)
        return int(authenticator.code)


class SystemGroupDatabase:
    """Groups through NSS (`getpwnam`, `getgrouplist`, `getgrent`)."""

    def groups_of(self, username: str) -> tuple[tuple[str, int], ...]:
        try:
            entry = pwd.getpwnam(username)
        except (KeyError, ValueError):  # unknown user, or NUL in the name
            return ()
        found: dict[int, str] = {}
        for gid in os.getgrouplist(username, entry.pw_gid):
            try:
                found.setdefault(gid, grp.getgrgid(gid).gr_name)
            except KeyError:
                continue  # a gid without a name cannot be a group choice
        return tuple((name, gid) for gid, name in found.items())

    def all_groups(self) -> tuple[tuple[str, int], ...]:
        return tuple((g.gr_name, g.gr_gid) for g in grp.getgrall())


@attrs.define
class PamMethod:
    service: str = DEFAULT_PAM_SERVICE
    gid_min: int = 0
    backend: PamBackend = attrs.field(factory=PythonPamBackend)
    groups: GroupDatabase = attrs.field(factory=SystemGroupDatabase)

    @property
    def name(self) -> str:
        return "pam"

    @property
    def steps(self) -> tuple[SecretKind, ...]:
        return (SecretKind.PASSWORD,)

    @property
    def requires_certificate(self) -> bool:
        return False

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        return ADMITTED

    def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
        if step != 0:
            return MethodResult(Verdict.ERROR, reason=f"pam has no step {step}")
        code = self.backend.authenticate(attempt.username, attempt.secret, self.service)
        if code in _RETRYABLE:
            return MethodResult(Verdict.REJECTED, reason=f"PAM code {code}")
        if code in _FINAL:
            return MethodResult(Verdict.DENIED, reason=f"PAM code {code}")
        if code != PAM_SUCCESS:
            return MethodResult(Verdict.ERROR, reason=f"PAM service {self.service!r}: code {code}")
        names = [name for name, gid in self.groups.groups_of(attempt.username)
                 if gid >= self.gid_min]  # fmt: skip
        return settle_group(attempt.group, names, default_to_first=False)

    def available_groups(self) -> tuple[str, ...]:
        names = (name for name, gid in self.groups.all_groups() if gid >= self.gid_min)
        return tuple(dict.fromkeys(names))
