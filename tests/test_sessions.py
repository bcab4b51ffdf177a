"""SessionTable: cookies, lifetimes, take-over, limits, deny-roaming. Times are explicit seconds."""

from __future__ import annotations

import base64
import re
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.sessions import (
    COOKIE_BYTES,
    CookieRejected,
    DisconnectReason,
    RoamingDenied,
    SessionSettings,
    SessionTable,
    SessionTimedOut,
    TooManyClients,
    TooManySameClients,
    decode_cookie,
    encode_cookie,
    normalize_address,
)

CLIENT = "198.18.0.2"


def table(**kwargs: object) -> SessionTable:
    return SessionTable(SessionSettings(**kwargs))  # type: ignore[arg-type]


def test_cookie_is_44_characters_of_base64_of_32_bytes() -> None:
    new = table().create("alice", CLIENT, 0.0)
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", new.cookie)
    assert len(base64.b64decode(new.cookie)) == COOKIE_BYTES
    assert decode_cookie(new.cookie) == base64.b64decode(new.cookie)
    assert decode_cookie(new.cookie + "  ") == base64.b64decode(new.cookie)


def test_cookies_are_unique() -> None:
    sessions = table()
    cookies = {sessions.create("alice", CLIENT, 0.0).cookie for _ in range(50)}
    assert len(cookies) == 50


@pytest.mark.parametrize(
    "text",
    ["", "   ", "AAAA", encode_cookie(bytes(31)), encode_cookie(bytes(33)), "é" * 44,
     encode_cookie(bytes(32))[:-1] + "!", "A" * 5000, encode_cookie(bytes(32)).rstrip("=")],
)
def test_malformed_cookies_decode_to_none(text: str) -> None:
    assert decode_cookie(text) is None


@settings(max_examples=300)
@given(st.text())
def test_decode_cookie_never_raises(text: str) -> None:
    result = decode_cookie(text)
    assert result is None or len(result) == COOKIE_BYTES


@settings(max_examples=100)
@given(st.binary(min_size=COOKIE_BYTES, max_size=COOKIE_BYTES))
def test_encode_decode_round_trip(raw: bytes) -> None:
    assert decode_cookie(encode_cookie(raw)) == raw


def test_lookup_finds_the_session_and_nothing_else() -> None:
    sessions = table()
    alice = sessions.create("alice", CLIENT, 0.0, group="sales", groups=("sales", "eng"))
    bob = sessions.create("bob", CLIENT, 0.0)
    assert sessions.lookup(alice.cookie, 1.0) is alice.session
    assert sessions.lookup(bob.cookie, 1.0) is bob.session
    assert sessions.lookup(encode_cookie(bytes(32)), 1.0) is None
    assert alice.session.group == "sales"
    assert alice.session.groups == ("sales", "eng")
    assert alice.session.lease_id != bob.session.lease_id


def test_unused_cookie_expires_after_cookie_timeout() -> None:
    sessions = table(cookie_timeout=300)
    new = sessions.create("alice", CLIENT, 100.0)
    assert sessions.next_expiry() == 400.0
    assert sessions.lookup(new.cookie, 399.9) is new.session
    assert sessions.lookup(new.cookie, 400.0) is None
    assert sessions.expire(399.0) == []
    assert sessions.expire(400.0) == [new.session]
    assert len(sessions) == 0
    assert sessions.next_expiry() is None


def test_cookie_slack_extends_like_ocserv_when_asked() -> None:
    sessions = table(cookie_timeout=300, cookie_slack=15)
    new = sessions.create("alice", CLIENT, 0.0)
    assert sessions.lookup(new.cookie, 314.0) is new.session
    assert sessions.lookup(new.cookie, 315.0) is None


def test_active_tunnel_never_expires_and_lost_connection_restarts_the_clock() -> None:
    sessions = table(cookie_timeout=300)
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 10.0)
    assert attached.replaced_tunnel_id is None
    assert sessions.expire(10_000.0) == []
    assert sessions.lookup(new.cookie, 10_000.0) is new.session
    kept = sessions.detach(new.session.session_id, attached.tunnel_id,
                           DisconnectReason.CONNECTION_LOST, 10_000.0)
    assert kept is None
    assert sessions.lookup(new.cookie, 10_299.0) is new.session
    again = sessions.attach(new.cookie, CLIENT, 10_299.0)
    assert again.session is new.session
    assert again.tunnel_id != attached.tunnel_id


@pytest.mark.parametrize("reason", [DisconnectReason.USER_LOGOUT,
                                    DisconnectReason.SERVER_DISCONNECT,
                                    DisconnectReason.SESSION_TIMEOUT])
