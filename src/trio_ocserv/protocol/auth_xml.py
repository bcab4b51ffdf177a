"""The config-auth documents of the AnyConnect login (protocol.md 3.3-3.7, 3.10, 3.13).

This module owns both directions of the login conversation's bodies:

* parsing what the client sends: `config-auth` XML (init, auth-reply, logout) through defusedxml
  (no DTD, no entities, no external references) and legacy urlencoded form answers;
* building what the server sends: auth-request forms (username, password, OTP/challenge, group
  select), the `complete` document, and the small static bodies.

It knows nothing about HTTP framing, sessions or which form comes next (that is `auth.flow`).
Builders reproduce ocserv 1.1.6 byte for byte (Appendix A), except that inserted text is XML-escaped
(ocserv inserts it raw; the escaped form is identical for the strings ocserv itself produces).
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

import attrs
import defusedxml
import defusedxml.ElementTree

__all__ = [
    "MAX_AUTH_BODY",
    "PASSWORD_INPUT",
    "USERNAME_INPUT",
    "AuthXmlError",
    "ClientAuthMessage",
    "FormInput",
    "GroupOption",
    "ProfileManifest",
    "build_auth_request",
    "build_complete",
    "parse_auth_body",
    "parse_config_auth",
    "parse_form_answers",
    "secondary_password_input",
]

# Longest body this module parses; the HTTP layer enforces the same limit on the wire.
MAX_AUTH_BODY = 256 * 1024
# A real config-auth document has about a dozen elements; this bounds work on hostile input.
_MAX_ELEMENTS = 512
_MAX_FORM_FIELDS = 64

_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_SERVER_VERSION = '<version who="sg">0.1(1)</version>\n'


class AuthXmlError(ValueError):
    """The peer sent a login body we cannot accept (malformed, hostile or oversized)."""


@attrs.frozen
class ClientAuthMessage:
    """What the client said in one login request, whatever dialect it used.

    `kind` is `config-auth@type` (`init`, `auth-reply`, `logout`), or `form` for legacy answers.
    `fields` holds every `<auth>` child (XML) or form parameter by name, in document order.
    `password` follows ocserv's rule: the first field named `password...` or `..._password`.
    """

    kind: str
    username: str | None = None
    # Secrets stay out of reprs, hence out of logs and test failure output.
    password: str | None = attrs.field(default=None, repr=False)
    group_select: str | None = None
    fields: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    client_cert_fail: bool = False
    session_token: str | None = None


def _is_password_field(name: str) -> bool:
    return name.startswith("password") or name.endswith("_password")


def _first_password(fields: Mapping[str, str]) -> str | None:
    for name, value in fields.items():
        if _is_password_field(name):
            return value
    return None


def _local_name(tag: object) -> str:
    # Comments and processing instructions have non-string tags; namespaces are ignored.
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def parse_config_auth(body: bytes) -> ClientAuthMessage:
    """Parse a client `<config-auth>` document; raise `AuthXmlError` on anything unacceptable."""
    if len(body) > MAX_AUTH_BODY:
        raise AuthXmlError(f"auth body of {len(body)} bytes exceeds {MAX_AUTH_BODY}")
    try:
        root = defusedxml.ElementTree.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError, LookupError) as exc:
        raise AuthXmlError(f"malformed config-auth XML: {exc}") from None
    if _local_name(root.tag) != "config-auth":
        raise AuthXmlError(f"root element is <{_local_name(root.tag)}>, not <config-auth>")
    elements = list(root.iter())
    if len(elements) > _MAX_ELEMENTS:
        raise AuthXmlError(f"config-auth has {len(elements)} elements")

    fields: dict[str, str] = {}
    group_select: str | None = None
    session_token: str | None = None
    client_cert_fail = False
    for child in root:
        name = _local_name(child.tag)
        if name == "auth":
            for field in child:
                field_name = _local_name(field.tag)
                if field_name and field_name not in fields:
                    fields[field_name] = field.text or ""
        elif name == "group-select" and group_select is None:
            group_select = child.text or ""
        elif name == "session-token" and session_token is None:
            session_token = child.text or ""
        elif name == "client-cert-fail":
            client_cert_fail = True
    return ClientAuthMessage(
        kind=root.get("type", ""),
        username=fields.get("username"),
        password=_first_password(fields),
        group_select=group_select,
        fields=fields,
        client_cert_fail=client_cert_fail,
        session_token=session_token,
    )


def parse_form_answers(body: bytes) -> ClientAuthMessage:
    """Parse a legacy `application/x-www-form-urlencoded` answer (`--no-xmlpost`, 3.10)."""
    if len(body) > MAX_AUTH_BODY:
        raise AuthXmlError(f"form body of {len(body)} bytes exceeds {MAX_AUTH_BODY}")
    try:
        text = body.decode("ascii")
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeError, ValueError) as exc:
        raise AuthXmlError(f"malformed form body: {exc}") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return ClientAuthMessage(
        kind="form",
        username=fields.get("username"),
        password=_first_password(fields),
        group_select=fields.get("group_list"),
        fields=fields,
    )


def parse_auth_body(body: bytes, content_type: str | None) -> ClientAuthMessage:
    """Pick the dialect the way ocserv does: urlencoded bodies are forms, everything else XML."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return parse_form_answers(body)
    if not body.strip():
        return ClientAuthMessage(kind="")
    return parse_config_auth(body)


