"""Where a config value came from, and the one error type the config code raises.

Every problem a config file can have is reported as `FILE:LINE: key: what is wrong`, on one line,
so an admin can jump straight to it. Warnings use the same shape with `warning:` after the place.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SourceLocation:
    """A place in a config file; `line` is None for problems about the file as a whole."""

    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


class ConfigError(Exception):
    """A config file that cannot be used; `str()` is the one-line message shown to the admin."""

    def __init__(self, location: SourceLocation, key: str | None, problem: str) -> None:
        self.location = location
        self.key = key
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.location}: "
        return f"{where}{self.key}: {self.problem}" if self.key else f"{where}{self.problem}"


@attrs.frozen
class ConfigWarning:
    """Something the server tolerates but the admin should hear about (unknown key, unsupported)."""

    location: SourceLocation
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: warning: {self.key}: {self.problem}"


class ValueProblem(ValueError):
    """Raised by value parsers, which do not know where the value came from (the loader does)."""