def test_logout_disconnect_and_session_timeout_invalidate_the_cookie(
    reason: DisconnectReason,
) -> None:
    sessions = table()
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 1.0)
    removed = sessions.detach(new.session.session_id, attached.tunnel_id, reason, 2.0)
    assert removed is new.session
    assert sessions.lookup(new.cookie, 2.0) is None
    with pytest.raises(CookieRejected):
        sessions.attach(new.cookie, CLIENT, 2.0)


@pytest.mark.parametrize("reason", [DisconnectReason.USER_LOGOUT,
                                    DisconnectReason.SERVER_DISCONNECT])
def test_persistent_cookies_survive_logout_until_cookie_timeout(reason: DisconnectReason) -> None:
    sessions = table(persistent_cookies=True, cookie_timeout=60)
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 1.0)
    assert sessions.detach(new.session.session_id, attached.tunnel_id, reason, 5.0) is None
    assert sessions.lookup(new.cookie, 64.0) is new.session
    assert sessions.expire(65.0) == [new.session]


def test_persistent_cookies_do_not_survive_session_timeout() -> None:
    sessions = table(persistent_cookies=True)
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 1.0)
    assert sessions.detach(new.session.session_id, attached.tunnel_id,
                           DisconnectReason.SESSION_TIMEOUT, 2.0) is new.session


def test_reconnect_takes_over_the_running_tunnel() -> None:
    sessions = table(max_same_clients=1)
    new = sessions.create("alice", CLIENT, 0.0)
    first = sessions.attach(new.cookie, CLIENT, 1.0)
    second = sessions.attach(new.cookie, "198.18.0.9", 2.0)
    assert second.replaced_tunnel_id == first.tunnel_id
    assert second.session.lease_id == first.session.lease_id
    assert second.session.real_address == IPv4Address("198.18.0.9")
    assert sessions.statistics().active_tunnels == 1
    # The replaced tunnel's cleanup must not end the session now owned by the new tunnel.
    assert sessions.detach(new.session.session_id, first.tunnel_id,
                           DisconnectReason.USER_LOGOUT, 3.0) is None
    assert sessions.lookup(new.cookie, 3.0) is new.session
    assert new.session.tunnel_id == second.tunnel_id
    assert new.session.connects == 2


def test_session_timeout_counts_from_the_first_tunnel_and_reconnects_cannot_extend_it() -> None:
    sessions = table(session_timeout=100, cookie_timeout=1000)
    new = sessions.create("alice", CLIENT, 0.0)
    first = sessions.attach(new.cookie, CLIENT, 10.0)
    assert new.session.deadline == 110.0
    assert new.session.time_remaining(60.0) == 50.0
    sessions.detach(new.session.session_id, first.tunnel_id,
                    DisconnectReason.CONNECTION_LOST, 50.0)
    sessions.attach(new.cookie, CLIENT, 60.0)
    assert new.session.deadline == 110.0
    sessions.detach(new.session.session_id, new.session.tunnel_id or 0,
                    DisconnectReason.CONNECTION_LOST, 70.0)
    with pytest.raises(SessionTimedOut):
        sessions.attach(new.cookie, CLIENT, 110.0)
    assert sessions.expire(110.0) == [new.session]


def test_per_user_session_timeout_overrides_the_global_one() -> None:
    sessions = table(session_timeout=100)
    new = sessions.create("alice", CLIENT, 0.0, session_timeout=0)
    sessions.attach(new.cookie, CLIENT, 0.0)
    assert new.session.deadline is None
    assert new.session.time_remaining(5.0) is None
    other = sessions.create("bob", CLIENT, 0.0, session_timeout=30)
    assert other.session.time_remaining(0.0) == 30.0


def test_deny_roaming_refuses_another_address() -> None:
    sessions = table(deny_roaming=True)
    new = sessions.create("alice", "198.18.0.2", 0.0)
    with pytest.raises(RoamingDenied, match=r"198\.18\.0\.3"):
        sessions.attach(new.cookie, "198.18.0.3", 1.0)
    assert sessions.attach(new.cookie, "::ffff:198.18.0.2", 1.0).session is new.session


def test_roaming_is_allowed_by_default_and_per_user_override_wins() -> None:
    sessions = table()
    roamer = sessions.create("alice", "198.18.0.2", 0.0)
    assert sessions.attach(roamer.cookie, "203.0.113.5", 1.0).session is roamer.session
    pinned = sessions.create("bob", "198.18.0.2", 0.0, deny_roaming=True)
    with pytest.raises(RoamingDenied):
        sessions.attach(pinned.cookie, "203.0.113.5", 1.0)