# -- server documents ------------------------------------------------------------------------


@attrs.frozen
class FormInput:
    """One `<input>` of an auth-request form."""

    type: str
    name: str
    label: str


USERNAME_INPUT = FormInput("text", "username", "Username:")
PASSWORD_INPUT = FormInput("password", "password", "Password:")


def secondary_password_input(counter: int) -> FormInput:
    """The input ocserv uses for the Nth extra password of a multi-password back-end."""
    return FormInput("password", "secondary_password", f"Password{counter}:")


@attrs.frozen
class GroupOption:
    """One `<option>` of the group selector; `value=None` writes `<option>LABEL</option>`."""

    label: str
    value: str | None = None


@attrs.frozen
class ProfileManifest:
    """The `user-profile` advertisement of the complete document (3.7)."""

    path: str
    sha1_hex: str


def _attr(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def build_auth_request(
    *,
    message: str,
    inputs: Sequence[FormInput],
    groups: Sequence[GroupOption] = (),
    banner: str | None = None,
    action: str = "/auth",
    auth_id: str = "main",
) -> bytes:
    """An auth-request form as ocserv 1.1.6 writes it (3.4): `\\n` line ends, no final newline."""
    parts = [
        _XML_DECLARATION,
        '<config-auth client="vpn" type="auth-request">\n',
        _SERVER_VERSION,
        f'<auth id="{_attr(auth_id)}">\n',
    ]
    if banner is not None:
        parts.append(f"<banner>{escape(banner)}</banner>")
    parts.append(f"<message>{escape(message)}</message>\n")
    parts.append(f'<form method="post" action="{_attr(action)}">\n')
    parts.extend(
        f'<input type="{_attr(i.type)}" name="{_attr(i.name)}" label="{_attr(i.label)}" />\n'
        for i in inputs
    )
    if groups:
        parts.append('<select name="group_list" label="Group:">\n')
        for option in groups:
            if option.value is None:
                parts.append(f"<option>{escape(option.label)}</option>\n")
            else:
                parts.append(
                    f'<option value="{_attr(option.value)}">{escape(option.label)}</option>\n'
                )
        parts.append("</select>\n")
    parts.append("</form></auth>\n</config-auth>")
    return "".join(parts).encode("utf-8")


def build_complete(*, banner: str | None = None, profile: ProfileManifest | None = None) -> bytes:
    """The `type="complete"` document that ends a successful login (3.7)."""
    parts = [
        _XML_DECLARATION,
        '<config-auth client="vpn" type="complete">\n',
        _SERVER_VERSION,
        '<auth id="success">\n',
        "<title>SSL VPN Service</title>",
    ]
    if banner is not None:
        parts.append(f"<banner>{escape(banner)}</banner>")
    if profile is None:
        parts.append("</auth></config-auth>\n")
    else:
        # Observed (Appendix A.8, 500 bytes): this variant has no final newline.
        parts.append(
            '</auth>\n<config client="vpn" type="private"><vpn-profile-manifest><vpn rev="1.0">'
            '<file type="profile" service-type="user">'
            f"<uri>/profiles/{escape(profile.path)}</uri>"
            f'<hash type="sha1">{escape(profile.sha1_hex.upper())}</hash>'
            "</file></vpn></vpn-profile-manifest>\n</config></config-auth>"
        )
    return "".join(parts).encode("utf-8")
