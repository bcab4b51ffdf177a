"""config-auth parsing and the server's documents, against the Appendix A capture."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.auth_xml import (
    MAX_AUTH_BODY,
    PASSWORD_INPUT,
    USERNAME_INPUT,
    AuthXmlError,
    FormInput,
    GroupOption,
    ProfileManifest,
    build_auth_request,
    build_complete,
    parse_auth_body,
    parse_config_auth,
    parse_form_answers,
    secondary_password_input,
)

DATA = Path(__file__).parent / "data" / "appendix_a"


def body(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes().partition(b"\r\n\r\n")[2]


def reply(auth: str, extra: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="auth-reply">'
        f"<auth>{auth}</auth>{extra}</config-auth>\n"
    ).encode()


# -- parsing ----------------------------------------------------------------------------------


def test_init_a1() -> None:
    msg = parse_config_auth(body("a01_request"))
    assert msg.kind == "init"
    assert (msg.username, msg.password, msg.group_select) == (None, None, None)
    assert msg.fields == {}


def test_init_with_group_a3() -> None:
    msg = parse_config_auth(body("a03_request"))
    assert (msg.kind, msg.group_select, msg.username) == ("init", "engineering", None)


def test_username_reply_a5() -> None:
    msg = parse_config_auth(body("a05_request"))
    assert msg.kind == "auth-reply"
    assert (msg.username, msg.group_select, msg.password) == ("alice", "engineering", None)
    assert msg.fields == {"username": "alice"}


def test_password_reply_a7() -> None:
    msg = parse_config_auth(body("a07_request"))
    assert (msg.username, msg.password) == (None, "test123")


def test_entities_in_values_are_decoded() -> None:
    msg = parse_config_auth(reply("<username>a&amp;b&lt;c&#65;</username>"))
    assert msg.username == "a&b<cA"


@pytest.mark.parametrize("name", ["password", "secondary_password", "new_password", "password2"])
def test_password_field_names_follow_ocserv(name: str) -> None:
    msg = parse_config_auth(reply(f"<username>u</username><{name}>s3</{name}>"))
    assert msg.password == "s3"
    assert msg.fields[name] == "s3"


def test_first_password_like_field_wins() -> None:
    msg = parse_config_auth(
        reply("<secondary_password>one</secondary_password><password>two</password>")
    )
    assert msg.password == "one"


def test_logout_and_cert_fail_markers() -> None:
    doc = (
        b'<config-auth client="vpn" type="logout"><session-token>abc</session-token>'
        b"<client-cert-fail/></config-auth>"
    )
    msg = parse_config_auth(doc)
    assert (msg.kind, msg.session_token, msg.client_cert_fail) == ("logout", "abc", True)


def test_legacy_form_answers_a12() -> None:
    first = parse_form_answers(b"group_list=sales&username=alice")
    assert (first.kind, first.group_select, first.username, first.password) == (
        "form",
        "sales",
        "alice",
        None,
    )
    second = parse_form_answers(b"password=test123")
    assert second.password == "test123"
    decoded = parse_form_answers(b"username=a+b%26c&password=%C3%A9t%C3%A9")
    assert (decoded.username, decoded.password) == ("a b&c", "été")


def test_dialect_is_chosen_by_content_type() -> None:
    form = parse_auth_body(b"username=bob", "application/x-www-form-urlencoded")
    assert form.kind == "form"
    assert form.username == "bob"
    xml = parse_auth_body(body("a05_request"), "application/xml; charset=utf-8")
    assert xml.username == "alice"
    assert parse_auth_body(b"", None).kind == ""


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<config-auth type="auth-reply"><auth><username>&lol3;</username></auth></config-auth>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE c [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<config-auth type="auth-reply"><auth><username>&xxe;</username></auth></config-auth>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE c [<!ENTITY % p SYSTEM "http://198.51.100.1/x.dtd"> %p;]>
<config-auth type="init"/>"""


@pytest.mark.parametrize(
    "doc",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        PARAMETER_ENTITY,
        b'<!DOCTYPE config-auth SYSTEM "x.dtd"><config-auth/>',
        b"<config-auth><auth><username>x</auth></config-auth>",
        b"<other-root/>",
        b"\xff\xfe<config-auth/>",
        b'<?xml version="1.0" encoding="AUTF-8"?><config-auth/>',
        b"",
        b"<config-auth>" + b"<a/>" * 600 + b"</config-auth>",
        b"<config-auth>" + b"x" * MAX_AUTH_BODY + b"</config-auth>",
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "parameter-entity",
        "doctype",
        "malformed",
        "wrong-root",
        "bad-encoding",
        "unknown-declared-encoding",
        "empty",
        "too-many-elements",
        "oversized",
    ],
)
def test_hostile_or_broken_xml_is_refused(doc: bytes) -> None:
    with pytest.raises(AuthXmlError):
        parse_config_auth(doc)


