"""Tests for auth/otp.py: RFC 4226/6238 vectors, the liboath users file, windows and replays.

Rules: pure functions only; time is always passed in; hypothesis examples kept modest.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.auth.otp import (
    OtpError,
    OtpToken,
    OtpUsersFile,
    hotp,
    time_step,
    totp,
    verify_otp,
)

RFC_KEY = b"12345678901234567890"
RFC_KEY_HEX = RFC_KEY.hex()

# RFC 4226 appendix D
RFC4226_CODES = [
    "755224", "287082", "359152", "969429", "338314",
    "254676", "287922", "162583", "399871", "520489",
]  # fmt: skip

# RFC 6238 appendix B, SHA-1 rows, 8 digits
RFC6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("counter", "code"), list(enumerate(RFC4226_CODES)))
def test_hotp_rfc4226_vectors(counter: int, code: str) -> None:
    assert hotp(RFC_KEY, counter) == code


@pytest.mark.parametrize(("unix_time", "code"), RFC6238_SHA1)
def test_totp_rfc6238_vectors(unix_time: int, code: str) -> None:
    assert totp(RFC_KEY, unix_time, 30, 8) == code


def test_hotp_rejects_bad_parameters() -> None:
    with pytest.raises(OtpError):
        hotp(RFC_KEY, -1)
    with pytest.raises(OtpError):
        hotp(RFC_KEY, 0, digits=5)


def test_time_step() -> None:
    assert (time_step(59), time_step(60), time_step(89, 60)) == (1, 2, 1)


# --- the users file ------------------------------------------------------------------------


def test_parse_users_file_forms() -> None:
    text = (
        "# liboath users file\n"
        f"HOTP/T30/6 alice - {RFC_KEY_HEX}\n"
        f"HOTP\tbob\t1234\t{RFC_KEY_HEX}\t7\n"
        f"HOTP/E/8 carol + {RFC_KEY_HEX} 3 287082 2024-05-01T10:00:00L\n"
        f"HOTP/T60 dave - {RFC_KEY_HEX} -2\n"
    )
    users = OtpUsersFile.parse(text, "users.oath")
    assert users.problems == ()
    alice, bob, carol, dave = users.tokens
    assert (alice.kind, alice.step_seconds, alice.digits, alice.counter) == ("time", 30, 6, 0)
    assert (bob.kind, bob.pin, bob.counter, bob.digits) == ("event", "1234", 7, 6)
    assert (carol.digits, carol.last_otp, carol.last_time) == (
        8,
        "287082",
        dt.datetime(2024, 5, 1, 10, 0, 0),
    )
    assert (dave.step_seconds, dave.counter) == (60, -2)
    assert alice.key == RFC_KEY
    assert users.get("carol") is carol


def test_bad_lines_are_reported_with_line_numbers() -> None:
    text = (
        "TOTP alice - 00\n"
        "HOTP/T30/9 bob - 00\n"
        "HOTP carol - nothex\n"
        "HOTP dave -\n"
        "HOTP erin - 00 x\n"
        "HOTP frank - 00 0 123456 yesterday\n"
        f"HOTP gina - {RFC_KEY_HEX}\n"
        f"HOTP gina - {RFC_KEY_HEX}\n"
        "HOTP/T0 hal - 00\n"
        f"HOTP/T{'9' * 5000} ida - 00\n"
    )
    users = OtpUsersFile.parse(text, "users.oath")
    assert [t.username for t in users.tokens] == ["gina"]
    assert [str(p) for p in users.problems] == [
        "users.oath:1: unknown token type 'TOTP'",
        "users.oath:2: digits must be 6, 7 or 8 in 'HOTP/T30/9'",
        "users.oath:3: key is not hex",
        "users.oath:4: expected: type user pin hexkey [counter [last-otp [last-time]]]",
        "users.oath:5: counter is not a number: 'x'",
        "users.oath:6: bad time 'yesterday'",
        "users.oath:8: duplicate user 'gina' (first wins)",
        "users.oath:9: time step out of range in 'HOTP/T0'",
        f"users.oath:10: unknown token type 'HOTP/T{'9' * 5000}'",
    ]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_users_file_text_never_raises(text: str) -> None:
    users = OtpUsersFile.parse(text, "fuzz")
    for token in users.tokens:
        assert token.digits in (6, 7, 8)
        # and the parsed state renders back to a line that parses to the same token
        again = OtpUsersFile.parse(token.render() + "\n").tokens
        assert len(again) == 1
        assert attrs_without_line(again[0]) == attrs_without_line(token)


def attrs_without_line(token: OtpToken) -> tuple[object, ...]:
    return (token.kind, token.step_seconds, token.digits, token.username, token.pin, token.key,
            token.counter, token.last_otp, token.last_time)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(otp=st.text(max_size=12), pin=st.text(max_size=8), now=st.integers(0, 2**33))
def test_arbitrary_codes_never_raise(otp: str, pin: str, now: int) -> None:
    users = OtpUsersFile.parse(
        f"HOTP/T30 a - {RFC_KEY_HEX}\nHOTP b 12\udcff {RFC_KEY_HEX} 5 111111 2020-01-01T00:00:00L\n"
    )
    for token in users.tokens:
        result = verify_otp(token, otp, now, pin=pin)
        assert result is None or result.token.username == token.username


# --- verification --------------------------------------------------------------------------


def time_token(pin: str = "-", counter: int = 0) -> OtpToken:
    """The RFC 6238 test token as a users-file line (30 s steps, 8 digits)."""
    (token,) = OtpUsersFile.parse(f"HOTP/T30/8 alice {pin} {RFC_KEY_HEX} {counter}\n").tokens
    return token


def test_totp_accepts_one_step_either_side_only() -> None:
    token = time_token()
    now = 1111111111  # step 37037037
    assert verify_otp(token, "14050471", now) is not None  # this step
    assert verify_otp(token, totp(RFC_KEY, now - 30, 30, 8), now) is not None
    assert verify_otp(token, totp(RFC_KEY, now + 30, 30, 8), now) is not None
    assert verify_otp(token, totp(RFC_KEY, now - 60, 30, 8), now) is None
    assert verify_otp(token, totp(RFC_KEY, now + 60, 30, 8), now) is None
    assert verify_otp(token, "1405047", now) is None  # wrong length
    assert verify_otp(token, "１４０５０４７１", now) is None  # non-ASCII digits


def test_totp_replay_is_refused_even_for_a_next_step_code() -> None:
    token = time_token()
    now = 1111111111
    next_step_code = totp(RFC_KEY, now + 30, 30, 8)
    accepted = verify_otp(token, next_step_code, now)
    assert accepted is not None
    used = accepted.token
    assert used.last_otp == next_step_code
    # the same code again, now or in its own step: refused
    assert verify_otp(used, next_step_code, now) is None
    assert verify_otp(used, next_step_code, now + 30) is None
    # an older code after a newer one: refused; the following step's code: accepted
    assert verify_otp(used, "14050471", now) is None
    assert verify_otp(used, totp(RFC_KEY, now + 60, 30, 8), now + 30) is not None


def test_replay_state_survives_the_file() -> None:
    users = OtpUsersFile.parse(f"# keep me\nHOTP/T30/8 alice - {RFC_KEY_HEX}\n", "users.oath")
    accepted = verify_otp(users.tokens[0], "14050471", 1111111111)
    assert accepted is not None
    saved = users.with_token(accepted.token)
    assert saved.render().startswith("# keep me\nHOTP/T30/8\talice\t-\t")
    reloaded = OtpUsersFile.parse(saved.render()).tokens[0]
    assert verify_otp(reloaded, "14050471", 1111111111) is None
    assert verify_otp(reloaded, totp(RFC_KEY, 1111111141, 30, 8), 1111111141) is not None


def test_stored_time_is_the_local_time_of_use() -> None:
    accepted = verify_otp(time_token(), "14050471", 1111111111, utc_offset_seconds=3600)
    assert accepted is not None
    assert accepted.token.last_time == dt.datetime(2005, 3, 18, 2, 58, 31)
    assert accepted.token.render().endswith("\t14050471\t2005-03-18T02:58:31L")


def test_counter_field_is_not_a_clock_offset_for_time_tokens() -> None:
    # liboath accepts the current step whatever this field says, and leaves it alone
    token = time_token(counter=5)
    now = 1111111111
    assert verify_otp(token, totp(RFC_KEY, now + 150, 30, 8), now) is None
    accepted = verify_otp(token, "14050471", now)
    assert accepted is not None
    assert accepted.token.counter == 5


# Lines written by liboath 2.6 (oath_authenticate_usersfile, window 20) in a probe: alice used
# the code of step T+1 at 2026-11-26T10:42:28 (step T = 59856324); bob used counter 4.
LIBOATH_WRITTEN = (
    f"HOTP/T30/6\talice\t-\t{RFC_KEY_HEX}\t1\t484739\t2026-11-26T10:42:28L\n"
    f"HOTP\tbob\t-\t{RFC_KEY_HEX}\t4\t338314\t2026-11-26T10:42:28L\n"
)
LIBOATH_NOW = 1795689748  # 2026-11-26T10:42:28Z


def test_state_written_by_liboath_is_honoured() -> None:
    users = OtpUsersFile.parse(LIBOATH_WRITTEN, "users.oath")
    assert users.problems == ()
    alice, bob = users.tokens
    # liboath refused both of these at that moment (OATH_REPLAYED_OTP)
    assert verify_otp(alice, "484739", LIBOATH_NOW) is None  # step T+1, the same code
    assert verify_otp(alice, "309151", LIBOATH_NOW) is None  # step T, older than the last
    accepted = verify_otp(alice, "729657", LIBOATH_NOW + 30)  # step T+2, later
    assert accepted is not None
    assert users.with_token(accepted.token).render().split("\n")[0] == (
        f"HOTP/T30/6\talice\t-\t{RFC_KEY_HEX}\t1\t729657\t2026-11-26T10:42:58L"
    )
    assert verify_otp(bob, RFC4226_CODES[4], LIBOATH_NOW) is None
    assert verify_otp(bob, RFC4226_CODES[3], LIBOATH_NOW) is None
    assert verify_otp(bob, RFC4226_CODES[5], LIBOATH_NOW) is not None


def test_pin_is_required_when_the_line_has_one() -> None:
    token = time_token(pin="4321")
    assert verify_otp(token, "14050471", 1111111111) is None
    assert verify_otp(token, "14050471", 1111111111, pin="0000") is None
    assert verify_otp(token, "14050471", 1111111111, pin="4321") is not None


def test_hotp_look_ahead_and_counter_advance() -> None:
    token = OtpUsersFile.parse(f"HOTP bob - {RFC_KEY_HEX} 2\n").tokens[0]
    assert verify_otp(token, RFC4226_CODES[1], 0) is None  # behind the counter
    assert verify_otp(token, RFC4226_CODES[6], 0, hotp_look_ahead=3) is None  # too far ahead
    accepted = verify_otp(token, RFC4226_CODES[5], 0, hotp_look_ahead=3)
    assert accepted is not None
    assert accepted.token.counter == 5  # liboath stores the counter used, not the next one
    assert verify_otp(accepted.token, RFC4226_CODES[5], 0) is None  # replay
    assert verify_otp(accepted.token, RFC4226_CODES[8], 0, hotp_look_ahead=3) is not None
    assert verify_otp(accepted.token, RFC4226_CODES[9], 0, hotp_look_ahead=3) is None


def test_with_token_for_unknown_user_is_our_error() -> None:
    users = OtpUsersFile.parse("")
    with pytest.raises(OtpError):
        users.with_token(time_token())


def test_repr_hides_key() -> None:
    assert RFC_KEY_HEX not in repr(OtpUsersFile.parse(f"HOTP a - {RFC_KEY_HEX}\n"))
    assert repr(RFC_KEY) not in repr(time_token())


token_lines = st.builds(
    lambda kind, digits, user, pin, key, counter: (
        f"HOTP/{kind}/{digits} {user} {pin} {key.hex()} {counter}"
    ),
    kind=st.sampled_from(["E", "T30", "T60"]),
    digits=st.sampled_from([6, 7, 8]),
    user=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10),
    pin=st.sampled_from(["-", "+", "1234"]),
    key=st.binary(min_size=1, max_size=64),
    counter=st.integers(0, 1000),
)


@settings(max_examples=100, deadline=None)
@given(line=token_lines, now=st.integers(10**9, 2 * 10**9))
def test_valid_lines_round_trip_and_verify_their_own_code(line: str, now: int) -> None:
    (token,) = OtpUsersFile.parse(line + "\n").tokens
    assert attrs_without_line(OtpUsersFile.parse(token.render()).tokens[0]) == attrs_without_line(
        token
    )
    if token.kind == "event":
        code = hotp(token.key, token.counter, token.digits)
    else:
        code = totp(token.key, now, token.step_seconds, token.digits)
    pin = "" if token.pin in ("-", "+") else token.pin
    accepted = verify_otp(token, code, now, pin=pin)
    assert accepted is not None
    assert verify_otp(accepted.token, code, now, pin=pin) is None  # and never twice
