"""`trio-ocserv ctl`: occtl's options, commands, output and exit codes.

    trio-ocserv ctl [-s FILE] [-j] [-n] [--debug] COMMAND...

Output goes to stdout, as occtl's does (messages like "user or ID not found" included); exit
codes follow occtl: 0 on success, 1 for a failed action or an unreachable server, 2 for
`show user`/`show id` of someone not connected. There is no pager (`-n` is accepted) and no
interactive shell: a command is required.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from trio_ocserv import __version__
from trio_ocserv.ctl import render_json, render_text
from trio_ocserv.ctl.client import CtlConnectionError, request, watch_events
from trio_ocserv.ctl.commands import Operation, Request, UsageError, parse_command, usage_text
from trio_ocserv.ctl.protocol import CtlProtocolError, Outcome, Reply
from trio_ocserv.ctl.records import TunnelEvent

__all__ = ["DEFAULT_SOCKET", "ctl_main", "render_reply", "run_command"]

# occtl's compiled-in default, and the default of `occtl-socket-file`.
DEFAULT_SOCKET = Path("/var/run/occtl.socket")
EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND = 0, 1, 2

_ACTION_TEXT: dict[Operation, tuple[str, str]] = {
    Operation.DISCONNECT_USER: ("user '{}' was disconnected", "could not disconnect user '{}'"),
    Operation.DISCONNECT_ID: (
        "connection ID '{}' was disconnected", "could not disconnect ID '{}'"
    ),
    Operation.TERMINATE_USER: ("user '{}' was terminated", "could not terminate user '{}'"),
    Operation.TERMINATE_ID: ("connection ID '{}' was terminated", "could not terminate ID '{}'"),
    Operation.TERMINATE_SESSION: (
        "session '{}' was terminated", "could not terminate session '{}'"
    ),
    Operation.UNBAN_IP: ("IP '{}' was unbanned", "could not unban IP '{}'"),
    Operation.RELOAD: ("Server scheduled to reload", "could not reload the server"),
    Operation.STOP_NOW: ("Server scheduled to stop", "could not stop the server"),
}


def _listing(op: Operation, data: Any, as_json: bool, now: float) -> str:
    if op is Operation.SHOW_STATUS:
        return render_json.status_json(data, now) if as_json else render_text.status_text(data, now)
    if op is Operation.SHOW_USERS:
        return render_json.users_json(data, now) if as_json else render_text.users_table(data, now)
    if op in (Operation.SHOW_USER, Operation.SHOW_ID):
        return render_json.users_json(data, now) if as_json else render_text.user_details(data, now)
    if op is Operation.SHOW_IROUTES:
        return render_json.iroutes_json(data) if as_json else render_text.iroutes_table(data)
    if op in (Operation.SHOW_SESSIONS_ALL, Operation.SHOW_SESSIONS_VALID):
        if as_json:
            return render_json.sessions_json(data)
        return render_text.sessions_table(data, now)
    if op is Operation.SHOW_SESSION:
        return render_json.sessions_json(data) if as_json else render_text.session_details(data)
    if op is Operation.SHOW_IP_BANS:
        return render_json.bans_json(data, now) if as_json else render_text.bans_table(data, now)
    if op is Operation.SHOW_IP_BAN_POINTS:
        if as_json:
            return render_json.ban_points_json(data)
        return render_text.ban_points_table(data)
    raise AssertionError(f"{op} lists nothing")


def render_reply(message: Request, reply: Reply, *, as_json: bool, now: float) -> tuple[str, int]:
    """What `ctl` prints for `reply` and its exit code."""
    op = message.operation
    if reply.outcome is Outcome.REFUSED:
        return f"the server refused the request: {reply.message}\n", EXIT_FAILED
    if op in _ACTION_TEXT:
        done, failed = _ACTION_TEXT[op]
        if reply.outcome is Outcome.OK:
            return done.format(message.argument) + "\n", EXIT_OK
        return failed.format(message.argument) + "\n", EXIT_FAILED
    if reply.outcome is Outcome.NOT_FOUND:
        if op is Operation.SHOW_SESSION:
            return ("[\n]\n" if as_json else "Session ID not found or expired\n"), EXIT_OK
        return ("[\n]\n" if as_json else "user or ID not found\n"), EXIT_NOT_FOUND
    if reply.outcome is not Outcome.OK:
        return f"{reply.message or 'the request failed'}\n", EXIT_FAILED
    return _listing(op, reply.data, as_json, now), EXIT_OK


async def run_command(
    socket: Path,
    message: Request,
    *,
    as_json: bool,
    out: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    """Send one command and print its result to `out`; returns the exit code."""
    if message.operation is Operation.SHOW_EVENTS:
        return await _print_events(socket, as_json, out)
    reply = await request(socket, message)
    text, code = render_reply(message, reply, as_json=as_json, now=clock())
    out.write(text)
    return code


async def _print_events(socket: Path, as_json: bool, out: TextIO) -> int:
    def subscribed(reply: Reply) -> None:
        if not as_json:
            out.write("\nPress CTRL+C to quit\n\n")
            out.flush()

    def print_event(event: TunnelEvent) -> None:
        out.write(render_json.event_json(event) if as_json else render_text.event_line(event))
        out.flush()

    await watch_events(socket, print_event, subscribed)
    return EXIT_OK


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-ocserv ctl",
        add_help=False,
        usage="%(prog)s [OPTIONS...] {COMMAND}",
        description="Control a running trio-ocserv (occtl-compatible).",
        epilog="Available Commands\n" + usage_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-s", "--socket-file", type=Path, default=DEFAULT_SOCKET,
                        help="Specify the server's occtl socket file")
    parser.add_argument("-h", "--help", action="store_true", help="Show this help")
    parser.add_argument("--debug", action="store_true",
                        help="Enable more verbose information in some commands")
    parser.add_argument("-v", "--version", action="store_true",
                        help="Show the program's version")
    parser.add_argument("-j", "--json", action="store_true",
                        help="Use JSON formatting for output")
    parser.add_argument("-n", "--no-pager", action="store_true",
                        help="No pager will be used over output data")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def ctl_main(argv: Sequence[str]) -> int:
    parser = _argument_parser()
    options = parser.parse_args(list(argv))
    if options.help:
        sys.stdout.write(parser.format_help())
        return EXIT_OK
    if options.version:
        sys.stdout.write(f"trio-ocserv ctl {__version__}\n")
        return EXIT_OK
    try:
        message = parse_command(options.command)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n\n{parser.format_usage()}")
        return EXIT_FAILED
    try:
        return trio.run(
            lambda: run_command(
                options.socket_file, message, as_json=options.json, out=sys.stdout
            )
        )
    except CtlConnectionError as exc:
        sys.stderr.write(f"{exc}\n")
    except CtlProtocolError as exc:
        sys.stderr.write(f"bad answer from the server: {exc}\n")
    except trio.TooSlowError:
        sys.stderr.write("the server did not answer in time\n")
    except KeyboardInterrupt:
        return EXIT_OK if message.operation is Operation.SHOW_EVENTS else EXIT_FAILED
    return EXIT_FAILED
