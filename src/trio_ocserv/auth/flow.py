"""The server-side login state machine (protocol.md 3.2, 3.6, 3.8, 3.9, 3.11, 3.13).

This module decides, for each login request, what the server answers: which form comes next,
when to run an authenticator, when login is complete and when it has failed. It is a pure object:
no sockets, no clock (`now` is an argument), no password checking. Authenticators run elsewhere
(in threads) and their verdict is fed back with `credentials_checked`.

Rules, in the order they are applied to a request:

1. Pending logins are keyed by their *context id* (the `webvpncontext` cookie, base64 of 32
   bytes), never by the TCP connection: openconnect opens a new TLS connection per request when it
   uses a client certificate (2.2). A context lives `cookie_timeout` seconds.
2. `GET` of a login URL, or a POST without username and without a known context, gets the first
   form: username input (when a password method is configured), the group selector, the
   pre-login banner, and a cookie that clears `webvpncontext`.
3. A POST with a username starts a new context: the group is resolved (3.8) and the first
   configured step's form is sent with `Set-Cookie: webvpncontext=<id>; Max-Age=<timeout>`.
4. A POST with a known context must carry a password; the flow asks the caller to check it
   (`CheckCredentials`). Accepted: the next step's form, or success after the last step.
   Rejected: `Login failed.` and the same step again, until `max_attempts` failures, then 401.
   Denied (e.g. not a member of the group) or a back-end error: 401 at once.
5. Certificate-only login completes on the first POST when the certificate names the user, or
   asks `Please select your group.` first when the certificate has groups and none was chosen.
"""

from __future__ import annotations

import base64
import enum
import secrets
from collections.abc import Callable, Sequence

import attrs

from trio_ocserv.protocol.auth_xml import (
    PASSWORD_INPUT,
    USERNAME_INPUT,
    ClientAuthMessage,
    FormInput,
    GroupOption,
    ProfileManifest,
    build_auth_request,
    build_complete,
    parse_auth_body,
    secondary_password_input,
)
from trio_ocserv.protocol.http import (
    AuthGet,
    AuthPost,
    HttpResponse,
    auth_failure_response,
    auth_form_response,
    auth_success_response,
    clear_cookie,
    session_cookie,
    status_only_response,
    webvpnc_cookie_value,
)

__all__ = [
    "OTP_STEP",
    "PASSWORD_STEP",
    "AuthFlow",
    "AuthFlowSettings",
    "AuthStep",
    "CheckCredentials",
    "CredentialOutcome",
    "CredentialResult",
    "FlowAction",
    "LoginRequest",
    "LoginSucceeded",
    "Respond",
    "SelectableGroup",
    "login_request_from_http",
]

USERNAME_MESSAGE = "Please enter your username."
PASSWORD_MESSAGE = "Please enter your password."
OTP_MESSAGE = "Please enter your OTP password."
SELECT_GROUP_MESSAGE = "Please select your group."
LOGIN_FAILED_PREFIX = "Login failed.\n"
SID_BYTES = 32


@attrs.frozen
class SelectableGroup:
    """A `select-group` entry: `name[Label]` is shown as Label and selected by either."""

    name: str
    label: str | None = None

    @property
    def shown(self) -> str:
        return self.label if self.label is not None else self.name


@attrs.frozen
class AuthStep:
    """One secret the user must supply (password, OTP, ...): the form message and its input."""

    message: str = PASSWORD_MESSAGE
    field: FormInput = PASSWORD_INPUT


PASSWORD_STEP = AuthStep()
OTP_STEP = AuthStep(OTP_MESSAGE)


@attrs.frozen
class AuthFlowSettings:
    """Plain values the flow needs; the config layer fills them from ocserv.conf."""

    # Secrets asked after the username, in order; empty means certificate-only login.
    steps: tuple[AuthStep, ...] = (PASSWORD_STEP,)
    certificate_required: bool = False
    select_groups: tuple[SelectableGroup, ...] = ()
    default_select_group: str | None = None
    # auto-select-group: the group names the back-end found, offered like select-group entries.
    auto_select_groups: tuple[str, ...] = ()
    pre_login_banner: str | None = None
    banner: str | None = None
    cookie_timeout: int = 300
    max_attempts: int = 3
    max_pending: int = 4096
    server_cert_sha1_hex: str = ""
    profile: ProfileManifest | None = None

    @property
    def offered_groups(self) -> tuple[SelectableGroup, ...]:
        auto = tuple(SelectableGroup(name) for name in self.auto_select_groups)
        return self.select_groups + auto


@attrs.frozen
class LoginRequest:
    """One login request as the flow sees it."""

    message: ClientAuthMessage | None  # None for GET
    context_id: str | None = None
    certificate_user: str | None = None
    certificate_groups: tuple[str, ...] = ()