@pytest.mark.parametrize(
    "form",
    [b"username=\xff", b"password=%ff", b"&".join([b"a=1"] * 100), b"x" * (MAX_AUTH_BODY + 1)],
    ids=["non-ascii", "bad-utf8-escape", "too-many-fields", "oversized"],
)
def test_broken_forms_are_refused(form: bytes) -> None:
    with pytest.raises(AuthXmlError):
        parse_form_answers(form)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([None, "application/x-www-form-urlencoded"]))
def test_fuzz_arbitrary_bodies_raise_only_auth_xml_error(data: bytes, ctype: str | None) -> None:
    try:
        msg = parse_auth_body(data, ctype)
    except AuthXmlError:
        return
    # Whatever parsed is internally consistent.
    assert msg.username == msg.fields.get("username")
    if msg.password is not None:
        assert msg.password in msg.fields.values()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(max_size=20))
def test_fuzz_mutated_capture(cut: int, insert: bytes) -> None:
    original = body("a05_request")
    try:
        parse_config_auth(original[:cut] + insert + original[cut:])
    except AuthXmlError as exc:
        assert str(exc)


XML_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="\r"),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(XML_TEXT, XML_TEXT)
def test_escaped_values_round_trip(username: str, password: str) -> None:
    from xml.sax.saxutils import escape

    doc = reply(f"<username>{escape(username)}</username><password>{escape(password)}</password>")
    msg = parse_config_auth(doc)
    assert (msg.username, msg.password) == (username, password)


# -- building -----------------------------------------------------------------------------------

APPENDIX_GROUPS = [
    GroupOption("DEFAULT"),
    GroupOption("engineering", "engineering"),
    GroupOption("Sales Team", "sales"),
]


def test_username_form_is_byte_exact_a2() -> None:
    built = build_auth_request(
        message="Please enter your username.",
        inputs=[USERNAME_INPUT],
        groups=APPENDIX_GROUPS,
        banner="Authorized users only",
    )
    assert built == body("a02_response")
    assert len(built) == 512


def test_reordered_form_is_byte_exact_a4() -> None:
    built = build_auth_request(
        message="Please enter your username.",
        inputs=[USERNAME_INPUT],
        groups=[APPENDIX_GROUPS[1], APPENDIX_GROUPS[0], APPENDIX_GROUPS[2]],
        banner="Authorized users only",
    )
    assert built == body("a04_response")


def test_password_form_is_byte_exact_a6() -> None:
    built = build_auth_request(message="Please enter your password.", inputs=[PASSWORD_INPUT])
    assert built == body("a06_response")


def test_complete_document_is_byte_exact_a8() -> None:
    built = build_complete(
        banner="Welcome to the spec test VPN",
        profile=ProfileManifest("/tmp/oct/profile.xml", "5d25748e452adc6c45124aa5c8424ad8298330ee"),
    )
    assert built == body("a08_response")


def test_complete_without_profile_or_banner() -> None:
    assert build_complete(banner="Hi").endswith(
        b"<title>SSL VPN Service</title><banner>Hi</banner></auth></config-auth>\n"
    )
    assert build_complete().endswith(b"<title>SSL VPN Service</title></auth></config-auth>\n")


def test_login_failed_form_keeps_literal_newline() -> None:
    built = build_auth_request(
        message="Login failed.\nPlease enter your password.", inputs=[PASSWORD_INPUT]
    )
    assert b"<message>Login failed.\nPlease enter your password.</message>\n" in built


def test_challenge_input_and_escaping() -> None:
    built = build_auth_request(
        message='Enter <code> & "pin"',
        inputs=[secondary_password_input(2)],
        groups=[GroupOption('a"b', "x<y")],
    )
    assert b'<input type="password" name="secondary_password" label="Password2:" />' in built
    root = ET.fromstring(built)
    assert root.findtext("auth/message") == 'Enter <code> & "pin"'
    option = root.find("auth/form/select/option")
    assert option is not None
    assert (option.get("value"), option.text) == ("x<y", 'a"b')


@settings(max_examples=100, deadline=None)
@given(XML_TEXT, XML_TEXT, st.lists(st.tuples(XML_TEXT, XML_TEXT), max_size=4))
def test_built_forms_are_well_formed(
    message: str, banner: str, groups: list[tuple[str, str]]
) -> None:
    built = build_auth_request(
        message=message,
        inputs=[USERNAME_INPUT, FormInput("password", "password", "Password:")],
        groups=[GroupOption(label, value) for label, value in groups],
        banner=banner,
    )
    root = ET.fromstring(built)
    assert root.get("type") == "auth-request"
    assert (root.findtext("auth/message") or "") == message.replace("\r", "\n")
    assert len(root.findall("auth/form/select/option")) == len(groups)
