"""The control socket's wire format: one JSON object a line, request then reply (sans-IO).

A client sends one request line and reads one reply line; for `show events` the reply is followed
by one event line per tunnel that comes up or goes down, until either side closes.

    request: {"v": 1, "op": "show-user", "arg": "alice"}
    reply:   {"v": 1, "outcome": "ok", "message": "", "data": [ {UserRecord fields}, ... ]}
    event:   {"v": 1, "event": {TunnelEvent fields}}

`outcome` is "ok", "not-found" (no such user/ID/session/ban), "failed" (the action did not
happen) or "refused" (a malformed request; `message` says why). `data` holds the records of
records.py, by operation (`REPLY_DATA_TYPES`). Everything a peer sends is checked here:
malformed input raises `CtlProtocolError`, nothing else.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs
import cattrs

from trio_ocserv.ctl.commands import Operation, Request, UsageError
from trio_ocserv.ctl.records import (
    BanRecord,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REQUEST_LINE",
    "PROTOCOL_VERSION",
    "REPLY_DATA_TYPES",
    "CtlProtocolError",
    "LineBuffer",
    "Outcome",
    "Reply",
    "decode_event",
    "decode_reply",
    "decode_request",
    "encode_event",
    "encode_reply",
    "encode_request",
]

PROTOCOL_VERSION = 1
MAX_REQUEST_LINE = 4096
# A reply lists every user or session; generous, but bounded.
MAX_REPLY_LINE = 64 * 1024 * 1024


class CtlProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


class Outcome(enum.Enum):
    OK = "ok"
    NOT_FOUND = "not-found"
    FAILED = "failed"
    REFUSED = "refused"


_LIST_OF_USERS = list[UserRecord]
_LIST_OF_SESSIONS = list[SessionRecord]
_LIST_OF_BANS = list[BanRecord]

REPLY_DATA_TYPES: dict[Operation, Any] = {
    Operation.SHOW_STATUS: ServerStatus,
    Operation.SHOW_USERS: _LIST_OF_USERS,
    Operation.SHOW_USER: _LIST_OF_USERS,
    Operation.SHOW_ID: _LIST_OF_USERS,
    Operation.SHOW_IROUTES: _LIST_OF_USERS,
    Operation.SHOW_SESSIONS_ALL: _LIST_OF_SESSIONS,
    Operation.SHOW_SESSIONS_VALID: _LIST_OF_SESSIONS,
    Operation.SHOW_SESSION: _LIST_OF_SESSIONS,
    Operation.SHOW_IP_BANS: _LIST_OF_BANS,
    Operation.SHOW_IP_BAN_POINTS: _LIST_OF_BANS,
}


@attrs.frozen
class Reply:
    outcome: Outcome
    # Records of REPLY_DATA_TYPES[operation] when the outcome is OK and the operation lists any.
    data: Any = None
    message: str = ""


_converter = cattrs.Converter(forbid_extra_keys=False)
_STRUCTURE_ERRORS = (cattrs.BaseValidationError, ValueError, TypeError, KeyError, AttributeError)


class LineBuffer:
    """Splits a byte stream into lines of at most `max_line` bytes (newline excluded)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line, or None until more data arrives."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_line:
                raise CtlProtocolError(f"line longer than {self.max_line} bytes")
            return None
        if end > self.max_line:
            raise CtlProtocolError(f"line longer than {self.max_line} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished line (to tell a clean EOF from a cut one)."""
        return bytes(self._buffer)


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def _load(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise CtlProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise CtlProtocolError("a message must be a JSON object")
    if message.get("v") != PROTOCOL_VERSION:
        raise CtlProtocolError(f"unsupported protocol version {message.get('v')!r}")
    return message


def encode_request(request: Request) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "op": request.operation.value, "arg": request.argument})


def decode_request(line: bytes) -> Request:
    message = _load(line)
    op, arg = message.get("op"), message.get("arg")
    if not isinstance(op, str) or not (arg is None or isinstance(arg, str)):
        raise CtlProtocolError("request needs a string 'op' and a string or null 'arg'")
    try:
        return Request(Operation(op), arg)
    except (ValueError, UsageError) as exc:  # UsageError is a ValueError; named for the reader
        raise CtlProtocolError(f"bad request: {exc}") from None


def encode_reply(reply: Reply) -> bytes:
    return _dump({
        "v": PROTOCOL_VERSION,
        "outcome": reply.outcome.value,
        "message": reply.message,
        "data": _converter.unstructure(reply.data),
    })


def decode_reply(line: bytes, operation: Operation) -> Reply:
    """A reply to a request for `operation`, its data structured into records."""
    message = _load(line)
    try:
        outcome = Outcome(message.get("outcome"))
    except ValueError:
        raise CtlProtocolError(f"unknown outcome {message.get('outcome')!r}") from None
    text = message.get("message", "")
    if not isinstance(text, str):
        raise CtlProtocolError("'message' must be a string")
    data_type = REPLY_DATA_TYPES.get(operation)
    data = None
    if outcome is Outcome.OK and data_type is not None:
        try:
            data = _converter.structure(message.get("data"), data_type)
        except _STRUCTURE_ERRORS as exc:
            raise CtlProtocolError(f"malformed {operation.value} data: {exc}") from None
    return Reply(outcome, data, text)


def encode_event(event: TunnelEvent) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "event": _converter.unstructure(event)})


def decode_event(line: bytes) -> TunnelEvent:
    message = _load(line)
    try:
        return _converter.structure(message.get("event"), TunnelEvent)
    except _STRUCTURE_ERRORS as exc:
        raise CtlProtocolError(f"malformed event: {exc}") from None