def login_request_from_http(
    event: AuthGet | AuthPost,
    *,
    certificate_user: str | None = None,
    certificate_groups: Sequence[str] = (),
) -> LoginRequest:
    """Build a `LoginRequest`; raises `AuthXmlError` for a body the peer should not have sent."""
    request = event.request
    message = None
    if isinstance(event, AuthPost):
        message = parse_auth_body(request.body, request.content_type)
    return LoginRequest(
        message=message,
        context_id=request.cookies.get("webvpncontext") or None,
        certificate_user=certificate_user,
        certificate_groups=tuple(certificate_groups),
    )


class CredentialOutcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # wrong secret: the user may retry
    CHALLENGE = "challenge"  # the back-end asks one more question (RADIUS Access-Challenge)
    DENIED = "denied"  # final: e.g. not a member of the selected group
    BACKEND_ERROR = "backend-error"


@attrs.frozen
class CredentialResult:
    outcome: CredentialOutcome
    prompt: str | None = None  # the question of a CHALLENGE
    group: str | None = None  # the group the back-end settled on (default group, auto-select)


@attrs.frozen
class Respond:
    """Send this response; close the connection afterwards when `response.close`."""

    response: HttpResponse


@attrs.frozen
class CheckCredentials:
    """Run the authenticator, then call `AuthFlow.credentials_checked(self, result, now)`."""

    context_id: str
    username: str
    group: str | None
    step_index: int
    secret: str = attrs.field(repr=False)  # never in logs


@attrs.frozen
class LoginSucceeded:
    """Login finished: register the session, then send `flow.success_response(cookie)`."""

    context_id: str
    username: str
    group: str | None


FlowAction = Respond | CheckCredentials | LoginSucceeded


class _Phase(enum.Enum):
    WAITING_SECRET = "waiting-secret"
    CHECKING = "checking"  # an authenticator runs for this context right now


@attrs.define
class _PendingLogin:
    username: str
    group: str | None
    expires_at: float
    step_index: int = 0
    failures: int = 0
    challenges: int = 0
    phase: _Phase = _Phase.WAITING_SECRET
    current: AuthStep = PASSWORD_STEP


def _new_context_id(token_source: Callable[[int], bytes]) -> str:
    sid = bytearray(token_source(SID_BYTES))
    # ocserv writes its sec-mod instance (0) into byte 0; keep cookies looking the same.
    sid[0] = 0
    return base64.b64encode(bytes(sid)).decode("ascii")