def test_max_same_clients_refuses_a_fresh_login_while_the_session_lives() -> None:
    sessions = table(max_same_clients=1)
    first = sessions.create("alice", CLIENT, 0.0)
    with pytest.raises(TooManySameClients, match="alice"):
        sessions.create("alice", CLIENT, 1.0)
    sessions.create("bob", CLIENT, 1.0)
    attached = sessions.attach(first.cookie, CLIENT, 2.0)
    with pytest.raises(TooManySameClients):
        sessions.create("alice", CLIENT, 3.0)
    # A client that vanished without logout keeps its cookie but no longer blocks a new login...
    sessions.detach(first.session.session_id, attached.tunnel_id,
                    DisconnectReason.CONNECTION_LOST, 4.0)
    second = sessions.create("alice", CLIENT, 5.0)
    sessions.attach(second.cookie, CLIENT, 5.0)
    # ...but it cannot come back while the new tunnel runs.
    with pytest.raises(TooManySameClients):
        sessions.attach(first.cookie, CLIENT, 6.0)


def test_max_same_clients_per_user_override() -> None:
    sessions = table(max_same_clients=1)
    sessions.create("alice", CLIENT, 0.0, max_same_clients=2)
    sessions.create("alice", CLIENT, 0.0, max_same_clients=2)
    with pytest.raises(TooManySameClients):
        sessions.create("alice", CLIENT, 0.0, max_same_clients=2)
    unlimited = table(max_same_clients=0)
    for _ in range(5):
        unlimited.create("alice", CLIENT, 0.0)
    assert len(unlimited.sessions_of("alice")) == 5


def test_max_clients_counts_tunnels_and_fresh_logins() -> None:
    sessions = table(max_clients=2, cookie_timeout=10)
    a = sessions.create("a", CLIENT, 0.0)
    sessions.create("b", CLIENT, 0.0)
    with pytest.raises(TooManyClients, match="max-clients"):
        sessions.create("c", CLIENT, 1.0)
    # Fresh logins that never connected stop counting once their cookie expired.
    sessions.attach(a.cookie, CLIENT, 1.0)
    c = sessions.create("c", CLIENT, 11.0)
    with pytest.raises(TooManyClients):
        sessions.create("d", CLIENT, 11.0)
    sessions.attach(c.cookie, CLIENT, 12.0)
    assert sessions.statistics().active_tunnels == 2


def test_max_clients_is_enforced_again_at_connect() -> None:
    sessions = table(max_clients=1, cookie_timeout=100)
    a = sessions.create("a", CLIENT, 0.0)
    attached = sessions.attach(a.cookie, CLIENT, 0.0)
    sessions.detach(a.session.session_id, attached.tunnel_id,
                    DisconnectReason.CONNECTION_LOST, 1.0)
    b = sessions.create("b", CLIENT, 2.0)
    sessions.attach(b.cookie, CLIENT, 2.0)
    with pytest.raises(TooManyClients):
        sessions.attach(a.cookie, CLIENT, 3.0)


def test_remove_forgets_the_session_and_returns_the_tunnel_to_cancel() -> None:
    sessions = table()
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 0.0)
    removed = sessions.remove(new.session.session_id)
    assert removed is new.session
    assert removed.tunnel_id == attached.tunnel_id
    assert sessions.remove(new.session.session_id) is None
    assert sessions.statistics().active_tunnels == 0
    assert sessions.detach(new.session.session_id, attached.tunnel_id,
                           DisconnectReason.CONNECTION_LOST, 1.0) is None
    assert sessions.sessions_of("alice") == []


def test_unknown_cookie_is_rejected() -> None:
    with pytest.raises(CookieRejected, match="not acceptable"):
        table().attach("garbage", CLIENT, 0.0)


def test_stale_expiry_entries_are_skipped() -> None:
    sessions = table(cookie_timeout=10)
    new = sessions.create("alice", CLIENT, 0.0)
    attached = sessions.attach(new.cookie, CLIENT, 1.0)
    assert sessions.next_expiry() is None
    sessions.detach(new.session.session_id, attached.tunnel_id,
                    DisconnectReason.CONNECTION_LOST, 5.0)
    assert sessions.next_expiry() == 15.0
    assert sessions.expire(14.0) == []
    assert sessions.expire(15.0) == [new.session]


def test_normalize_address() -> None:
    assert normalize_address("::ffff:10.0.0.1") == IPv4Address("10.0.0.1")
    assert str(normalize_address("2001:db8::1")) == "2001:db8::1"
