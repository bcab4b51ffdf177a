"""Plain and JSON output against what the real occtl 1.1.6 printed (tests/ctl/data)."""

from __future__ import annotations

import json

import attrs
import pytest

from trio_ocserv.ctl import render_json, render_text
from trio_ocserv.ctl.records import (
    BanRecord,
    EventKind,
    ServerStatus,
    SessionRecord,
    TunnelEvent,
    UserRecord,
)
from trio_ocserv.ctl.value_format import format_bytes, format_rate

from .conftest import sample

pytestmark = pytest.mark.usefixtures("utc")

# 2026-11-26 10:58:22 UTC: the captured server's start (its "raw_up_since").
STARTED = 1795690702.0
# 2026-11-26 10:59:30 UTC: "now" for the ban samples.
BAN_NOW = 1795690770.0

ALICE = UserRecord(
    id=10007,
    username="alice",
    groupname="engineering",
    device="vpns0",
    mtu=1434,
    remote_ip="198.18.87.246",
    local_device_ip="198.18.87.245",
    ipv4="192.168.99.50",
    ptp_ipv4="192.168.99.1",
    user_agent="Open AnyConnect VPN Agent v9.01-3",
    hostname="vm",
    rx=300,
    tx=604,
    dpd=90,
    keepalive=32400,
    connected_at=STARTED,
    session="jpV+jq9NYvEeKLNMb+4mZWwPTEY=",
    tls_ciphersuite="(TLS1.3)-(ECDHE-SECP256R1)-(ECDSA-SECP256R1-SHA256)-(AES-256-GC",
    dtls_cipher="(DTLS1.2)-(PSK)-(AES-256-GCM)",
    dns=("192.168.99.1",),
    routes=("198.19.0.0/255.255.0.0",),
)
ALICE_NOW = STARTED + 4

ALICE_SESSION = SessionRecord(
    session="jpV+jq9NYvEeKLNMb+4mZWwPTEY=",
    created=STARTED,
    username="alice",
    groupname="engineering",
    user_agent="Open AnyConnect VPN Agent v9.01-3",
    remote_ip="198.18.87.246",
    in_use=True,
)
BOB_SESSION = SessionRecord(
    session="k81KT45d2Bx9xMODwhorkwcm6aY=",
    created=STARTED,
    username="bob",
    groupname="(none)",
    user_agent="Open AnyConnect VPN Agent v9.01-3",
    remote_ip="198.18.203.34",
    in_use=True,
)
BANNED = BanRecord(address="10.77.0.2", score=34, banned_until=BAN_NOW + 300)


def test_show_users_json_is_byte_identical() -> None:
    assert render_json.users_json([ALICE], ALICE_NOW) == sample("occtl-show-users.json")
    assert render_json.users_json([ALICE], ALICE_NOW) == sample("occtl-show-user.json")


def test_show_users_json_parses_with_occtls_keys_and_types() -> None:
    ours = json.loads(render_json.users_json([ALICE, ALICE], ALICE_NOW))
    theirs = json.loads(sample("occtl-show-users.json"))
    assert len(ours) == 2
    assert list(ours[0]) == list(theirs[0])
    assert {k: type(v) for k, v in ours[1].items()} == {k: type(v) for k, v in theirs[0].items()}


def test_no_users_is_an_empty_array() -> None:
    assert render_json.users_json([], ALICE_NOW) == sample("occtl-show-users-empty.json")
    assert render_text.users_table([], ALICE_NOW) == ""


def test_show_users_table_matches_columns() -> None:
    assert render_text.users_table([ALICE], ALICE_NOW) == sample("occtl-show-users.txt")


def test_show_user_details_match() -> None:
    assert render_text.user_details([ALICE], ALICE_NOW) == sample("occtl-show-user.txt")


def test_byte_counts_and_rates_match_a_larger_transfer() -> None:
    user = json.loads(sample("occtl-show-users-kb.json"))[0]
    elapsed = int(user["_Connected at"].strip().removesuffix("s"))
    for side in ("RX", "TX"):
        count = int(user[side])
        assert format_bytes(count) == user[f"_{side}"]
        assert format_rate(count, elapsed) == user[f"Average {side}"]


def test_show_status_json_has_occtls_keys_in_order() -> None:
    status = ServerStatus(
        pid=9997, started_at=STARTED, active_sessions=1, total_sessions=0, ips_banned=0,
        stats_reset_at=STARTED,
    )
    ours = json.loads(render_json.status_json(status, STARTED + 4))
    theirs = json.loads(sample("occtl-show-status.json"))
    assert list(ours) == list(theirs)
    # Everything but the sec-mod figures (we have no separate sec-mod process) is equal.
    differing = {k for k in theirs if ours[k] != theirs[k]}
    assert differing == {"Sec-mod PID", "Sec-mod instance count"}


