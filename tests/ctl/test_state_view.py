"""make_server_view / make_server_actions on real session, ban and lease tables.

The tunnels are stand-ins with the attributes the adapter reads (server/state.py TunnelHandle).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import attrs
import pytest
import trio

from trio_ocserv.bans import BanSettings, BanTable
from trio_ocserv.config.model import Settings
from trio_ocserv.ctl.records import EventKind, TunnelEvent
from trio_ocserv.ctl.state_view import (
    describe_dtls_suite,
    describe_tls,
    make_server_actions,
    make_server_view,
)
from trio_ocserv.net.pool import IpLeasePool
from trio_ocserv.server.tunnel import TunnelCounters, TunnelEnd
from trio_ocserv.sessions import DisconnectReason, Session, SessionSettings, SessionTable

WALL_OFFSET = 1_800_000_000.0


@attrs.define
class Clock:
    now: float = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_OFFSET + self.now


@attrs.define
class FakeDtls:
    cipher_name: str = "TLS_PSK_WITH_AES_256_GCM_SHA384"
    path_up: bool = True


@attrs.define
class FakeStream:
    tls_version: str = "TLSv1.3"
    cipher: str = "TLS_AES_256_GCM_SHA384"


@attrs.define(eq=False)
class FakeState:
    settings: Settings
    sessions: SessionTable
    bans: BanTable
    pool: IpLeasePool
    clock_source: Clock
    tunnels: dict[int, FakeHandle] = attrs.Factory(dict)

    def clock(self) -> float:
        return self.clock_source.monotonic()

    def wall_clock(self) -> float:
        return self.clock_source.wall()


@attrs.define(eq=False)
class FakeTunnel:
    """Stops as connect.py does: the handle leaves `tunnels`, then `closed` is set."""

    state: FakeState
    tunnel_id: int
    counters: TunnelCounters = attrs.Factory(TunnelCounters)
    dtls: FakeDtls | None = attrs.Factory(FakeDtls)
    stream: FakeStream = attrs.Factory(FakeStream)
    stopped_with: list[object] = attrs.Factory(list)

    def stop(self, why: TunnelEnd = TunnelEnd.SERVER_DISCONNECT) -> None:
        self.stopped_with.append(why)
        handle = self.state.tunnels.pop(self.tunnel_id)
        handle.closed.set()


@attrs.define(eq=False)
class FakeHandle:
    tunnel: FakeTunnel
    session: Session
    device: str
    closed: trio.Event = attrs.Factory(trio.Event)
    user_agent: str = "Open AnyConnect VPN Agent v9.01-3"
    hostname: str = "laptop"
    mtu: int = 1434


def make_state(*, persistent_cookies: bool = False) -> FakeState:
    settings = Settings(
        dpd=90,
        keepalive=32400,
        dns=(IPv4Address("192.168.99.1"),),
        route=(IPv4Network("198.19.0.0/16"), "default"),
    )
    return FakeState(
        settings=settings,
        sessions=SessionTable(SessionSettings(persistent_cookies=persistent_cookies)),
        bans=BanTable(BanSettings(max_ban_score=20)),
        pool=IpLeasePool(IPv4Network("192.168.99.0/24")),
        clock_source=Clock(),
    )


def connect(state: FakeState, user: str, address: str = "198.51.100.7") -> tuple[int, str]:
    """Log in and bring up a tunnel, as login + CONNECT would; returns (tunnel id, cookie)."""
    now = state.clock()
    new = state.sessions.create(user, address, now, groups=("staff",))
    attachment = state.sessions.attach(new.cookie, address, now)
    state.pool.allocate(new.session.lease_id, user, ipv6=False)
    tunnel = FakeTunnel(state, attachment.tunnel_id)
    state.tunnels[attachment.tunnel_id] = FakeHandle(tunnel, new.session, "vpns0")
    return attachment.tunnel_id, new.cookie


def leased_ipv4(state: FakeState, tunnel_id: int) -> str:
    lease = state.pool.lease(state.tunnels[tunnel_id].session.lease_id)
    assert lease is not None and lease.ipv4 is not None
    return str(lease.ipv4.address)


def test_users_show_the_tunnel_figures() -> None:
    state = make_state()
    tunnel_id, _ = connect(state, "alice")
    state.tunnels[tunnel_id].tunnel.counters.bytes_in = 300
    state.tunnels[tunnel_id].tunnel.counters.bytes_out = 604
    state.clock_source.now += 4
    view = make_server_view(state)
    [user] = view.users()
    assert (user.id, user.username, user.groupname, user.device) == (
        tunnel_id, "alice", "staff", "vpns0"
    )
    assert (user.remote_ip, user.ipv4, user.ptp_ipv4) == (
        "198.51.100.7", leased_ipv4(state, tunnel_id), "192.168.99.1"
    )
    assert (user.rx, user.tx, user.dpd, user.keepalive, user.mtu) == (300, 604, 90, 32400, 1434)
    assert user.connected_at == WALL_OFFSET + 100
    assert view.wall_time() - user.connected_at == 4
    assert user.dtls_cipher == "(DTLS1.2)-(PSK)-(AES-256-GCM)"
    assert user.tls_ciphersuite == "(TLS1.3)-(TLS_AES_256_GCM_SHA384)"
    assert (user.user_agent, user.hostname) == ("Open AnyConnect VPN Agent v9.01-3", "laptop")
    assert user.dns == ("192.168.99.1",)
    assert user.routes == ("198.19.0.0/255.255.0.0", "default")
    assert len(user.session) == 28


def test_sessions_and_their_public_ids() -> None:
    state = make_state()
    _, cookie = connect(state, "alice")
    pending = state.sessions.create("bob", "198.51.100.8", state.clock())
    view = make_server_view(state)
    records = {r.username: r for r in view.sessions()}
    assert records["alice"].in_use and not records["bob"].in_use
    assert records["bob"].groupname == "(none)"
    assert records["alice"].user_agent.startswith("Open AnyConnect")
    assert all(r.valid for r in records.values())
    # The public id is stable, names the session, and is not the cookie.
    assert records["alice"].session == view.users()[0].session
    assert cookie not in {r.session for r in records.values()}
    assert view.session_by_public_id(records["bob"].session) is pending.session
    state.clock_source.now += 10_000  # bob's cookie expired (not yet purged)
    assert {r.username: r.valid for r in view.sessions()} == {"alice": True, "bob": False}


def test_bans_and_points() -> None:
    state = make_state()
    now = state.clock()
    state.bans.wrong_password("203.0.113.5", now)
    state.bans.wrong_password("203.0.113.6", now)
    state.bans.wrong_password("203.0.113.6", now)
    view = make_server_view(state)
    assert [(b.address, b.score) for b in view.ban_points()] == [
        ("203.0.113.5", 10), ("203.0.113.6", 20)
    ]
    [ban] = view.bans()
    assert ban.address == "203.0.113.6"
    assert ban.banned_until == WALL_OFFSET + now + state.bans.settings.ban_time
    assert view.status().ips_banned == 1


async def test_disconnect_user_ends_its_tunnels() -> None:
    state = make_state()
    first, _ = connect(state, "alice")
    connect(state, "alice")
    other, _ = connect(state, "bob")
    actions = make_server_actions(make_server_view(state), reload=lambda: None, stop=lambda: None)
    with trio.fail_after(5):
        assert await actions.disconnect_user("alice")
        assert not await actions.disconnect_user("alice")
        assert list(state.tunnels) == [other]
        assert await actions.disconnect_id(other)
        assert not await actions.disconnect_id(first)
    assert not state.tunnels


async def test_terminate_id_invalidates_a_persistent_cookie() -> None:
    state = make_state(persistent_cookies=True)
    tunnel_id, cookie = connect(state, "alice")
    session = state.tunnels[tunnel_id].session
    actions = make_server_actions(make_server_view(state), reload=lambda: None, stop=lambda: None)
    with trio.fail_after(5):
        assert await actions.terminate_id(tunnel_id)
    assert state.sessions.lookup(cookie, state.clock()) is None
    assert state.pool.lease(session.lease_id) is None
    # The tunnel's own cleanup runs after `closed`: it must find nothing left to release.
    now = state.clock()
    assert state.sessions.detach(
        session.session_id, tunnel_id, DisconnectReason.SERVER_DISCONNECT, now
    ) is None
    assert state.sessions.statistics().active_tunnels == 0


async def test_terminate_session_and_user_without_tunnels() -> None:
    state = make_state()
    view = make_server_view(state)
    actions = make_server_actions(view, reload=lambda: None, stop=lambda: None)
    waiting = state.sessions.create("carol", "198.51.100.9", state.clock())
    state.pool.allocate(waiting.session.lease_id, "carol", ipv6=False)
    public = view.public_session_id(waiting.session.session_id)
    with trio.fail_after(5):
        assert await actions.terminate_session(public)
        assert not await actions.terminate_session(public)
        assert state.pool.lease(waiting.session.lease_id) is None
        connect(state, "dave")
        connect(state, "dave")
        assert await actions.terminate_user("dave")
        assert not await actions.terminate_user("dave")
    assert len(state.sessions) == 0 and not state.tunnels and len(state.pool) == 0


def test_unban_reload_and_stop() -> None:
    state = make_state()
    calls: list[str] = []
    actions = make_server_actions(
        make_server_view(state), reload=lambda: calls.append("reload"),
        stop=lambda: calls.append("stop"),
    )
    state.bans.wrong_password("203.0.113.5", state.clock())
    assert actions.unban_ip("203.0.113.5")
    assert not actions.unban_ip("203.0.113.5")
    actions.reload()
    actions.stop()
    assert calls == ["reload", "stop"]


async def test_tunnel_hooks_publish_events_and_count() -> None:
    state = make_state()
    view = make_server_view(state)
    tunnel_id, _ = connect(state, "alice")
    handle = state.tunnels[tunnel_id]
    handle.tunnel.counters.bytes_in = 1000
    handle.tunnel.counters.bytes_out = 2000
    got: list[TunnelEvent] = []
    with view.events.subscribe() as subscription:
        view.tunnel_up(tunnel_id, handle)
        state.clock_source.now += 65
        view.tunnel_down(tunnel_id, handle, TunnelEnd.IDLE_TIMEOUT)
        got.append(subscription.receive.receive_nowait())
        got.append(subscription.receive.receive_nowait())
    address = leased_ipv4(state, tunnel_id)
    assert address.startswith("192.168.99.")
    assert [(e.kind, e.ip) for e in got] == [
        (EventKind.CONNECTED, address), (EventKind.DISCONNECTED, address)
    ]
    assert (got[1].reason, got[1].duration, got[1].rx, got[1].tx) == (
        "idle timeout", 65.0, 1000, 2000
    )
    state.tunnels.clear()
    status = view.status()
    assert (status.sessions_handled, status.timed_out_idle_sessions) == (1, 1)
    assert (status.rx, status.tx, status.max_session_time) == (1000, 2000, 65)


def test_a_slow_listener_loses_events_not_the_server() -> None:
    state = make_state()
    view = make_server_view(state)
    tunnel_id, _ = connect(state, "alice")
    with view.events.subscribe() as subscription:
        for _ in range(view.events.queue_length + 5):
            view.tunnel_up(tunnel_id, state.tunnels[tunnel_id])
        assert subscription.dropped == 5


@pytest.mark.parametrize(
    ("suite", "text"),
    [
        ("TLS_PSK_WITH_AES_256_GCM_SHA384", "(DTLS1.2)-(PSK)-(AES-256-GCM)"),
        ("TLS_PSK_WITH_CHACHA20_POLY1305_SHA256", "(DTLS1.2)-(PSK)-(CHACHA20-POLY1305)"),
        ("TLS_PSK_WITH_AES_128_CBC_SHA256", "(DTLS1.2)-(PSK)-(AES-128-CBC)-(SHA256)"),
        ("TLS_RSA_WITH_AES_256_CBC_SHA", "(DTLS0.9)-(RSA)-(AES-256-CBC)-(SHA1)"),
        ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", "(DTLS0.9)-(RSA)-(3DES-CBC)-(SHA1)"),
        ("TLS_RSA_WITH_AES_128_GCM_SHA256", "(DTLS1.2)-(RSA)-(AES-128-GCM)"),
        ("", ""),
    ],
)
def test_dtls_descriptions(suite: str, text: str) -> None:
    assert describe_dtls_suite(suite) == text


def test_tls_description() -> None:
    assert describe_tls(None, None) == ""
    assert describe_tls("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384") == (
        "(TLS1.2)-(ECDHE-RSA-AES256-GCM-SHA384)"
    )
