"""Split ocserv.conf text into `key = value` entries and `[vhost:NAME]` headers, with line numbers.

The format (ocserv 1.1.6, inih-style): one `key = value` per line; blank lines and lines starting
with `#` or `;` are comments; a value wrapped in double quotes has them removed (no escapes, and the
quotes are needed only to keep leading/trailing spaces); keys are case-insensitive. A `#` after a
value is part of the value, as in ocserv. This module knows nothing about what the keys mean.
"""

from __future__ import annotations

import re

import attrs

from trio_ocserv.config.errors import ConfigError, SourceLocation

_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_VHOST_HEADER = re.compile(r"\[vhost:(?P<name>[^\]]*)\]")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@attrs.frozen
class ConfigEntry:
    """One `key = value` line; `value` has its surrounding quotes already removed."""

    location: SourceLocation
    key: str
    value: str


@attrs.frozen
class VhostHeader:
    """A `[vhost:NAME]` line: the entries after it belong to that virtual host."""

    location: SourceLocation
    name: str


ConfigItem = ConfigEntry | VhostHeader


def lex_config(text: str, path: str) -> list[ConfigItem]:
    """Turn config text into entries and headers, raising `ConfigError` on the first bad line."""
    items: list[ConfigItem] = []
    # Split on \n only: str.splitlines() also splits on \v, \f, \x1c..., shifting line numbers.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        location = SourceLocation(path, number)
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if _CONTROL_CHARACTER.search(line):
            # A NUL or other control byte would reach file names, user names and HTTP headers.
            raise ConfigError(location, None, "control character in line")
        if line.startswith("["):
            items.append(_lex_header(line, location))
        else:
            items.append(_lex_entry(line, location))
    return items


def _lex_header(line: str, location: SourceLocation) -> VhostHeader:
    match = _VHOST_HEADER.fullmatch(line)
    if match is None:
        raise ConfigError(location, None, f"bad section header {line!r}; expected [vhost:NAME]")
    name = match["name"].strip()
    if not name or any(c.isspace() for c in name):
        raise ConfigError(location, None, f"bad virtual host name in {line!r}")
    return VhostHeader(location, name)


def _lex_entry(line: str, location: SourceLocation) -> ConfigEntry:
    key_text, equals, raw_value = line.partition("=")
    key = key_text.strip().lower()
    if not equals:
        raise ConfigError(location, None, f"expected 'key = value', got {_shorten(line)!r}")
    if not _KEY.fullmatch(key):
        raise ConfigError(location, None, f"bad option name {_shorten(key_text.strip())!r}")
    value = raw_value.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise ConfigError(location, key, "unterminated quoted string")
        value = value[1:-1]
    return ConfigEntry(location, key, value)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
