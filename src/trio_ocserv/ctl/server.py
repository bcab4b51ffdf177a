"""The control socket: a Unix stream socket that answers `ctl` requests (protocol.py).

Owns the socket file: it is created 0600 inside a private 0700 directory and then moved into
place, so it is never reachable with looser permissions; a stale socket of an earlier run is
replaced, any other file at the path is an error. Only root or the server's own user may talk to
it (checked again with SO_PEERCRED). One request per connection; `show events` then streams
events until the client hangs up. The file is removed when the task ends.

A failing request never takes the server down: it is logged and the connection closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket as stdlib_socket
import stat
import struct
import tempfile
from pathlib import Path

import attrs
import trio

from trio_ocserv.ctl.commands import Operation
from trio_ocserv.ctl.event_feed import EventFeed, EventSubscription
from trio_ocserv.ctl.handler import handle_request
from trio_ocserv.ctl.protocol import (
    MAX_REQUEST_LINE,
    CtlProtocolError,
    LineBuffer,
    Outcome,
    Reply,
    decode_request,
    encode_event,
    encode_reply,
)
from trio_ocserv.ctl.view import ServerActions, ServerView

__all__ = ["ControlSocketError", "CtlServer", "bind_control_socket"]

log = logging.getLogger("trio_ocserv")

_RECEIVE_SIZE = 4096
_PEERCRED = struct.Struct("3i")


class ControlSocketError(OSError):
    """The control socket cannot be created at the configured path."""


def bind_control_socket(path: Path, backlog: int = 16) -> trio.SocketListener:
    """Listen on `path` (mode 0600), replacing a stale socket left by an earlier run."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(f"{path}: exists and is not a socket; not replacing it")
        path.unlink()
    private_dir = Path(tempfile.mkdtemp(prefix=".ctl-", dir=path.parent))  # mode 0700
    staging = private_dir / "socket"
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(staging))
        staging.chmod(0o600)
        staging.rename(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            staging.unlink()
        private_dir.rmdir()
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _remove_socket_file(path: Path, inode: int) -> None:
    """Remove our socket file, but not one a newer server already put in its place."""
    with contextlib.suppress(OSError):
        if path.lstat().st_ino == inode:
            path.unlink()


def _peer_allowed(stream: trio.SocketStream) -> bool:
    try:
        raw = stream.socket.getsockopt(
            stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, _PEERCRED.size
        )
    except OSError:
        return False
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return uid in (0, os.geteuid())


async def _receive_line(stream: trio.SocketStream, buffer: LineBuffer) -> bytes | None:
    while (line := buffer.next_line()) is None:
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return None
        buffer.receive_data(data)
    return line


@attrs.define(eq=False)
class CtlServer:
    path: Path
    view: ServerView
    actions: ServerActions
    events: EventFeed = attrs.Factory(EventFeed)
    # For the request line only; actions bound their own waits.
    request_timeout: float = 10.0
    max_connections: int = 32
    _limiter: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = trio.CapacityLimiter(self.max_connections)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = bind_control_socket(self.path)
        inode = self.path.lstat().st_ino
        log.info("control socket listening on %s", self.path)
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    if self._limiter.borrowed_tokens >= self._limiter.total_tokens:
                        await stream.aclose()
                        continue
                    nursery.start_soon(self._serve_client, stream)
        finally:
            _remove_socket_file(self.path, inode)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        async with self._limiter, stream:
            try:
                await self._answer(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass
            except Exception:
                log.exception("control socket: request failed")

    async def _answer(self, stream: trio.SocketStream) -> None:
        if not _peer_allowed(stream):
            await stream.send_all(encode_reply(Reply(Outcome.REFUSED, message="not allowed")))
            return
        buffer = LineBuffer(MAX_REQUEST_LINE)
        try:
            with trio.fail_after(self.request_timeout):
                line = await _receive_line(stream, buffer)
            if line is None:
                return
            request = decode_request(line)
        except CtlProtocolError as exc:
            await stream.send_all(encode_reply(Reply(Outcome.REFUSED, message=str(exc))))
            return
        if request.operation is Operation.SHOW_EVENTS:
            # Subscribed before the acknowledgement: the client misses nothing after it.
            with self.events.subscribe() as subscription:
                await stream.send_all(encode_reply(Reply(Outcome.OK)))
                await self._stream_events(stream, subscription)
            return
        reply = await handle_request(request, self.view, self.actions)
        await stream.send_all(encode_reply(reply))

    async def _stream_events(
        self, stream: trio.SocketStream, subscription: EventSubscription
    ) -> None:
        async def until_client_leaves(cancel_scope: trio.CancelScope) -> None:
            while await stream.receive_some(_RECEIVE_SIZE):
                pass  # the client has nothing to say; read to see it hang up
            cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_client_leaves, nursery.cancel_scope)
            async for event in subscription.receive:
                await stream.send_all(encode_event(event))
