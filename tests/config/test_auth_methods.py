"""auth / enable-auth / acct values: method[option=value,...] with per-method option tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.config.auth_methods import AuthMethod, acct_method, auth_method
from trio_ocserv.config.errors import ValueProblem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pam", AuthMethod("pam")),
        ("pam[gid-min=1000]", AuthMethod("pam", (("gid-min", 1000),))),
        (
            "plain[passwd=/etc/ocserv/ocpasswd,otp=/x]",
            AuthMethod("plain", (("passwd", "/etc/ocserv/ocpasswd"), ("otp", "/x"))),
        ),
        (
            "radius[config=/etc/radiusclient/radiusclient.conf,groupconfig=true,nas-identifier=name]",
            AuthMethod(
                "radius",
                (
                    ("config", "/etc/radiusclient/radiusclient.conf"),
                    ("groupconfig", True),
                    ("nas-identifier", "name"),
                ),
            ),
        ),
        ("certificate", AuthMethod("certificate")),
        (
            "gssapi[keytab=/etc/key.tab,require-local-user-map=true,tgt-freshness-time=900,gid-min=5]",
            AuthMethod(
                "gssapi",
                (
                    ("keytab", "/etc/key.tab"),
                    ("require-local-user-map", True),
                    ("tgt-freshness-time", 900),
                    ("gid-min", 5),
                ),
            ),
        ),
        ("gssapi", AuthMethod("gssapi")),
        (
            "oidc[config=/etc/ocserv/oidc.json]",
            AuthMethod("oidc", (("config", "/etc/ocserv/oidc.json"),)),
        ),
        ("PAM", AuthMethod("pam")),
    ],
)
def test_auth_methods(text: str, expected: AuthMethod) -> None:
    assert auth_method(text) == expected


def test_option_lookup() -> None:
    method = auth_method("plain[passwd=/p,otp=/o]")
    assert (method.option("passwd"), method.option("otp"), method.option("x")) == ("/p", "/o", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "radius[config=/etc/radiusclient/radiusclient.conf]",
            AuthMethod("radius", (("config", "/etc/radiusclient/radiusclient.conf"),)),
        ),
        ("pam", AuthMethod("pam")),
    ],
)
def test_acct_methods(text: str, expected: AuthMethod) -> None:
    assert acct_method(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ldap", "unknown authentication method 'ldap'"),
        ("plain", "plain needs the option(s) passwd"),
        ("plain[password=/x]", "plain: unknown option 'password'"),
        ("pam[gid-min=abc]", "pam[gid-min]: expected a non-negative number"),
        ("gssapi[require-local-user-map=perhaps]", "expected true or false"),
        ("radius[groupconfig=true]", "radius needs the option(s) config"),
        ("plain[passwd]", "option 'passwd' needs a value"),
        ("plain[passwd=/x", "expected method or method[option=value,...]"),
    ],
)
def test_bad_auth_methods(text: str, fragment: str) -> None:
    with pytest.raises(ValueProblem) as caught:
        auth_method(text)
    assert fragment in str(caught.value)


def test_certificate_is_not_an_accounting_method() -> None:
    with pytest.raises(ValueProblem, match="unknown accounting method 'certificate'"):
        acct_method("certificate")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="plainmrd[]=,/-x01 ", max_size=40) | st.text(max_size=30))
def test_arbitrary_methods_raise_only_value_problem(text: str) -> None:
    try:
        method = auth_method(text)
    except ValueProblem:
        return
    assert method.name in {"plain", "pam", "radius", "certificate", "gssapi", "oidc"}
