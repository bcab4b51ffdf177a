"""The client's half of the config-auth conversation (protocol.md 3.3-3.7): the init and
auth-reply documents it sends, the auth-request / complete documents it reads, and how a form is
answered from the credentials the caller supplied.

Pure functions over bytes and attrs objects: no HTTP, no sockets. Bodies we build match
openconnect 9.01 byte for byte (Appendix A); server documents are parsed with defusedxml, and
anything we cannot accept raises `AuthDocumentError`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape

import attrs
import defusedxml
import defusedxml.ElementTree

__all__ = [
    "DEFAULT_DEVICE_ID",
    "DEFAULT_VERSION",
    "AuthComplete",
    "AuthDocumentError",
    "AuthForm",
    "Credentials",
    "FormAnswers",
    "FormInput",
    "FormSelect",
    "SelectOption",
    "UnanswerableForm",
    "answer_form",
    "build_auth_reply",
    "build_init",
    "needs_group_reinit",
    "parse_auth_document",
]

DEFAULT_VERSION = "v9.01-3"
DEFAULT_DEVICE_ID = "linux-64"
GROUP_SELECT_FIELD = "group_list"
# A real server document has a few dozen elements; this bounds the work on a hostile one.
MAX_DOCUMENT_BYTES = 256 * 1024
_MAX_ELEMENTS = 1024

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
# The captured bodies end with a newline (Content-Length 365 in A.1), although the spec's prose
# says otherwise; the capture wins.
_EPILOGUE = "</config-auth>\n"
# Fields openconnect sends as <password> whatever the form calls them (protocol.md 3.5).
_SENT_AS_PASSWORD = frozenset({"answer", "whichpin", "new_password"})
_DROPPED_FIELDS = frozenset({"verify_pin", "verify_password"})


class AuthDocumentError(ValueError):
    """The server sent a login document we cannot parse or act on."""


class UnanswerableForm(Exception):
    """The form asks for something the credentials do not hold (openconnect's "User input
    required in non-interactive mode"); `message` is the server's text for the form."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason} (server said: {message!r})" if message else reason)
        self.reason = reason
        self.message = message


@attrs.frozen
class FormInput:
    """An `<input>` of a form: type `text`, `password`, `hidden`, `submit`, ..."""

    type: str
    name: str
    label: str = ""
    value: str = ""


@attrs.frozen
class SelectOption:
    """One `<option>`: `value` falls back to the text when the attribute is absent."""

    value: str
    label: str


@attrs.frozen
class FormSelect:
    name: str
    label: str
    options: tuple[SelectOption, ...]


@attrs.frozen
class AuthForm:
    """An `auth-request` document: one form to fill and POST to `action`."""

    auth_id: str
    action: str
    method: str
    message: str
    banner: str | None
    error: str | None
    inputs: tuple[FormInput, ...]
    selects: tuple[FormSelect, ...]

    def select(self, name: str) -> FormSelect | None:
        return next((s for s in self.selects if s.name == name), None)

    @property
    def asks_for_secret(self) -> bool:
        return any(i.type == "password" for i in self.inputs)


@attrs.frozen
class AuthComplete:
    """The `complete` document (`<auth id="success">`): login finished."""

    banner: str | None
    title: str | None
    session_token: str | None  # openconnect accepts it instead of Set-Cookie; ocserv never sends it
    profile_uri: str | None
    profile_sha1: str | None


def _as_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class Credentials:
    """What the client may answer with. `secrets` feed password-type inputs in order (password,
    then OTP or a second password...), like openconnect's `--passwd-on-stdin` lines."""

    username: str | None = None
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, repr=False)
    group: str | None = None
    # Answers for any other named text input or select, like openconnect's `-F form:name=value`.
    fields: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class FormAnswers:
    """A filled form: field values in form order, the group to select, secrets used up."""

    values: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    group_select: str | None
    secrets_used: int


def _local_name(tag: object) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _text(element: ET.Element | None) -> str | None:
    if element is None:
        return None
    return "".join(element.itertext())


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in parent if _local_name(c.tag) == name), None)