class AuthFlow:
    """All pending logins of one server (or one vhost), keyed by context id."""

    def __init__(
        self,
        settings: AuthFlowSettings,
        *,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.settings = settings
        self._token_source = token_source
        self._pending: dict[str, _PendingLogin] = {}

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def expire(self, now: float) -> None:
        """Forget logins whose context outlived `cookie_timeout`."""
        for context_id in [c for c, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[context_id]

    # -- group rules (3.8) ---------------------------------------------------------------------

    def _resolve_group(self, requested: str | None) -> str | None:
        """Map a selection (name or label) to a group name; None = the user's default group."""
        if not requested or requested == self.settings.default_select_group:
            return None
        for group in self.settings.offered_groups:
            if requested in (group.name, group.label):
                return group.name
        # Unknown names go to the back-end, which rejects groups the user is not in.
        return requested

    def _group_options(
        self, selected: str | None, certificate_groups: Sequence[str] = ()
    ) -> list[GroupOption]:
        configured = [GroupOption(g.shown, g.name) for g in self.settings.offered_groups]
        options: list[GroupOption] = []
        if self.settings.default_select_group is not None:
            options.append(GroupOption(self.settings.default_select_group))
        options.extend(GroupOption(name) for name in certificate_groups)
        options.extend(configured)
        if not options:
            return []
        if selected:
            # Clients resubmit the first option, so the chosen group moves to the front.
            for index, option in enumerate(options):
                if selected in (option.label, option.value):
                    options.insert(0, options.pop(index))
                    break
        return options

    # -- forms ---------------------------------------------------------------------------------

    def _first_form(self, request: LoginRequest, message: str = USERNAME_MESSAGE) -> Respond:
        selected = request.message.group_select if request.message is not None else None
        inputs = [USERNAME_INPUT] if self.settings.steps else []
        body = build_auth_request(
            message=message,
            inputs=inputs,
            groups=self._group_options(selected, request.certificate_groups),
            banner=self.settings.pre_login_banner,
        )
        return Respond(auth_form_response(body, clear_cookie("webvpncontext")))

    def _step_form(self, context_id: str, message: str, field: FormInput) -> Respond:
        body = build_auth_request(message=message, inputs=[field])
        cookie = session_cookie("webvpncontext", context_id, max_age=self.settings.cookie_timeout)
        return Respond(auth_form_response(body, cookie))

    def success_response(self, cookie: str) -> HttpResponse:
        """The `complete` document and cookies; `cookie` is the session's `webvpn` value."""
        profile = self.settings.profile
        body = build_complete(banner=self.settings.banner, profile=profile)
        hint = webvpnc_cookie_value(
            self.settings.server_cert_sha1_hex,
            profile_path=profile.path if profile is not None else None,
            profile_sha1_hex=profile.sha1_hex if profile is not None else None,
        )
        return auth_success_response(body, cookie, hint)

    # -- the machine ---------------------------------------------------------------------------

    def handle_request(self, request: LoginRequest, now: float) -> FlowAction:
        """Decide the answer to one GET/POST of a login URL."""
        self.expire(now)
        message = request.message
        if message is None:
            # GET restarts the login; a context it carried is abandoned.
            if request.context_id is not None:
                self._pending.pop(request.context_id, None)
            return self._first_form(request)
        if not self.settings.steps:
            return self._certificate_login(request)
        if self.settings.certificate_required and request.certificate_user is None:
            return Respond(auth_failure_response("No certificate"))

        pending = self._pending.get(request.context_id) if request.context_id else None
        if message.username:
            if request.context_id is not None:
                self._pending.pop(request.context_id, None)
            return self._start_login(message.username, message.group_select, now)
        if pending is None or request.context_id is None:
            return self._first_form(request)
        if pending.phase is _Phase.CHECKING:
            # A second answer while the first is being checked: ocserv's "unexpected state".
            self._pending.pop(request.context_id, None)
            return Respond(auth_failure_response())
        if message.password is None:
            self._pending.pop(request.context_id, None)
            return Respond(auth_failure_response("No password"))
        pending.phase = _Phase.CHECKING
        return CheckCredentials(
            context_id=request.context_id,
            username=pending.username,
            group=pending.group,
            step_index=pending.step_index,
            secret=message.password,
        )

    def _start_login(self, username: str, requested_group: str | None, now: float) -> Respond:
        if len(self._pending) >= self.settings.max_pending:
            return Respond(status_only_response(503, "Service Unavailable"))
        context_id = _new_context_id(self._token_source)
        step = self.settings.steps[0]
        self._pending[context_id] = _PendingLogin(
            username=username,
            group=self._resolve_group(requested_group),
            expires_at=now + self.settings.cookie_timeout,
            current=step,
        )
        return self._step_form(context_id, step.message, step.field)

    def _certificate_login(self, request: LoginRequest) -> FlowAction:
        if request.certificate_user is None:
            return Respond(auth_failure_response("No certificate"))
        chosen = request.message.group_select if request.message is not None else None
        if request.certificate_groups and not chosen:
            return self._first_form(request, SELECT_GROUP_MESSAGE)
        group = self._resolve_group(chosen)
        if (
            group is not None
            and request.certificate_groups
            and group not in request.certificate_groups
        ):
            return Respond(auth_failure_response())
        return LoginSucceeded(
            context_id=_new_context_id(self._token_source),
            username=request.certificate_user,
            group=group,
        )

    def credentials_checked(
        self, check: CheckCredentials, result: CredentialResult, now: float
    ) -> FlowAction:
        """Feed the authenticator's verdict for `check`; returns what to send next."""
        pending = self._pending.get(check.context_id)
        if pending is None or pending.phase is not _Phase.CHECKING:
            return Respond(auth_failure_response())
        pending.phase = _Phase.WAITING_SECRET
        if pending.expires_at <= now:
            del self._pending[check.context_id]
            return Respond(auth_failure_response())
        if result.group is not None:
            pending.group = result.group
        outcome = result.outcome
        if outcome is CredentialOutcome.ACCEPTED:
            pending.step_index += 1
            if pending.step_index >= len(self.settings.steps):
                del self._pending[check.context_id]
                return LoginSucceeded(check.context_id, pending.username, pending.group)
            pending.current = self.settings.steps[pending.step_index]
            return self._step_form(check.context_id, pending.current.message, pending.current.field)
        if outcome is CredentialOutcome.CHALLENGE:
            pending.challenges += 1
            pending.current = AuthStep(
                result.prompt or PASSWORD_MESSAGE, secondary_password_input(pending.challenges)
            )
            return self._step_form(check.context_id, pending.current.message, pending.current.field)
        if outcome is CredentialOutcome.REJECTED:
            pending.failures += 1
            if pending.failures < self.settings.max_attempts:
                return self._step_form(
                    check.context_id,
                    LOGIN_FAILED_PREFIX + pending.current.message,
                    pending.current.field,
                )
            del self._pending[check.context_id]
            return Respond(auth_failure_response())
        del self._pending[check.context_id]
        if outcome is CredentialOutcome.BACKEND_ERROR:
            return Respond(auth_failure_response("Internal error"))
        return Respond(auth_failure_response())
