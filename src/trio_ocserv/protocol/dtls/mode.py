"""DTLS mode and suite selection on CONNECT (protocol.md §7.2), as a pure function.

Rules: input is the client's X-DTLS headers in arrival order plus the server's settings; output is
one of `PskMode`, `LegacyMode`, `NoDtls`. `PSK-NEGOTIATE` in any cipher list wins when PSK is on;
otherwise the legacy tables are searched by server priority, a suite matching the TLS session's
cipher winning at once, and an `X-DTLS12-CipherSuite` match replacing the `X-DTLS-CipherSuite` one.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .suites import SUITES_BY_CODE, CipherSuite

HEADER_MASTER_SECRET = "x-dtls-master-secret"
HEADER_CIPHER_SUITE = "x-dtls-ciphersuite"
HEADER_DTLS12_CIPHER_SUITE = "x-dtls12-ciphersuite"
PSK_NEGOTIATE = "PSK-NEGOTIATE"


@attrs.frozen(slots=True)
class LegacySuiteName:
    """One row of ocserv's legacy tables: the header name, our suite, priority, and its TLS twin."""

    name: str
    suite_code: int
    priority: int
    #: (bulk cipher, MAC) as the TLS session would report them, for the "matches TLS" rule.
    bulk_and_mac: tuple[str, str]

    @property
    def suite(self) -> CipherSuite:
        return SUITES_BY_CODE[self.suite_code]


LEGACY_SUITES: tuple[LegacySuiteName, ...] = (
    LegacySuiteName("OC-DTLS1_2-AES256-GCM", 0x009D, 90, ("AES-256-GCM", "AEAD")),
    LegacySuiteName("OC-DTLS1_2-AES128-GCM", 0x009C, 80, ("AES-128-GCM", "AEAD")),
    LegacySuiteName("AES256-SHA", 0x0035, 60, ("AES-256-CBC", "SHA1")),
    LegacySuiteName("AES128-SHA", 0x002F, 50, ("AES-128-CBC", "SHA1")),
    LegacySuiteName("DES-CBC3-SHA", 0x000A, 1, ("3DES-CBC", "SHA1")),
)
DTLS12_SUITES: tuple[LegacySuiteName, ...] = (
    LegacySuiteName("AES256-GCM-SHA384", 0x009D, 90, ("AES-256-GCM", "AEAD")),
    LegacySuiteName("AES128-GCM-SHA256", 0x009C, 50, ("AES-128-GCM", "AEAD")),
)


@attrs.frozen(slots=True)
class DtlsModeSettings:
    psk_enabled: bool = True
    legacy_enabled: bool = True
    #: The control channel's (bulk cipher, MAC), e.g. ("AES-256-GCM", "AEAD"); None if unknown.
    tls_bulk_and_mac: tuple[str, str] | None = None


@attrs.frozen(slots=True)
class PskMode:
    """Answer `X-DTLS-CipherSuite: PSK-NEGOTIATE` and an App-ID."""


@attrs.frozen(slots=True)
class LegacyMode:
    """Answer with a session id and `header_name: suite_name`; resume with `master_secret`."""

    suite_name: str
    suite_code: int
    header_name: str
    master_secret: bytes


@attrs.frozen(slots=True)
class NoDtls:
    reason: str


DtlsMode = PskMode | LegacyMode | NoDtls


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(":")]


def _pick(
    offered: list[str], table: tuple[LegacySuiteName, ...], tls: tuple[str, str] | None
) -> LegacySuiteName | None:
    best: LegacySuiteName | None = None
    for token in offered:
        for row in table:
            if row.name != token:
                continue
            if tls is not None and row.bulk_and_mac == tls:
                return row
            if best is None or row.priority > best.priority:
                best = row
    return best


def _master_secret(value: str | None) -> bytes | None:
    if value is None:
        return None
    text = value.strip()
    if len(text) < 96:
        return None
    try:
        return bytes.fromhex(text[:96])
    except ValueError:
        return None


def select_dtls_mode(headers: Iterable[tuple[str, str]], settings: DtlsModeSettings) -> DtlsMode:
    """Choose the DTLS mode for a CONNECT from its headers (name, value) in arrival order."""
    values: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in (HEADER_MASTER_SECRET, HEADER_CIPHER_SUITE, HEADER_DTLS12_CIPHER_SUITE):
            values.setdefault(key, value)
    cipher_lists = [
        values[key] for key in (HEADER_CIPHER_SUITE, HEADER_DTLS12_CIPHER_SUITE) if key in values
    ]
    if not cipher_lists:
        return NoDtls("client offered no DTLS cipher")
    if settings.psk_enabled and any(PSK_NEGOTIATE in _tokens(v) for v in cipher_lists):
        return PskMode()
    if not settings.legacy_enabled:
        return NoDtls("legacy DTLS is disabled")
    master_secret = _master_secret(values.get(HEADER_MASTER_SECRET))
    if master_secret is None:
        return NoDtls("no usable X-DTLS-Master-Secret")
    choice: tuple[LegacySuiteName, str] | None = None
    if HEADER_CIPHER_SUITE in values:
        row = _pick(_tokens(values[HEADER_CIPHER_SUITE]), LEGACY_SUITES, settings.tls_bulk_and_mac)
        if row is not None:
            choice = (row, "X-DTLS-CipherSuite")
    if HEADER_DTLS12_CIPHER_SUITE in values:
        row = _pick(
            _tokens(values[HEADER_DTLS12_CIPHER_SUITE]), DTLS12_SUITES, settings.tls_bulk_and_mac
        )
        if row is not None:
            choice = (row, "X-DTLS12-CipherSuite")
    if choice is None:
        return NoDtls("no common legacy DTLS cipher")
    row, header_name = choice
    return LegacyMode(row.name, row.suite_code, header_name, master_secret)
