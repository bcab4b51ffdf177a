"""Carry out one control request against the server's view and actions.

Lookups follow occtl: `show user` matches the user name exactly, `show id` the tunnel id,
`show session` / `terminate session` the public session id or any prefix of at least 4
characters that names exactly one session (occtl shows 6).
"""

from __future__ import annotations

from ipaddress import ip_address

from trio_ocserv.ctl.commands import Operation, Request
from trio_ocserv.ctl.protocol import Outcome, Reply
from trio_ocserv.ctl.records import SessionRecord
from trio_ocserv.ctl.view import ServerActions, ServerView

__all__ = ["MIN_SESSION_PREFIX", "find_sessions", "handle_request"]

MIN_SESSION_PREFIX = 4


def find_sessions(sessions: list[SessionRecord], wanted: str) -> list[SessionRecord]:
    exact = [s for s in sessions if s.session == wanted]
    if exact or len(wanted) < MIN_SESSION_PREFIX:
        return exact
    matches = [s for s in sessions if s.session.startswith(wanted)]
    return matches if len(matches) == 1 else []


def _tunnel_id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None


def _done(success: bool) -> Reply:
    return Reply(Outcome.OK if success else Outcome.FAILED)


def _found(records: list[object]) -> Reply:
    return Reply(Outcome.OK, records) if records else Reply(Outcome.NOT_FOUND, [])


async def handle_request(request: Request, view: ServerView, actions: ServerActions) -> Reply:
    """The reply to `request` (`show events` only acknowledges; the server then streams)."""
    op, arg = request.operation, request.argument or ""
    if op is Operation.SHOW_STATUS:
        return Reply(Outcome.OK, view.status())
    if op in (Operation.SHOW_USERS, Operation.SHOW_IROUTES):
        return Reply(Outcome.OK, view.users())
    if op is Operation.SHOW_USER:
        return _found([u for u in view.users() if u.username == arg])
    if op is Operation.SHOW_ID:
        wanted = _tunnel_id(arg)
        return _found([u for u in view.users() if u.id == wanted])
    if op is Operation.SHOW_SESSIONS_ALL:
        return Reply(Outcome.OK, view.sessions())
    if op is Operation.SHOW_SESSIONS_VALID:
        return Reply(Outcome.OK, [s for s in view.sessions() if s.valid])
    if op is Operation.SHOW_SESSION:
        return _found(list(find_sessions(view.sessions(), arg)))
    if op is Operation.SHOW_IP_BANS:
        return Reply(Outcome.OK, view.bans())
    if op is Operation.SHOW_IP_BAN_POINTS:
        return Reply(Outcome.OK, view.ban_points())
    if op is Operation.SHOW_EVENTS:
        return Reply(Outcome.OK)
    if op is Operation.DISCONNECT_USER:
        return _done(await actions.disconnect_user(arg))
    if op is Operation.TERMINATE_USER:
        return _done(await actions.terminate_user(arg))
    if op in (Operation.DISCONNECT_ID, Operation.TERMINATE_ID):
        tunnel_id = _tunnel_id(arg)
        if tunnel_id is None:
            return Reply(Outcome.FAILED, message=f"not an ID: {arg!r}")
        if op is Operation.DISCONNECT_ID:
            return _done(await actions.disconnect_id(tunnel_id))
        return _done(await actions.terminate_id(tunnel_id))
    if op is Operation.TERMINATE_SESSION:
        matches = find_sessions(view.sessions(), arg)
        return _done(len(matches) == 1 and await actions.terminate_session(matches[0].session))
    if op is Operation.UNBAN_IP:
        try:
            ip_address(arg)
        except ValueError:
            return Reply(Outcome.FAILED, message=f"not an IP address: {arg!r}")
        return _done(actions.unban_ip(arg))
    if op is Operation.RELOAD:
        actions.reload()
        return Reply(Outcome.OK)
    if op is Operation.STOP_NOW:
        actions.stop()
        return Reply(Outcome.OK)
    raise AssertionError(f"unhandled operation {op}")
