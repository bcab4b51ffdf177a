"""lex_config: lines to entries and vhost headers, comments, quotes, line numbers, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.config.errors import ConfigError, SourceLocation
from trio_ocserv.config.lexer import ConfigEntry, VhostHeader, lex_config


def test_entries_keep_their_line_numbers_and_skip_comments() -> None:
    text = "# comment\n\n  ; also a comment\ntcp-port = 443\n   Route=10.0.0.0/8   \n"
    assert lex_config(text, "f.conf") == [
        ConfigEntry(SourceLocation("f.conf", 4), "tcp-port", "443"),
        ConfigEntry(SourceLocation("f.conf", 5), "route", "10.0.0.0/8"),
    ]


def test_quotes_are_removed_and_inner_text_is_verbatim() -> None:
    items = lex_config('banner = "  Hi = there # friend "\nkey-pin = a"b\n', "f")
    assert [(i.key, i.value) for i in items if isinstance(i, ConfigEntry)] == [
        ("banner", "  Hi = there # friend "),
        ("key-pin", 'a"b'),
    ]


def test_value_may_be_empty_and_may_contain_equals_signs() -> None:
    items = lex_config('banner =\ncustom-header = "X-A: b=c"\n', "f")
    assert [i.value for i in items if isinstance(i, ConfigEntry)] == ["", "X-A: b=c"]


def test_crlf_line_endings_are_accepted() -> None:
    items = lex_config("dpd = 90\r\nkeepalive = 30\r\n", "f")
    assert [(i.key, i.value) for i in items if isinstance(i, ConfigEntry)] == [
        ("dpd", "90"),
        ("keepalive", "30"),
    ]


def test_vhost_header() -> None:
    items = lex_config("auth = pam\n[vhost:vpn.example.com]\nauth = certificate\n", "f")
    assert items[1] == VhostHeader(SourceLocation("f", 2), "vpn.example.com")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp-port 443", "f:1: expected 'key = value', got 'tcp-port 443'"),
        ('x = 1\nbanner = "hello', "f:2: banner: unterminated quoted string"),
        ('banner = "', "f:1: banner: unterminated quoted string"),
        ("[vhost]", "f:1: bad section header '[vhost]'; expected [vhost:NAME]"),
        ("[vhost:a", "f:1: bad section header '[vhost:a'; expected [vhost:NAME]"),
        ("[vhost:]", "f:1: bad virtual host name in '[vhost:]'"),
        ("[vhost:a b]", "f:1: bad virtual host name in '[vhost:a b]'"),
        ("= 5", "f:1: bad option name ''"),
        ("tcp port = 5", "f:1: bad option name 'tcp port'"),
        ("server-cert = /a\x00b", "f:1: control character in line"),
        ("banner = a\x1bb", "f:1: control character in line"),
    ],
)
def test_bad_lines_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        lex_config(text, "f")
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab= "#;[]:\n\r\t-vhost\x00é') | st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    try:
        items = lex_config(text, "fuzz.conf")
    except ConfigError as error:
        assert str(error).startswith("fuzz.conf:")
    else:
        assert all(isinstance(item, ConfigEntry | VhostHeader) for item in items)