def parse_auth_document(body: bytes) -> AuthForm | AuthComplete:
    """Parse a server `<config-auth>` reply: a form to answer, or the success document."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise AuthDocumentError(f"auth document of {len(body)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    try:
        root = defusedxml.ElementTree.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError, UnicodeError) as exc:
        raise AuthDocumentError(f"malformed auth document: {exc}") from None
    if sum(1 for _ in root.iter()) > _MAX_ELEMENTS:
        raise AuthDocumentError("auth document has too many elements")
    # OpenConnect v3 dialect servers send <auth> as the root (protocol.md 3.10); accept both.
    if _local_name(root.tag) == "auth":
        auth = root
    elif _local_name(root.tag) == "config-auth":
        found = _child(root, "auth")
        if found is None:
            raise AuthDocumentError("config-auth document has no <auth> element")
        auth = found
    else:
        raise AuthDocumentError(f"unexpected root element <{_local_name(root.tag)}>")

    auth_id = auth.get("id", "")
    if auth_id == "success":
        session_token = _text(_child(root, "session-token")) if auth is not root else None
        uri, sha1 = _profile_manifest(root)
        return AuthComplete(
            banner=_text(_child(auth, "banner")),
            title=_text(_child(auth, "title")),
            session_token=session_token,
            profile_uri=uri,
            profile_sha1=sha1,
        )

    form = _child(auth, "form")
    inputs: list[FormInput] = []
    selects: list[FormSelect] = []
    action, method = "/", "post"
    if form is not None:
        # openconnect defaults: POST, and "/" when action is missing or empty (protocol.md 3.4).
        action = form.get("action") or "/"
        method = (form.get("method") or "post").lower()
        for element in form:
            kind = _local_name(element.tag)
            if kind == "input":
                inputs.append(
                    FormInput(
                        type=(element.get("type") or "text").lower(),
                        name=element.get("name", ""),
                        label=element.get("label", ""),
                        value=element.get("value", ""),
                    )
                )
            elif kind == "select":
                options = tuple(
                    SelectOption(
                        value=option.get("value", _text(option) or ""), label=_text(option) or ""
                    )
                    for option in element
                    if _local_name(option.tag) == "option"
                )
                selects.append(
                    FormSelect(element.get("name", ""), element.get("label", ""), options)
                )
    if method != "post":
        raise AuthDocumentError(f"form method {method!r} is not POST")
    return AuthForm(
        auth_id=auth_id,
        action=action,
        method=method,
        message=_text(_child(auth, "message")) or "",
        banner=_text(_child(auth, "banner")),
        error=_text(_child(auth, "error")),
        inputs=tuple(inputs),
        selects=tuple(selects),
    )


def _profile_manifest(root: ET.Element) -> tuple[str | None, str | None]:
    for file in root.iter():
        if _local_name(file.tag) == "file" and file.get("type") == "profile":
            return _text(_child(file, "uri")), _text(_child(file, "hash"))
    return None, None


def _matching_option(select: FormSelect, group: str) -> SelectOption | None:
    # Match the value first, then the friendly label (ocserv accepts both, protocol.md 3.8).
    for option in select.options:
        if option.value == group:
            return option
    for option in select.options:
        if option.label == group:
            return option
    return None


def needs_group_reinit(form: AuthForm, group: str | None) -> bool:
    """openconnect re-sends an init with `<group-select>` when the wanted group is not the
    form's first option, and the server answers with the list reordered (protocol.md 3.6)."""
    select = form.select(GROUP_SELECT_FIELD)
    if group is None or select is None or not select.options:
        return False
    option = _matching_option(select, group)
    return option is not None and option != select.options[0]


