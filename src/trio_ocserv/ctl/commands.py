"""occtl's command grammar: the words after the options, as one `Request`.

`show users`, `show user NAME`, `disconnect id ID`, ... (see `COMMANDS`). Words are matched
case-insensitively and exactly; an argument is one word (`show user "a b"` passes one).
Pure: no I/O; `UsageError` says what was wrong.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

__all__ = ["COMMANDS", "Operation", "Request", "UsageError", "parse_command", "usage_text"]


class UsageError(ValueError):
    """The command words do not form a command."""


class Operation(enum.Enum):
    SHOW_STATUS = "show-status"
    SHOW_USERS = "show-users"
    SHOW_USER = "show-user"
    SHOW_ID = "show-id"
    SHOW_SESSIONS_ALL = "show-sessions-all"
    SHOW_SESSIONS_VALID = "show-sessions-valid"
    SHOW_SESSION = "show-session"
    SHOW_IP_BANS = "show-ip-bans"
    SHOW_IP_BAN_POINTS = "show-ip-ban-points"
    SHOW_IROUTES = "show-iroutes"
    SHOW_EVENTS = "show-events"
    DISCONNECT_USER = "disconnect-user"
    DISCONNECT_ID = "disconnect-id"
    TERMINATE_USER = "terminate-user"
    TERMINATE_ID = "terminate-id"
    TERMINATE_SESSION = "terminate-session"
    UNBAN_IP = "unban-ip"
    RELOAD = "reload"
    STOP_NOW = "stop-now"


@attrs.frozen
class CommandSpec:
    words: tuple[str, ...]
    operation: Operation
    # Name of the one argument (shown in the usage text), or None when there is none.
    argument: str | None
    help: str


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(("disconnect", "user"), Operation.DISCONNECT_USER, "NAME",
                "Disconnect the specified user"),
    CommandSpec(("disconnect", "id"), Operation.DISCONNECT_ID, "ID",
                "Disconnect the specified ID"),
    CommandSpec(("terminate", "user"), Operation.TERMINATE_USER, "NAME",
                "Disconnect the user and invalidate its cookies"),
    CommandSpec(("terminate", "id"), Operation.TERMINATE_ID, "ID",
                "Disconnect the ID and invalidate its cookie"),
    CommandSpec(("terminate", "session"), Operation.TERMINATE_SESSION, "SID",
                "Invalidate the session (and disconnect its tunnel)"),
    CommandSpec(("unban", "ip"), Operation.UNBAN_IP, "IP", "Unban the specified IP"),
    CommandSpec(("reload",), Operation.RELOAD, None, "Reloads the server configuration"),
    CommandSpec(("show", "status"), Operation.SHOW_STATUS, None,
                "Prints the status and statistics of the server"),
    CommandSpec(("show", "users"), Operation.SHOW_USERS, None, "Prints the connected users"),
    CommandSpec(("show", "ip", "bans"), Operation.SHOW_IP_BANS, None,
                "Prints the banned IP addresses"),
    CommandSpec(("show", "ip", "ban", "points"), Operation.SHOW_IP_BAN_POINTS, None,
                "Prints all the known IP addresses which have points"),
    CommandSpec(("show", "iroutes"), Operation.SHOW_IROUTES, None,
                "Prints the routes provided by users of the server"),
    CommandSpec(("show", "sessions", "all"), Operation.SHOW_SESSIONS_ALL, None,
                "Prints all the session IDs"),
    CommandSpec(("show", "sessions", "valid"), Operation.SHOW_SESSIONS_VALID, None,
                "Prints all the valid for reconnection sessions"),
    CommandSpec(("show", "session"), Operation.SHOW_SESSION, "SID",
                "Prints information on the specified session"),
    CommandSpec(("show", "user"), Operation.SHOW_USER, "NAME",
                "Prints information on the specified user"),
    CommandSpec(("show", "id"), Operation.SHOW_ID, "ID", "Prints information on the specified ID"),
    CommandSpec(("show", "events"), Operation.SHOW_EVENTS, None,
                "Provides information about connecting users"),
    CommandSpec(("stop", "now"), Operation.STOP_NOW, None, "Terminates the server"),
)

_SPECS_BY_OPERATION = {spec.operation: spec for spec in COMMANDS}


@attrs.frozen
class Request:
    """One command for the server: what to do and its argument (a name, ID, SID or IP)."""

    operation: Operation
    argument: str | None = None

    def __attrs_post_init__(self) -> None:
        wants_argument = _SPECS_BY_OPERATION[self.operation].argument is not None
        if wants_argument != (self.argument is not None):
            raise UsageError(f"{self.operation.value}: wrong number of arguments")


def parse_command(words: Sequence[str]) -> Request:
    """`["show", "user", "alice"]` -> Request(SHOW_USER, "alice")."""
    lowered = tuple(w.lower() for w in words)
    # Longest match first: "show ip ban points" before "show ip bans" etc. are distinct anyway,
    # but "show sessions all" must not be read as "show session" + argument.
    for spec in sorted(COMMANDS, key=lambda s: -len(s.words)):
        n = len(spec.words)
        if lowered[:n] != spec.words:
            continue
        rest = list(words[n:])
        if spec.argument is None:
            if rest:
                raise UsageError(f"'{' '.join(spec.words)}' takes no argument")
            return Request(spec.operation)
        if len(rest) != 1 or not rest[0]:
            raise UsageError(f"usage: {' '.join(spec.words)} [{spec.argument}]")
        return Request(spec.operation, rest[0])
    raise UsageError(f"unknown command: {' '.join(words)!r}" if words else "no command given")


def usage_text() -> str:
    lines = []
    for spec in COMMANDS:
        left = " ".join(spec.words) + (f" [{spec.argument}]" if spec.argument else "")
        lines.append(f" {left:>24}\t{spec.help}")
    return "\n".join(lines) + "\n"
