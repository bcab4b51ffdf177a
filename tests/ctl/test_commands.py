"""occtl's command words -> requests."""

from __future__ import annotations

import pytest

from trio_ocserv.ctl.commands import (
    COMMANDS,
    Operation,
    Request,
    UsageError,
    parse_command,
    usage_text,
)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("show status", Request(Operation.SHOW_STATUS)),
        ("show users", Request(Operation.SHOW_USERS)),
        ("show user alice", Request(Operation.SHOW_USER, "alice")),
        ("show id 7", Request(Operation.SHOW_ID, "7")),
        ("show sessions all", Request(Operation.SHOW_SESSIONS_ALL)),
        ("show sessions valid", Request(Operation.SHOW_SESSIONS_VALID)),
        ("show session jpV+jq", Request(Operation.SHOW_SESSION, "jpV+jq")),
        ("show ip bans", Request(Operation.SHOW_IP_BANS)),
        ("show ip ban points", Request(Operation.SHOW_IP_BAN_POINTS)),
        ("show iroutes", Request(Operation.SHOW_IROUTES)),
        ("show events", Request(Operation.SHOW_EVENTS)),
        ("disconnect user bob", Request(Operation.DISCONNECT_USER, "bob")),
        ("disconnect id 12", Request(Operation.DISCONNECT_ID, "12")),
        ("terminate user bob", Request(Operation.TERMINATE_USER, "bob")),
        ("terminate id 12", Request(Operation.TERMINATE_ID, "12")),
        ("terminate session abcdef", Request(Operation.TERMINATE_SESSION, "abcdef")),
        ("unban ip 10.0.0.1", Request(Operation.UNBAN_IP, "10.0.0.1")),
        ("reload", Request(Operation.RELOAD)),
        ("stop now", Request(Operation.STOP_NOW)),
        ("SHOW Users", Request(Operation.SHOW_USERS)),
    ],
)
def test_commands(words: str, expected: Request) -> None:
    assert parse_command(words.split()) == expected


def test_every_operation_has_one_command() -> None:
    assert sorted(spec.operation.value for spec in COMMANDS) == sorted(
        op.value for op in Operation
    )


def test_argument_keeps_its_case_and_spaces() -> None:
    assert parse_command(["show", "user", "Jane Doe"]).argument == "Jane Doe"


@pytest.mark.parametrize(
    "words",
    ["", "show", "show user", "show user a b", "show users extra", "stop", "frobnicate",
     "show ip", "disconnect id"],
)
def test_usage_errors(words: str) -> None:
    with pytest.raises(UsageError):
        parse_command(words.split())


def test_request_checks_its_argument() -> None:
    with pytest.raises(UsageError):
        Request(Operation.SHOW_USER)
    with pytest.raises(UsageError):
        Request(Operation.SHOW_USERS, "x")


def test_usage_lists_every_command() -> None:
    text = usage_text()
    for spec in COMMANDS:
        assert " ".join(spec.words) in text
