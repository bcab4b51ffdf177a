"""The client side of the control socket: send one request, read its reply (and events).

Trio; the `ctl` command (cli.py) runs these under `trio.run`. Connection problems raise
`CtlConnectionError` with occtl's wording; a peer that breaks the protocol raises
`CtlProtocolError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import trio

from trio_ocserv.ctl.commands import Operation, Request
from trio_ocserv.ctl.protocol import (
    MAX_REPLY_LINE,
    CtlProtocolError,
    LineBuffer,
    Reply,
    decode_event,
    decode_reply,
    encode_request,
)
from trio_ocserv.ctl.records import TunnelEvent

__all__ = ["CtlConnectionError", "request", "watch_events"]

_RECEIVE_SIZE = 65536
# Disconnects wait for the tunnel to close (a few seconds at most); then give up.
_REPLY_TIMEOUT = 30.0


class CtlConnectionError(OSError):
    """The server's control socket cannot be reached."""


async def _connect(path: Path) -> trio.SocketStream:
    try:
        return await trio.open_unix_socket(os.fspath(path))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CtlConnectionError(f"error connecting to ocserv socket '{path}': {reason}") from None


async def _next_line(stream: trio.SocketStream, buffer: LineBuffer) -> bytes | None:
    while (line := buffer.next_line()) is None:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            if buffer.pending:
                raise CtlProtocolError("connection closed in the middle of a message")
            return None
        buffer.receive_data(data)
    return line


async def _exchange(
    stream: trio.SocketStream, buffer: LineBuffer, message: Request
) -> Reply:
    await stream.send_all(encode_request(message))
    line = await _next_line(stream, buffer)
    if line is None:
        raise CtlProtocolError("the server closed the connection without a reply")
    return decode_reply(line, message.operation)


async def request(path: Path, message: Request) -> Reply:
    """Send `message` to the server at `path` and return its reply."""
    if message.operation is Operation.SHOW_EVENTS:
        raise ValueError("use watch_events() for show events")
    stream = await _connect(path)
    async with stream:
        with trio.fail_after(_REPLY_TIMEOUT):
            return await _exchange(stream, LineBuffer(MAX_REPLY_LINE), message)


async def watch_events(
    path: Path,
    on_event: Callable[[TunnelEvent], None],
    on_subscribed: Callable[[Reply], None] = lambda reply: None,
) -> None:
    """Call `on_event` for every connect/disconnect until the server closes the stream."""
    stream = await _connect(path)
    async with stream:
        buffer = LineBuffer(MAX_REPLY_LINE)
        reply = await _exchange(stream, buffer, Request(Operation.SHOW_EVENTS))
        on_subscribed(reply)
        while (line := await _next_line(stream, buffer)) is not None:
            on_event(decode_event(line))
