"""The client's login documents against the captured session of protocol.md Appendix A.

Fixtures in data/ are the Appendix A bodies, byte-exact as captured (`a_N_body.xml`; the client
bodies end with the newline the capture shows). No sockets.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol import auth_xml
from trio_ocserv.testing import client_xml
from trio_ocserv.testing.client_xml import (
    AuthComplete,
    AuthDocumentError,
    AuthForm,
    Credentials,
    UnanswerableForm,
)

DATA = Path(__file__).parent / "data"


def body(name: str) -> bytes:
    return (DATA / f"{name}_body.xml").read_bytes()


def form(name: str) -> AuthForm:
    document = client_xml.parse_auth_document(body(name))
    assert isinstance(document, AuthForm)
    return document


def test_first_form_with_banner_and_groups() -> None:
    first = form("a_2")
    assert first.auth_id == "main"
    assert (first.action, first.method) == ("/auth", "post")
    assert first.banner == "Authorized users only"
    assert first.message == "Please enter your username."
    assert [(i.type, i.name, i.label) for i in first.inputs] == [("text", "username", "Username:")]
    groups = first.select("group_list")
    assert groups is not None
    # An <option> without value= submits its text.
    assert [(o.value, o.label) for o in groups.options] == [
        ("DEFAULT", "DEFAULT"),
        ("engineering", "engineering"),
        ("sales", "Sales Team"),
    ]
    assert not first.asks_for_secret


def test_group_reinit_only_when_the_group_is_not_first() -> None:
    # A.2 lists DEFAULT first, so openconnect re-sent an init (A.3); A.4 is the reordered form.
    assert client_xml.needs_group_reinit(form("a_2"), "engineering")
    assert client_xml.needs_group_reinit(form("a_2"), "Sales Team")  # friendly name matches
    assert not client_xml.needs_group_reinit(form("a_4"), "engineering")
    assert not client_xml.needs_group_reinit(form("a_2"), None)
    assert not client_xml.needs_group_reinit(form("a_6"), "engineering")  # no group list


def test_init_bodies_match_the_capture() -> None:
    assert client_xml.build_init("https://198.18.0.1/") == body("a_1")
    regroup = client_xml.build_init("https://198.18.0.1/auth", group_select="engineering")
    assert regroup == body("a_3")


def test_username_and_password_replies_match_the_capture() -> None:
    credentials = Credentials(username="alice", secrets=["test123"], group="engineering")
    username_answers = client_xml.answer_form(form("a_4"), credentials)
    assert username_answers.group_select == "engineering"
    assert username_answers.secrets_used == 0
    assert client_xml.build_auth_reply(username_answers) == body("a_5")

    password_form = form("a_6")
    assert password_form.message == "Please enter your password."
    assert password_form.asks_for_secret
    password_answers = client_xml.answer_form(password_form, credentials)
    assert password_answers.secrets_used == 1
    assert client_xml.build_auth_reply(password_answers) == body("a_7")


def test_our_replies_parse_as_the_server_reads_them() -> None:
    credentials = Credentials(username="bob<&>", secrets=["p&ss<word>"], group="sales")
    reply = client_xml.build_auth_reply(client_xml.answer_form(form("a_2"), credentials))
    message = auth_xml.parse_config_auth(reply)
    assert (message.kind, message.username, message.group_select) == (
        "auth-reply",
        "bob<&>",
        "sales",
    )
    reply = client_xml.build_auth_reply(client_xml.answer_form(form("a_6"), credentials))
    assert auth_xml.parse_config_auth(reply).password == "p&ss<word>"


def test_complete_document_with_profile() -> None:
    complete = client_xml.parse_auth_document(body("a_8"))
    assert isinstance(complete, AuthComplete)
    assert complete.banner == "Welcome to the spec test VPN"
    assert complete.title == "SSL VPN Service"
    assert complete.session_token is None
    assert complete.profile_uri == "/profiles//tmp/oct/profile.xml"
    assert complete.profile_sha1 == "5D25748E452ADC6C45124AA5C8424AD8298330EE"


def test_forms_built_by_our_server_module_are_understood() -> None:
    document = auth_xml.build_auth_request(
        message="Please enter your OTP password.",
        inputs=[auth_xml.PASSWORD_INPUT, auth_xml.secondary_password_input(1)],
        groups=[auth_xml.GroupOption("DEFAULT"), auth_xml.GroupOption("Sales", "sales")],
    )
    parsed = client_xml.parse_auth_document(document)
    assert isinstance(parsed, AuthForm)
    credentials = Credentials(secrets=["first", "second"], group="sales")
    answers = client_xml.answer_form(parsed, credentials)
    assert answers.values == (("password", "first"), ("secondary_password", "second"))
    assert answers.group_select == "sales"
    assert isinstance(client_xml.parse_auth_document(auth_xml.build_complete()), AuthComplete)


def test_failed_login_form_cannot_be_answered_without_another_secret() -> None:
    retry = auth_xml.build_auth_request(
        message="Login failed.\nPlease enter your password.", inputs=[auth_xml.PASSWORD_INPUT]
    )
    parsed = client_xml.parse_auth_document(retry)
    assert isinstance(parsed, AuthForm)
    credentials = Credentials(username="bob", secrets=["wrong"])
    with pytest.raises(UnanswerableForm) as caught:
        client_xml.answer_form(parsed, credentials, secrets_used=1)
    assert caught.value.message == "Login failed.\nPlease enter your password."
    # With a second secret it is simply the next password (openconnect's stdin lines).
    answers = client_xml.answer_form(parsed, Credentials(secrets=["wrong", "right"]), 1)
    assert answers.values == (("password", "right"),)


def test_hidden_fields_are_echoed_and_special_names_mapped() -> None:
    document = b"""<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request"><auth id="challenge">
