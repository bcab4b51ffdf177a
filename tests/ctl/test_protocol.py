"""Wire messages: round trips, line framing, and fuzzing of everything a peer can send."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.ctl.commands import Operation, Request
from trio_ocserv.ctl.protocol import (
    CtlProtocolError,
    LineBuffer,
    Outcome,
    Reply,
    decode_event,
    decode_reply,
    decode_request,
    encode_event,
    encode_reply,
    encode_request,
)
from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)

USER = UserRecord(
    id=3, username="ünïcode", groupname="(none)", device="vpns0", remote_ip="192.0.2.1",
    connected_at=1.5, session="S" * 28, dns=("192.0.2.53",), mtu=1400,
)


def test_request_round_trip() -> None:
    for request in (Request(Operation.SHOW_USERS), Request(Operation.SHOW_USER, "a\nb")):
        line = encode_request(request)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_request(line[:-1]) == request


@pytest.mark.parametrize(
    ("operation", "data"),
    [
        (Operation.SHOW_USERS, [USER]),
        (Operation.SHOW_SESSIONS_ALL, [SessionRecord(
            session="x", created=2.0, username="u", groupname="g", remote_ip="::1", in_use=False,
        )]),
        (Operation.SHOW_IP_BANS, [BanRecord(address="10.0.0.1", score=3, banned_until=9.0)]),
        (Operation.SHOW_STATUS, ServerStatus(
            pid=1, started_at=2.0, active_sessions=3, total_sessions=4, ips_banned=5,
            stats_reset_at=2.0, rx=7,
        )),
    ],
)
def test_reply_round_trip(operation: Operation, data: object) -> None:
    line = encode_reply(Reply(Outcome.OK, data))
    assert decode_reply(line.rstrip(b"\n"), operation) == Reply(Outcome.OK, data)


def test_failure_replies_carry_no_data() -> None:
    line = encode_reply(Reply(Outcome.NOT_FOUND, [], "nope"))
    assert decode_reply(line, Operation.SHOW_USER) == Reply(Outcome.NOT_FOUND, None, "nope")


def test_event_round_trip() -> None:
    event = TunnelEvent(
        kind=EventKind.DISCONNECTED, id=1, username="u", remote_ip="::1", reason="x",
        duration=2.5,
    )
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "line",
    [
        b"", b"null", b"[]", b"{}", b'{"v": 2, "op": "show-users"}',
        b'{"v": 1, "op": "show-everything"}', b'{"v": 1, "op": "show-user"}',
        b'{"v": 1, "op": "show-users", "arg": "x"}', b'{"v": 1, "op": 5}',
        b'{"v": 1, "op": "show-user", "arg": ["x"]}', b"\xff\xfe", b"[" * 100000,
    ],
)
def test_bad_requests(line: bytes) -> None:
    with pytest.raises(CtlProtocolError):
        decode_request(line)


def test_bad_reply_data() -> None:
    line = json.dumps({"v": 1, "outcome": "ok", "data": [{"id": "x"}]}).encode()
    with pytest.raises(CtlProtocolError):
        decode_reply(line, Operation.SHOW_USERS)
    with pytest.raises(CtlProtocolError):
        decode_reply(b'{"v": 1, "outcome": "maybe"}', Operation.RELOAD)


def test_line_buffer_splits_and_bounds_lines() -> None:
    buffer = LineBuffer(max_line=10)
    buffer.receive_data(b"one\ntw")
    assert buffer.next_line() == b"one"
    assert buffer.next_line() is None
    assert buffer.pending == b"tw"
    buffer.receive_data(b"o\n")
    assert buffer.next_line() == b"two"
    buffer.receive_data(b"x" * 11)
    with pytest.raises(CtlProtocolError):
        buffer.next_line()


def test_line_buffer_rejects_a_long_complete_line() -> None:
    buffer = LineBuffer(max_line=4)
    buffer.receive_data(b"12345\n")
    with pytest.raises(CtlProtocolError):
        buffer.next_line()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 2, "1"])},
    optional={
        "op": st.sampled_from([op.value for op in Operation]) | st.text(max_size=10),
        "arg": json_values,
        "outcome": st.sampled_from([o.value for o in Outcome]) | st.text(max_size=5),
        "message": json_values,
        "data": json_values,
        "event": json_values,
    },
)


def _check(line: bytes) -> None:
    """Decoding as every kind of message either succeeds or raises CtlProtocolError."""
    with contextlib.suppress(CtlProtocolError):
        decode_request(line)
    for operation in Operation:
        with contextlib.suppress(CtlProtocolError):
            decode_reply(line, operation)
    with contextlib.suppress(CtlProtocolError):
        decode_event(line)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(line: bytes) -> None:
    _check(line)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_arbitrary_json_messages_raise_only_protocol_errors(message: dict[str, object]) -> None:
    _check(json.dumps(message).encode())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=10), st.integers(min_value=1, max_value=20))
def test_line_buffer_never_returns_more_than_max(chunks: list[bytes], max_line: int) -> None:
    buffer = LineBuffer(max_line)
    for chunk in chunks:
        buffer.receive_data(chunk)
        try:
            while (line := buffer.next_line()) is not None:
                assert len(line) <= max_line and b"\n" not in line
        except CtlProtocolError:
            return
