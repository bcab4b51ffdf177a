"""The interface every login method implements, how methods compose, and the thread helper.

A *login method* (plain, pam, certificate, ...) is a synchronous object whose calls may block
(crypt hashing, PAM, file writes); the Trio shell runs them with `run_check` in a worker thread
behind a `trio.CapacityLimiter`. Nothing here reads clocks: `now` (unix time) is an argument.

Composition, as ocserv.conf defines it:

- AND: the `auth` lines form one `AuthChain`. Its secret steps are the steps of its methods in
  order (plain with an OTP file: password, then OTP). Before every step each method may *admit*
  or refuse the attempt: the certificate method admits only a verified certificate whose user is
  the login's user, so `auth = certificate` + `auth = plain` cannot be passed with a password
  alone, nor with someone else's certificate (ocserv 1.4.1 fixed exactly that bypass).
- OR: each `enable-auth` line is an alternative chain. `AuthPolicy.select` picks the chain for a
  login from what the client presented (a verified certificate selects a certificate chain).

Groups: a method that knows the user's groups settles the group: a requested group must be one of
them (else the login is denied); with none requested, the settled group flows on to the later
steps through the flow's `CheckCredentials.group`.

The chain answers the login state machine (`auth.flow`) directly with its `CredentialResult`, so
the server glue is::

    action = flow.handle_request(request, now)
    if isinstance(action, CheckCredentials):
        result = await run_check(limiter, chain.check, action, identity, time.time())
        action = flow.credentials_checked(action, result, trio.current_time())
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, TypeVarTuple

import attrs
import trio

from trio_ocserv.auth.flow import (
    OTP_STEP,
    PASSWORD_STEP,
    AuthStep,
    CheckCredentials,
    CredentialOutcome,
    CredentialResult,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class SecretKind(enum.Enum):
    """What a step asks the user for; decides the form the flow shows."""

    PASSWORD = "password"
    OTP = "otp"


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # wrong secret: the user may try again
    DENIED = "denied"  # final: wrong group, missing or foreign certificate, locked account
    ERROR = "error"  # the back-end failed (file unreadable, PAM broken): never grants access


@attrs.frozen
class CertificateIdentity:
    """What a client certificate proved, after verification against ca-cert and the CRL."""

    user: str
    groups: tuple[str, ...] = ()
    subject: str = ""  # RFC 4514 text, for logs


@attrs.frozen
class LoginAttempt:
    """One answer of a user, as every method sees it."""

    username: str
    group: str | None  # requested or already settled; None means the user's default
    secret: str = attrs.field(repr=False)
    # the verified certificate of the TLS connection that carried *this* request
    certificate: CertificateIdentity | None = None


@attrs.frozen
class MethodResult:
    verdict: Verdict
    group: str | None = None  # the group this method settled on, if it knows groups
    reason: str = ""  # for the log only; never sent to the peer

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


ADMITTED = MethodResult(Verdict.ACCEPTED)


class LoginMethod(Protocol):
    """One `auth`/`enable-auth` method. `check` and `admit` may block: run them in a thread."""

    @property
    def name(self) -> str: ...

    @property
    def steps(self) -> tuple[SecretKind, ...]:
        """The secrets this method asks for, in order; empty for the certificate method."""
        ...

    @property
    def requires_certificate(self) -> bool: ...

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        """A condition checked before every step of the chain (password methods admit all)."""
        ...

    def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
        """Verify the secret of `self.steps[step]`."""
        ...

    def available_groups(self) -> tuple[str, ...]:
        """Every group this method could yield, for `auto-select-group`; may block."""
        ...


def settle_group(
    requested: str | None, groups: Sequence[str], *, default_to_first: bool
) -> MethodResult:
    """A requested group must be one of `groups`; none requested gives the first (when
    `default_to_first`) or no group."""
    if requested is None:
        default = groups[0] if groups and default_to_first else None
        return MethodResult(Verdict.ACCEPTED, default)
    if requested in groups:
        return MethodResult(Verdict.ACCEPTED, requested)
    return MethodResult(Verdict.DENIED, reason=f"not a member of group {requested!r}")


_OUTCOMES = {
    Verdict.ACCEPTED: CredentialOutcome.ACCEPTED,
    Verdict.REJECTED: CredentialOutcome.REJECTED,
    Verdict.DENIED: CredentialOutcome.DENIED,
    Verdict.ERROR: CredentialOutcome.BACKEND_ERROR,
}
_FLOW_STEPS = {SecretKind.PASSWORD: PASSWORD_STEP, SecretKind.OTP: OTP_STEP}


@attrs.frozen
class AuthChain:
    """Methods that must all succeed (the `auth` lines, or one `enable-auth` line)."""

    methods: tuple[LoginMethod, ...]
    label: str = "auth"  # for logs: "auth" or "enable-auth[N]"

    @property
    def step_plan(self) -> tuple[tuple[LoginMethod, int], ...]:
        """Flow step index -> (the method that owns it, the method's own step index)."""
        return tuple((m, i) for m in self.methods for i in range(len(m.steps)))

    @property
    def secret_kinds(self) -> tuple[SecretKind, ...]:
        return tuple(kind for m in self.methods for kind in m.steps)

    @property
    def flow_steps(self) -> tuple[AuthStep, ...]:
        """`AuthFlowSettings.steps` for this chain; empty means certificate-only login."""
        return tuple(_FLOW_STEPS[kind] for kind in self.secret_kinds)

    @property
    def requires_certificate(self) -> bool:
        return any(m.requires_certificate for m in self.methods)

    def available_groups(self) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for method in self.methods:
            found.update(dict.fromkeys(method.available_groups()))
        return tuple(found)

    def check(
        self, request: CheckCredentials, certificate: CertificateIdentity | None, now: float
    ) -> CredentialResult:
        """Run step `request.step_index`: every method's admission, then the step's owner.
        Blocking; never raises (a failing back-end is BACKEND_ERROR, never access)."""
        try:
            result = self._check(request, certificate, now)
        except Exception:
            logger.exception("%s: back-end failed for user %r", self.label, request.username)
            return CredentialResult(CredentialOutcome.BACKEND_ERROR)
        if not result.accepted:
            logger.info(
                "%s: step %d for user %r %s: %s",
                self.label, request.step_index, request.username,
                result.verdict.value, result.reason,
            )  # fmt: skip
        return CredentialResult(_OUTCOMES[result.verdict], group=result.group)

    def _check(
        self, request: CheckCredentials, certificate: CertificateIdentity | None, now: float
    ) -> MethodResult:
        plan = self.step_plan
        if not 0 <= request.step_index < len(plan):
            return MethodResult(Verdict.ERROR, reason=f"no step {request.step_index}")
        admitted = self._admit(request, request.group, certificate, now)
        if not admitted.accepted:
            return admitted
        group = admitted.group
        owner, step = plan[request.step_index]
        attempt = LoginAttempt(request.username, group, request.secret, certificate)
        checked = owner.check(attempt, step, now)
        if not checked.accepted:
            return checked
        if checked.group is None or checked.group == group:
            return MethodResult(Verdict.ACCEPTED, group)
        # the owner settled a default group: the other methods must accept it too
        return self._admit(request, checked.group, certificate, now)

    def _admit(
        self,
        request: CheckCredentials,
        group: str | None,
        certificate: CertificateIdentity | None,
        now: float,
    ) -> MethodResult:
        for method in self.methods:
            attempt = LoginAttempt(request.username, group, request.secret, certificate)
            admitted = method.admit(attempt, now)
            if not admitted.accepted:
                return admitted
            group = admitted.group or group
        return MethodResult(Verdict.ACCEPTED, group)


@attrs.frozen
class AuthPolicy:
    """The `auth` chain first, then one chain per `enable-auth` line (any one suffices)."""

    alternatives: tuple[AuthChain, ...]

    def __attrs_post_init__(self) -> None:
        if not self.alternatives:
            raise ValueError("an AuthPolicy needs at least the auth chain")

    @property
    def primary(self) -> AuthChain:
        return self.alternatives[0]

    @property
    def requests_certificate(self) -> bool:
        """Whether the TLS layer should ask clients for a certificate."""
        return any(chain.requires_certificate for chain in self.alternatives)

    @property
    def requires_certificate(self) -> bool:
        """Whether no login can succeed without one."""
        return all(chain.requires_certificate for chain in self.alternatives)

    def select(self, certificate: CertificateIdentity | None) -> AuthChain:
        """The chain for a login: with a verified certificate the first chain that uses it,
        without one the first chain that needs none; else the `auth` chain (which then fails
        with "No certificate")."""
        wanted = certificate is not None
        for chain in self.alternatives:
            if chain.requires_certificate == wanted:
                return chain
        return self.primary


async def run_check(limiter: trio.CapacityLimiter, fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run a blocking method call in a worker thread; `limiter` bounds concurrent logins.

    Not abandoned on cancel: an OTP write-back must finish, and the limiter must keep counting
    the thread for as long as it runs."""
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
