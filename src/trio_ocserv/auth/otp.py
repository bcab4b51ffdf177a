"""One-time passwords for `auth = plain[...,otp=FILE]`: HOTP (RFC 4226), TOTP (RFC 6238) and the
liboath users file.

Users file (whitespace separated, one token a line; `#` comments and blank lines skipped)::

    HOTP/T30/6  alice  -  3132333435363738393031323334353637383930  [counter [last-otp [time]]]

- type: `HOTP` or `HOTP/E` (event/counter token), `HOTP/T<seconds>` (time token); an optional
  `/<digits>` (6, 7 or 8; default 6);
- PIN: `-` none, `+` checked elsewhere, anything else must be given with the OTP (`pin=`);
- key: hex; then the counter (event tokens: the first counter to try, then the last one used; time
  tokens: unused), the last accepted OTP and when (`YYYY-MM-DDTHH:MM:SSL`, local time).

Lines we rewrite look like liboath's: tab separated, the type field kept as written.

Everything here is pure: time comes in as an argument and verification returns the token's new
state instead of writing it; the caller persists it (`OtpUsersFile.with_token` + an atomic write)
before granting access, which is what makes replayed codes fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import struct
from typing import Final, Literal

import attrs

TOTP_WINDOW_STEPS: Final = 1  # accept the previous, current and next time step
HOTP_LOOK_AHEAD: Final = 10  # an event token may have been pressed this many times unseen
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
_EPOCH: Final = dt.datetime(1970, 1, 1)  # naive: the file's "L" times are converted by the caller
_MAX_KEY_BYTES: Final = 256
_MAX_COUNTER: Final = 2**64 - 1

TokenKind = Literal["event", "time"]


class OtpError(Exception):
    """Invalid OTP parameters given by our own code (never raised for a peer's input)."""


def hotp(key: bytes, counter: int, digits: int = 6) -> str:
    """RFC 4226: HMAC-SHA1 over the 8-byte counter, dynamic truncation, `digits` decimal digits."""
    if not 0 <= counter <= _MAX_COUNTER:
        raise OtpError(f"HOTP counter out of range: {counter}")
    if digits not in (6, 7, 8):
        raise OtpError(f"HOTP digits must be 6, 7 or 8, not {digits}")
    mac = hmac.digest(key, struct.pack(">Q", counter), hashlib.sha1)
    offset = mac[-1] & 0x0F
    code = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(code % 10**digits).zfill(digits)


def time_step(unix_time: float, step_seconds: int = 30, t0: int = 0) -> int:
    """RFC 6238's T: whole steps since T0."""
    return int((unix_time - t0) // step_seconds)


def totp(key: bytes, unix_time: float, step_seconds: int = 30, digits: int = 6) -> str:
    """RFC 6238 with HMAC-SHA1 (what liboath's HOTP/T tokens use)."""
    return hotp(key, time_step(unix_time, step_seconds), digits)


@attrs.frozen
class OtpToken:
    """One line of the users file, including the replay-protection state."""

    type_field: str  # as written ("HOTP", "HOTP/T30/6"...), kept on rewrite like liboath does
    kind: TokenKind
    step_seconds: int  # 0 for event tokens
    digits: int
    username: str
    pin: str  # "-" none, "+" checked elsewhere
    key: bytes = attrs.field(repr=False)
    counter: int = 0  # event tokens only; liboath neither uses nor resets it for time tokens
    last_otp: str | None = attrs.field(default=None, repr=False)
    last_time: dt.datetime | None = None  # naive, in the file's clock
    line_number: int = 0

    def render(self) -> str:
        fields = [self.type_field, self.username, self.pin, self.key.hex(), str(self.counter)]
        if self.last_otp is not None:
            fields.append(self.last_otp)
            if self.last_time is not None:
                fields.append(self.last_time.strftime(_TIME_FORMAT) + "L")
        return "\t".join(fields)


@attrs.frozen
class OtpProblem:
    path: str
    line_number: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.message}"


class _LineError(Exception):
    pass


def _parse_type(field: str) -> tuple[TokenKind, int, int]:
    parts = field.split("/")
    if parts[0] != "HOTP" or len(parts) > 3:
        raise _LineError(f"unknown token type {field!r}")
    kind: TokenKind = "event"
    step = 0
    if len(parts) >= 2:
        mode = parts[1]
        if mode == "E":
            pass
        elif mode.startswith("T") and mode[1:].isascii() and mode[1:].isdigit() and len(mode) < 8:
            kind, step = "time", int(mode[1:])
            if not 1 <= step <= 86400:
                raise _LineError(f"time step out of range in {field!r}")
        else:
            raise _LineError(f"unknown token type {field!r}")
    digits = 6
    if len(parts) == 3:
        if parts[2] not in ("6", "7", "8"):
            raise _LineError(f"digits must be 6, 7 or 8 in {field!r}")
        digits = int(parts[2])
    return kind, step, digits


def _parse_int(text: str, what: str, low: int, high: int) -> int:
    body = text.removeprefix("-")
    if not (body.isascii() and body.isdigit()) or len(body) > 20:
        raise _LineError(f"{what} is not a number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise _LineError(f"{what} out of range: {text!r}")
    return value


def _parse_line(fields: list[str], line_number: int) -> OtpToken:
    if len(fields) < 4:
        raise _LineError("expected: type user pin hexkey [counter [last-otp [last-time]]]")
    if len(fields) > 7:
        raise _LineError("too many fields")
    kind, step, digits = _parse_type(fields[0])
    username, pin, key_hex = fields[1], fields[2], fields[3]
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise _LineError("key is not hex") from None
    if not key or len(key) > _MAX_KEY_BYTES:
        raise _LineError(f"key must be 1 to {_MAX_KEY_BYTES} bytes")
    counter = 0
    if len(fields) >= 5:
        low = 0 if kind == "event" else -_MAX_COUNTER
        counter = _parse_int(fields[4], "counter", low, _MAX_COUNTER)
    last_otp = fields[5] if len(fields) >= 6 else None
    last_time = None
    if len(fields) == 7:
        try:
            last_time = dt.datetime.strptime(fields[6].removesuffix("L"), _TIME_FORMAT)
        except ValueError:
            raise _LineError(f"bad time {fields[6]!r}") from None
    return OtpToken(
        fields[0], kind, step, digits, username, pin, key, counter, last_otp, last_time, line_number
    )


@attrs.frozen
class OtpUsersFile:
    path: str
    lines: tuple[str, ...] = attrs.field(repr=False)
    tokens: tuple[OtpToken, ...]
    problems: tuple[OtpProblem, ...]

    @classmethod
    def parse(cls, text: str, path: str = "<otp>") -> OtpUsersFile:
        """Never raises on content: bad lines become problems (FILE:LINE) and are skipped."""
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        if lines and lines[-1] == "":
            lines.pop()
        tokens: list[OtpToken] = []
        problems: list[OtpProblem] = []
        seen: set[str] = set()
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                token = _parse_line(stripped.split(), number)
            except _LineError as exc:
                problems.append(OtpProblem(path, number, str(exc)))
                continue
            if token.username in seen:
                problems.append(
                    OtpProblem(path, number, f"duplicate user {token.username!r} (first wins)")
                )
                continue
            seen.add(token.username)
            tokens.append(token)
        return cls(path, tuple(lines), tuple(tokens), tuple(problems))

    def get(self, username: str) -> OtpToken | None:
        for token in self.tokens:
            if token.username == username:
                return token
        return None

    def with_token(self, token: OtpToken) -> OtpUsersFile:
        """The file with the user's line replaced by `token` (after a successful verify)."""
        current = self.get(token.username)
        if current is None:
            raise OtpError(f"user {token.username!r} is not in {self.path}")
        lines = list(self.lines)
        lines[current.line_number - 1] = token.render()
        return OtpUsersFile.parse("".join(f"{line}\n" for line in lines), self.path)

    def render(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


@attrs.frozen
class OtpAccepted:
    """A valid code; `token` is the new state to persist before access is granted."""

    token: OtpToken


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from an undecodable file byte) must not raise here
    return text.encode("utf-8", "surrogatepass")


def _matching_steps(candidates: list[tuple[int, str]], code: str) -> list[int]:
    # every candidate is compared (no early exit), so timing does not tell which one matched
    wanted = _utf8(code)
    return [factor for factor, value in candidates if hmac.compare_digest(value.encode(), wanted)]


def verify_otp(
    token: OtpToken,
    otp: str,
    now: float,
    *,
    pin: str = "",
    utc_offset_seconds: int = 0,
    totp_window: int = TOTP_WINDOW_STEPS,
    hotp_look_ahead: int = HOTP_LOOK_AHEAD,
) -> OtpAccepted | None:
    """Check `otp` (and the PIN when the line has one) at unix time `now`.

    As liboath does (probed against liboath 2.6): an event token accepts counters
    counter..counter+look_ahead and stores the matched counter; a time token accepts steps
    T-window..T+window and ignores the counter field. A replay is a code equal to the last one,
    or, for time tokens, a code from a step not after the step where the last code is valid.
    `utc_offset_seconds` turns `now` into the file's local ("L") clock for the stored time.
    """
    if not otp.isascii() or not otp.isdigit() or len(otp) != token.digits:
        return None
    pin_ok = token.pin in ("-", "+") or hmac.compare_digest(_utf8(token.pin), _utf8(pin))
    if token.kind == "event":
        first = token.counter
        factors = range(first, min(first + hotp_look_ahead, _MAX_COUNTER) + 1)
    else:
        current = time_step(now, token.step_seconds)
        factors = range(max(current - totp_window, 0), current + totp_window + 1)
    candidates = [(factor, hotp(token.key, factor, token.digits)) for factor in factors]
    matched = _matching_steps(candidates, otp)
    if not matched or not pin_ok:
        return None
    if token.last_otp is not None:
        if hmac.compare_digest(_utf8(token.last_otp), _utf8(otp)):
            return None
        last_used = _matching_steps(candidates, token.last_otp)
        if token.kind == "time" and last_used and matched[0] <= max(last_used):
            return None  # an older code after a newer one
    local_now = _EPOCH + dt.timedelta(seconds=int(now) + utc_offset_seconds)
    counter = matched[0] if token.kind == "event" else token.counter
    return OtpAccepted(attrs.evolve(token, counter=counter, last_otp=otp, last_time=local_now))