def test_show_status_text_matches_but_for_the_sec_mod_lines() -> None:
    status = ServerStatus(
        pid=9997, started_at=STARTED, active_sessions=1, total_sessions=0, ips_banned=0,
        stats_reset_at=STARTED,
    )
    ours = render_text.status_text(status, STARTED + 4).splitlines()
    theirs = sample("occtl-show-status.txt").splitlines()
    assert len(ours) == len(theirs)
    different = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    assert different == [
        ("\tSec-mod PID: 9997", "\tSec-mod PID: 9999"),
        ("\tSec-mod instance count: 1", "\tSec-mod instance count: 2"),
    ]


def test_show_sessions_json_is_occtls_without_its_trailing_comma() -> None:
    theirs = sample("occtl-show-sessions-all.json").replace('"in_use":  1,\n', '"in_use":  1\n')
    assert render_json.sessions_json([ALICE_SESSION]) == theirs
    json.loads(theirs)  # the repaired sample is valid JSON, and so is ours


def test_show_sessions_table_matches() -> None:
    assert render_text.sessions_table([ALICE_SESSION], STARTED + 4) == sample(
        "occtl-show-sessions-all.txt"
    )


def test_show_session_details_match() -> None:
    assert render_text.session_details([BOB_SESSION]) == sample("occtl-show-session.txt")
    theirs = sample("occtl-show-session.json").replace('"in_use":  1,\n', '"in_use":  1\n')
    assert render_json.sessions_json([BOB_SESSION]) == theirs


def test_show_ip_bans_match() -> None:
    assert render_text.bans_table([BANNED], BAN_NOW) == sample("occtl-show-ip-bans.txt")
    assert render_json.bans_json([BANNED], BAN_NOW) == sample("occtl-show-ip-bans.json")


def test_show_ip_ban_points_match() -> None:
    points = [BanRecord(address="10.77.0.2", score=34)]
    assert render_text.ban_points_table(points) == sample("occtl-show-ip-ban-points.txt")
    assert render_json.ban_points_json(points) == sample("occtl-show-ip-ban-points.json")


def test_show_iroutes_prints_the_header_and_users_with_iroutes() -> None:
    assert render_text.iroutes_table([ALICE]) == sample("occtl-show-iroutes.txt")
    routed = attrs.evolve(ALICE, iroutes=("10.10.0.0/255.255.0.0",))
    row = render_text.iroutes_table([ALICE, routed]).splitlines()[1:]
    assert [line.split() for line in row] == [
        ["10007", "alice", "default", "vpns0", "192.168.99.50", "10.10.0.0/255.255.0.0"]
    ]
    assert json.loads(render_json.iroutes_json([routed])) == [{
        "ID": 10007, "Username": "alice", "vhost": "default", "Device": "vpns0",
        "IP": "192.168.99.50", "iRoutes": ["10.10.0.0/255.255.0.0"],
    }]


def test_events_lines_match() -> None:
    connected = TunnelEvent(
        kind=EventKind.CONNECTED, id=11111, username="bob", remote_ip="198.18.203.34",
        ip="192.168.99.106",
    )
    disconnected = TunnelEvent(
        kind=EventKind.DISCONNECTED, id=11111, username="bob", remote_ip="198.18.203.34",
        ip="192.168.99.106", reason="server disconnected", duration=3.2,
    )
    lines = sample("occtl-show-events.txt").splitlines(keepends=True)
    assert render_text.event_line(connected) == lines[-2]
    assert render_text.event_line(disconnected) == lines[-1]
    as_json = json.loads(render_json.event_json(disconnected))
    assert as_json["Event"] == "disconnected"
    assert as_json["Reason"] == "server disconnected"
    assert as_json["Time"] == 3


def test_dtls_column_without_dtls() -> None:
    assert render_text.dtls_cipher_column("") == "(no-dtls)"
    assert render_text.dtls_cipher_column("(DTLS0.9)-(RSA)-(AES-256-CBC)-(SHA1)") == (
        "(AES-256-CBC)"
    )


def test_user_details_without_optional_fields() -> None:
    bare = attrs.evolve(
        ALICE, mtu=None, local_device_ip="", hostname="", user_agent="", dtls_cipher="",
        tls_ciphersuite="", dns=(), routes=(), ipv4=None, ipv6="fd00::2", ptp_ipv6="fd00::1",
    )
    text = render_text.user_details([bare], ALICE_NOW)
    assert "\tDevice: vpns0\n" in text
    assert "\tIPv6: fd00::2   P-t-P IPv6: fd00::1\n" in text
    for absent in ("MTU", "Hostname", "DTLS cipher", "DNS", "IPv4"):
        assert absent not in text
    parsed = json.loads(render_json.users_json([bare], ALICE_NOW))[0]
    assert parsed["IPv6"] == "fd00::2"
    assert "DTLS cipher" not in parsed
