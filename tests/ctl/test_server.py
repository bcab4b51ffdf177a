"""The control socket in-process: a fake server view over a real Unix socket in tmp_path.

Rules: sockets only under tmp_path; every test has a hard `fail_after`; the server task is
cancelled (and its socket file removed) when the test's nursery ends.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from io import StringIO
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_ocserv.ctl.cli import ctl_main, run_command
from trio_ocserv.ctl.client import CtlConnectionError, request, watch_events
from trio_ocserv.ctl.commands import Operation, Request, parse_command
from trio_ocserv.ctl.event_feed import EventFeed
from trio_ocserv.ctl.protocol import LineBuffer, Outcome, Reply, decode_reply
from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)
from trio_ocserv.ctl.server import ControlSocketError, CtlServer, bind_control_socket

NOW = 1_800_000_000.0
ALICE = UserRecord(
    id=7, username="alice", groupname="(none)", device="vpns0", remote_ip="192.0.2.10",
    ipv4="192.168.99.2", rx=1234, tx=5678, connected_at=NOW - 30, session="A" * 28,
)
SESSION = SessionRecord(
    session="abcdEFGH" + "x" * 20, created=NOW - 40, username="alice", groupname="(none)",
    remote_ip="192.0.2.10", in_use=True,
)


@attrs.define
class FakeView:
    users_: list[UserRecord] = attrs.Factory(lambda: [ALICE])
    sessions_: list[SessionRecord] = attrs.Factory(lambda: [SESSION])

    def wall_time(self) -> float:
        return NOW

    def status(self) -> ServerStatus:
        return ServerStatus(
            pid=42, started_at=NOW - 100, active_sessions=len(self.users_),
            total_sessions=len(self.sessions_), ips_banned=0, stats_reset_at=NOW - 100,
        )

    def users(self) -> list[UserRecord]:
        return list(self.users_)

    def sessions(self) -> list[SessionRecord]:
        return list(self.sessions_)

    def bans(self) -> list[BanRecord]:
        return [BanRecord(address="203.0.113.9", score=80, banned_until=NOW + 60)]

    def ban_points(self) -> list[BanRecord]:
        return [BanRecord(address="203.0.113.9", score=80)]


@attrs.define
class FakeActions:
    calls: list[tuple[str, object]] = attrs.Factory(list)
    succeed: bool = True

    async def disconnect_user(self, username: str) -> bool:
        self.calls.append(("disconnect_user", username))
        return self.succeed

    async def disconnect_id(self, tunnel_id: int) -> bool:
        self.calls.append(("disconnect_id", tunnel_id))
        return self.succeed

    async def terminate_user(self, username: str) -> bool:
        self.calls.append(("terminate_user", username))
        return self.succeed

    async def terminate_id(self, tunnel_id: int) -> bool:
        self.calls.append(("terminate_id", tunnel_id))
        return self.succeed

    async def terminate_session(self, session: str) -> bool:
        self.calls.append(("terminate_session", session))
        return self.succeed

    def unban_ip(self, address: str) -> bool:
        self.calls.append(("unban_ip", address))
        return self.succeed

    def reload(self) -> None:
        self.calls.append(("reload", None))

    def stop(self) -> None:
        self.calls.append(("stop", None))


@attrs.define
class Running:
    server: CtlServer
    actions: FakeActions
    path: Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    actions = FakeActions()
    server = CtlServer(tmp_path / "occtl.socket", FakeView(), actions)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield Running(server, actions, server.path)
        nursery.cancel_scope.cancel()


async def _run(running: Running, words: str, as_json: bool = False) -> tuple[str, int]:
    out = StringIO()
    with trio.fail_after(5):
        code = await run_command(
            running.path, parse_command(words.split()), as_json=as_json, out=out,
            clock=lambda: NOW,
        )
    return out.getvalue(), code


async def test_socket_is_private_and_removed_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server = CtlServer(path, FakeView(), FakeActions())
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            mode = path.lstat().st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
            assert [p.name for p in await trio.Path(tmp_path).iterdir()] == ["ctl.sock"]
            nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_show_users_json_parses(running: Running) -> None:
    text, code = await _run(running, "show users", as_json=True)
    assert code == 0
    users = json.loads(text)
    assert [(u["Username"], u["IPv4"], u["RX"], u["TX"]) for u in users] == [
        ("alice", "192.168.99.2", "1234", "5678")
    ]
    assert users[0]["_Connected at"] == "   30s"


@pytest.mark.parametrize(
    "words",
    ["show status", "show users", "show user alice", "show id 7", "show sessions all",
     "show sessions valid", "show session abcd", "show ip bans", "show ip ban points",
     "show iroutes"],
)
async def test_every_listing_is_valid_json(running: Running, words: str) -> None:
    text, code = await _run(running, words, as_json=True)
    assert code == 0
    assert json.loads(text)


async def test_show_users_plain(running: Running) -> None:
    text, code = await _run(running, "show users")
    assert code == 0
    assert text.splitlines()[1].split() == [
        "7", "alice", "default", "192.0.2.10", "192.168.99.2", "vpns0", "30s", "(no-dtls)",
        "connected",
    ]


async def test_unknown_user_or_id_exits_2(running: Running) -> None:
    assert await _run(running, "show user nobody") == ("user or ID not found\n", 2)
    assert await _run(running, "show id 99") == ("user or ID not found\n", 2)
    assert await _run(running, "show id x") == ("user or ID not found\n", 2)
    assert await _run(running, "show user nobody", as_json=True) == ("[\n]\n", 2)


async def test_sessions_are_found_by_prefix(running: Running) -> None:
    text, code = await _run(running, "show session abcdEF")
    assert code == 0 and "\tFull session ID: abcdEFGH" in text
    assert await _run(running, "show session abc") == ("Session ID not found or expired\n", 0)


async def test_disconnect_and_terminate_call_the_actions(running: Running) -> None:
    assert await _run(running, "disconnect user alice") == ("user 'alice' was disconnected\n", 0)
    assert await _run(running, "disconnect id 7") == ("connection ID '7' was disconnected\n", 0)
    assert await _run(running, "terminate user alice") == ("user 'alice' was terminated\n", 0)
    assert await _run(running, "terminate id 7") == ("connection ID '7' was terminated\n", 0)
    assert await _run(running, "terminate session abcdEF") == (
        "session 'abcdEF' was terminated\n", 0
    )
    assert running.actions.calls == [
        ("disconnect_user", "alice"),
        ("disconnect_id", 7),
        ("terminate_user", "alice"),
        ("terminate_id", 7),
        ("terminate_session", SESSION.session),
    ]


async def test_failed_actions_exit_1(running: Running) -> None:
    running.actions.succeed = False
    assert await _run(running, "disconnect user bob") == (
        "could not disconnect user 'bob'\n", 1
    )
    assert await _run(running, "unban ip 10.1.2.3") == ("could not unban IP '10.1.2.3'\n", 1)
    # Not an ID / not an address: refused before any action runs.
    assert await _run(running, "disconnect id abc") == ("could not disconnect ID 'abc'\n", 1)
    assert await _run(running, "unban ip nonsense") == ("could not unban IP 'nonsense'\n", 1)
    assert await _run(running, "terminate session zz") == (
        "could not terminate session 'zz'\n", 1
    )
    assert running.actions.calls == [("disconnect_user", "bob"), ("unban_ip", "10.1.2.3")]


async def test_unban_reload_and_stop(running: Running) -> None:
    assert await _run(running, "unban ip 203.0.113.9") == ("IP '203.0.113.9' was unbanned\n", 0)
    assert await _run(running, "reload") == ("Server scheduled to reload\n", 0)
    assert await _run(running, "stop now") == ("Server scheduled to stop\n", 0)
    assert running.actions.calls == [("unban_ip", "203.0.113.9"), ("reload", None),
                                     ("stop", None)]


def _event(kind: EventKind, user: str) -> TunnelEvent:
    return TunnelEvent(kind=kind, id=1, username=user, remote_ip="192.0.2.1", ip="10.0.0.2",
                       reason="server disconnected" if kind is EventKind.DISCONNECTED else "")


async def test_show_events_streams_until_the_client_leaves(running: Running) -> None:
    feed: EventFeed = running.server.events
    received: list[TunnelEvent] = []
    subscribed, both = trio.Event(), trio.Event()

    def on_event(event: TunnelEvent) -> None:
        received.append(event)
        if len(received) == 2:
            both.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                watch_events, running.path, on_event, lambda reply: subscribed.set()
            )
            await subscribed.wait()
            assert feed.listeners == 1
            feed.publish(_event(EventKind.CONNECTED, "alice"))
            feed.publish(_event(EventKind.DISCONNECTED, "alice"))
            await both.wait()
            nursery.cancel_scope.cancel()
        assert [(e.kind, e.username) for e in received] == [
            (EventKind.CONNECTED, "alice"), (EventKind.DISCONNECTED, "alice")
        ]
        # The server sees the hang-up and drops the subscription.
        await trio.testing.wait_all_tasks_blocked()
        assert feed.listeners == 0


async def test_show_events_prints_lines(running: Running) -> None:
    out = StringIO()
    feed = running.server.events
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_command(
                running.path, Request(Operation.SHOW_EVENTS), as_json=True, out=out))
            await trio.testing.wait_all_tasks_blocked()
            assert feed.listeners == 1
            feed.publish(_event(EventKind.CONNECTED, "bob"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert json.loads(out.getvalue())["Username"] == "bob"


async def _raw_exchange(path: Path, payload: bytes) -> Reply:
    stream = await trio.open_unix_socket(os.fspath(path))
    async with stream:
        await stream.send_all(payload)
        buffer = LineBuffer(1 << 20)
        while (line := buffer.next_line()) is None:
            data = await stream.receive_some(4096)
            assert data, "server closed without a reply"
            buffer.receive_data(data)
    return decode_reply(line, Operation.RELOAD)


async def test_malformed_requests_are_refused(running: Running) -> None:
    with trio.fail_after(5):
        for payload in (b"hello\n", b'{"v": 1, "op": "show-user"}\n', b"{" * 5000):
            reply = await _raw_exchange(running.path, payload)
            assert reply.outcome is Outcome.REFUSED and reply.message
        # The server still answers afterwards.
        assert (await request(running.path, Request(Operation.RELOAD))).outcome is Outcome.OK


async def test_a_silent_client_is_dropped(tmp_path: Path) -> None:
    server = CtlServer(tmp_path / "s", FakeView(), FakeActions(), request_timeout=0.2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            stream = await trio.open_unix_socket(os.fspath(server.path))
            assert await stream.receive_some(100) == b""
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_stale_socket_is_replaced_other_files_are_not(tmp_path: Path) -> None:
    path = tmp_path / "occtl.socket"
    bind_control_socket(path).socket.close()  # a socket file left by a dead server
    listener = bind_control_socket(path)
    await listener.aclose()
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(ControlSocketError):
        bind_control_socket(other)
    assert other.read_text() == "keep me"


async def test_missing_server_is_reported_like_occtl(tmp_path: Path) -> None:
    path = tmp_path / "nothing.socket"
    with pytest.raises(CtlConnectionError, match="error connecting to ocserv socket"):
        await request(path, Request(Operation.SHOW_USERS))


async def test_ctl_main_end_to_end(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-s", str(running.path), "-j", "show", "users"]
    with trio.fail_after(10):
        code = await trio.to_thread.run_sync(ctl_main, argv)
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)[0]["Username"] == "alice"


def test_ctl_main_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl_main(["-s", str(tmp_path / "none"), "show", "users"]) == 1
    assert "error connecting to ocserv socket" in capsys.readouterr().err
    assert ctl_main(["show", "nonsense"]) == 1
    assert "unknown command" in capsys.readouterr().err
    assert ctl_main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--socket-file" in help_text and "show ip ban points" in help_text


def test_cli_dispatches_ctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trio_ocserv.cli import main

    assert main(["ctl", "-s", str(tmp_path / "none"), "reload"]) == 1
    assert "error connecting" in capsys.readouterr().err