<message>Answer</message><error>Try again</error>
<form action="/next"><input type="hidden" name="state" value="s1"/>
<input type="password" name="answer" label="Code:"/><input type="submit" name="ok"/>
<input type="password" name="verify_pin"/>
<select name="realm"><option value="r1">One</option><option value="r2">Two</option></select>
</form></auth></config-auth>"""
    parsed = client_xml.parse_auth_document(document)
    assert isinstance(parsed, AuthForm)
    assert (parsed.auth_id, parsed.action, parsed.method) == ("challenge", "/next", "post")
    assert parsed.error == "Try again"
    answers = client_xml.answer_form(
        parsed, Credentials(secrets=["123456"], fields={"realm": "Two"})
    )
    assert answers.values == (("state", "s1"), ("answer", "123456"), ("realm", "r2"))
    reply = client_xml.build_auth_reply(answers)
    # `answer` travels as <password>; verify_* is never sent (protocol.md 3.5).
    assert b"<password>123456</password>" in reply
    assert b"verify_pin" not in reply
    assert auth_xml.parse_config_auth(reply).fields["state"] == "s1"


def test_unknown_text_input_and_unknown_group_are_unanswerable() -> None:
    with pytest.raises(UnanswerableForm, match="username"):
        client_xml.answer_form(form("a_2"), Credentials())
    with pytest.raises(UnanswerableForm, match="marketing"):
        client_xml.answer_form(form("a_2"), Credentials(username="x", group="marketing"))


def test_untouched_group_list_submits_the_first_option() -> None:
    answers = client_xml.answer_form(form("a_2"), Credentials(username="bob"))
    assert answers.group_select == "DEFAULT"


def test_group_without_a_list_goes_with_the_username_only() -> None:
    username_form = auth_xml.build_auth_request(message="m", inputs=[auth_xml.USERNAME_INPUT])
    parsed = client_xml.parse_auth_document(username_form)
    assert isinstance(parsed, AuthForm)
    credentials = Credentials(username="bob", secrets=["x"], group="sales")
    assert client_xml.answer_form(parsed, credentials).group_select == "sales"
    assert client_xml.answer_form(form("a_6"), credentials).group_select is None


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"<html><body>hi</body></html>",
        b"<config-auth client='vpn'><version/></config-auth>",
        b'<config-auth><auth id="main"><form method="get" action="/x"/></auth></config-auth>',
        b'<!DOCTYPE x [<!ENTITY a "b">]><config-auth><auth id="main"/></config-auth>',
        b"<config-auth>" + b"<x/>" * 2000 + b"</config-auth>",
    ],
)
def test_bad_documents_raise_our_error(document: bytes) -> None:
    with pytest.raises(AuthDocumentError):
        client_xml.parse_auth_document(document)


def test_v3_dialect_auth_root_is_accepted() -> None:
    parsed = client_xml.parse_auth_document(
        b'<auth id="success"><title>SSL VPN Service</title></auth>'
    )
    assert isinstance(parsed, AuthComplete)
    assert parsed.title == "SSL VPN Service"


def test_field_names_that_are_not_xml_names_are_refused() -> None:
    with pytest.raises(ValueError, match="XML element name"):
        client_xml.build_auth_reply([("bad name>", "x")])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_our_error(data: bytes) -> None:
    with contextlib.suppress(AuthDocumentError):
        client_xml.parse_auth_document(data)


_xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn")), max_size=30)


@settings(max_examples=100, deadline=None)
@given(message=_xml_text, banner=_xml_text, names=st.lists(_xml_text, max_size=4))
def test_server_forms_with_arbitrary_text_parse(
    message: str, banner: str, names: list[str]
) -> None:
    groups = [auth_xml.GroupOption(name, name) for name in names]
    document = auth_xml.build_auth_request(
        message=message, inputs=[auth_xml.USERNAME_INPUT], groups=groups, banner=banner
    )
    parsed = client_xml.parse_auth_document(document)
    assert isinstance(parsed, AuthForm)
    assert parsed.message == message
    assert parsed.banner == banner
    select = parsed.select("group_list")
    assert ([o.value for o in select.options] if select else []) == names
