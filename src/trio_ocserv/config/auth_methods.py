"""`auth`, `enable-auth` and `acct` values: `method` or `method[option=value,...]`.

The table below says which methods exist and which bracket options each takes, with a parser per
option, so a typo in an option name is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

from trio_ocserv.config import values
from trio_ocserv.config.errors import ValueProblem

_METHOD = re.compile(r"(?P<name>[A-Za-z0-9_-]+)\s*(\[(?P<options>.*)\])?", re.DOTALL)

# Methods whose whole job is checking a password: ocserv refuses to AND two of them in `auth`.
PASSWORD_METHODS = frozenset({"plain", "pam", "radius", "oidc"})


@attrs.frozen
class AuthMethod:
    """One authentication or accounting method with its bracket options (`plain[passwd=...]`)."""

    name: str
    options: tuple[tuple[str, str | bool | int], ...] = ()

    def option(self, key: str) -> str | bool | int | None:
        for option_key, option_value in self.options:
            if option_key == key:
                return option_value
        return None


OptionParsers = Mapping[str, Callable[[str], str | bool | int]]

AUTH_METHODS: Mapping[str, OptionParsers] = {
    "plain": {"passwd": values.path, "otp": values.path},
    "pam": {"gid-min": values.count},
    "radius": {
        "config": values.path,
        "groupconfig": values.boolean,
        "nas-identifier": values.text,
        "override-interim-updates": values.boolean,
    },
    "certificate": {},
    "gssapi": {
        "keytab": values.path,
        "require-local-user-map": values.boolean,
        "tgt-freshness-time": values.seconds,
        "gid-min": values.count,
    },
    "oidc": {"config": values.path},
}
REQUIRED_OPTIONS: Mapping[str, frozenset[str]] = {
    "plain": frozenset({"passwd"}),
    "radius": frozenset({"config"}),
    "oidc": frozenset({"config"}),
}

ACCT_METHODS: Mapping[str, OptionParsers] = {
    "radius": {"config": values.path, "nas-identifier": values.text},
    "pam": {},
}


def auth_method(value: str) -> AuthMethod:
    return _parse(value, AUTH_METHODS, "authentication")


def acct_method(value: str) -> AuthMethod:
    return _parse(value, ACCT_METHODS, "accounting")


def _parse(value: str, table: Mapping[str, OptionParsers], kind: str) -> AuthMethod:
    match = _METHOD.fullmatch(value.strip())
    if match is None:
        raise ValueProblem(f"expected method or method[option=value,...], got {value!r}")
    method = match["name"].lower()
    parsers = table.get(method)
    if parsers is None:
        known = ", ".join(table)
        raise ValueProblem(f"unknown {kind} method {method!r} (known: {known})")
    options: dict[str, str | bool | int] = {}
    raw_options = match["options"]
    if raw_options is not None and raw_options.strip():
        for raw_option in raw_options.split(","):
            key, equals, raw = raw_option.partition("=")
            key = key.strip().lower()
            parse = parsers.get(key)
            if parse is None:
                raise ValueProblem(f"{method}: unknown option {key!r}")
            if not equals:
                raise ValueProblem(f"{method}: option {key!r} needs a value ({key}=...)")
            try:
                options[key] = parse(raw.strip())
            except ValueProblem as problem:
                raise ValueProblem(f"{method}[{key}]: {problem}") from None
    missing = REQUIRED_OPTIONS.get(method, frozenset()) - options.keys()
    if missing:
        raise ValueProblem(f"{method} needs the option(s) {', '.join(sorted(missing))}")
    return AuthMethod(method, tuple(options.items()))