def answer_form(form: AuthForm, credentials: Credentials, secrets_used: int = 0) -> FormAnswers:
    """Fill `form` from `credentials`; `secrets_used` counts secrets earlier forms consumed.

    Raises `UnanswerableForm` when an input needs a value we do not have, e.g. a second
    password prompt after a failed login when no further secret was supplied.
    """
    values: list[tuple[str, str]] = []
    group_select: str | None = None
    used = secrets_used
    for item in form.inputs:
        if item.type in ("submit", "reset") or not item.name or item.name in _DROPPED_FIELDS:
            continue
        if item.type == "hidden":
            values.append((item.name, item.value))
        elif item.type == "password":
            if item.name in credentials.fields:
                values.append((item.name, credentials.fields[item.name]))
                continue
            if used >= len(credentials.secrets):
                raise UnanswerableForm(f"no secret left for {item.name!r}", form.message)
            values.append((item.name, credentials.secrets[used]))
            used += 1
        elif item.name == "username" and credentials.username is not None:
            values.append((item.name, credentials.username))
        elif item.name in credentials.fields:
            values.append((item.name, credentials.fields[item.name]))
        else:
            raise UnanswerableForm(f"no answer for input {item.name!r}", form.message)
    for select in form.selects:
        wanted = credentials.fields.get(select.name)
        if select.name == GROUP_SELECT_FIELD and credentials.group is not None:
            wanted = credentials.group
        if wanted is None:
            if not select.options:
                continue
            # Like a browser: an untouched select submits its first option.
            chosen = select.options[0]
        else:
            found = _matching_option(select, wanted)
            if found is None:
                choices = ", ".join(o.value for o in select.options)
                raise UnanswerableForm(
                    f"{wanted!r} is not an option of {select.name!r} ({choices})", form.message
                )
            chosen = found
        if select.name == GROUP_SELECT_FIELD:
            group_select = chosen.value
        else:
            values.append((select.name, chosen.value))
    asks_username = any(item.name == "username" for item in form.inputs)
    if group_select is None and credentials.group is not None and asks_username:
        # No list offered, but ocserv reads <group-select> with the username (3.8); later
        # steps never carry it (A.7).
        group_select = credentials.group
    return FormAnswers(tuple(values), group_select, used)


def _prologue(kind: str, version: str, device_id: str) -> str:
    return (
        f'{_DECLARATION}<config-auth client="vpn" type="{kind}" aggregate-auth-version="2">'
        f'<version who="vpn">{escape(version)}</version>'
        f"<device-id>{escape(device_id)}</device-id>"
        "<capabilities><auth-method>single-sign-on-v2</auth-method>"
        "<auth-method>single-sign-on-external-browser</auth-method></capabilities>"
    )


def build_init(
    group_access: str,
    *,
    group_select: str | None = None,
    version: str = DEFAULT_VERSION,
    device_id: str = DEFAULT_DEVICE_ID,
) -> bytes:
    """The `init` document (protocol.md 3.3); `group_access` is the URL the user typed."""
    body = _prologue("init", version, device_id)
    body += f"<group-access>{escape(group_access)}</group-access>"
    if group_select is not None:
        body += f"<group-select>{escape(group_select)}</group-select>"
    return (body + _EPILOGUE).encode("utf-8")


def build_auth_reply(
    answers: FormAnswers | Sequence[tuple[str, str]],
    *,
    group_select: str | None = None,
    version: str = DEFAULT_VERSION,
    device_id: str = DEFAULT_DEVICE_ID,
) -> bytes:
    """The `auth-reply` document: each field as `<name>value</name>` inside `<auth>`, the group
    as `<group-select>` under the root (protocol.md 3.5)."""
    if isinstance(answers, FormAnswers):
        values: Sequence[tuple[str, str]] = answers.values
        group_select = answers.group_select if group_select is None else group_select
    else:
        values = answers
    body = _prologue("auth-reply", version, device_id) + "<auth>"
    for name, value in values:
        if name in _DROPPED_FIELDS:
            continue
        tag = "password" if name in _SENT_AS_PASSWORD else name
        if not _is_xml_name(tag):
            raise ValueError(f"form field name {name!r} cannot be an XML element name")
        body += f"<{tag}>{escape(value)}</{tag}>"
    body += "</auth>"
    if group_select is not None:
        body += f"<group-select>{escape(group_select)}</group-select>"
    return (body + _EPILOGUE).encode("utf-8")


def _is_xml_name(name: str) -> bool:
    # Field names come from the server's form; keep them to what forms ever use.
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c in "_-." for c in name)
    )
