"""§7.2 mode selection, one test per row of the observed-outcomes table (protocol.md)."""

from __future__ import annotations

import pytest

from trio_ocserv.protocol.dtls.mode import (
    DtlsModeSettings,
    LegacyMode,
    NoDtls,
    PskMode,
    select_dtls_mode,
)

MASTER = (
    "6E5C9C8488958F6664A448E205F6878B38D6F33137DD7D1E"
    "9D1F7E6821C4EF5C89A2C5F25E76E51636663AC2A174AF7B"
)
DEFAULT_LIST = (
    "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC-DTLS1_2-AES128-GCM:AES256-SHA:AES128-SHA:DES-CBC3-SHA"
)
DEFAULT_DTLS12 = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256:"
    "DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
)


def _headers(
    cipher: str | None = None, dtls12: str | None = None, master: str | None = MASTER
) -> list[tuple[str, str]]:
    headers = []
    if master is not None:
        headers.append(("X-DTLS-Master-Secret", master))
    if cipher is not None:
        headers.append(("X-DTLS-CipherSuite", cipher))
    if dtls12 is not None:
        headers.append(("X-DTLS12-CipherSuite", dtls12))
    return headers


def test_default_client_gets_psk() -> None:
    assert select_dtls_mode(_headers(DEFAULT_LIST, DEFAULT_DTLS12), DtlsModeSettings()) == PskMode()


def test_psk_only_list_gets_psk() -> None:
    assert select_dtls_mode(_headers("PSK-NEGOTIATE"), DtlsModeSettings()) == PskMode()


@pytest.mark.parametrize(
    ("offered", "code"),
    [
        ("AES128-SHA", 0x002F),
        ("AES256-SHA", 0x0035),
        ("DES-CBC3-SHA", 0x000A),
        ("OC-DTLS1_2-AES128-GCM", 0x009C),
        ("OC-DTLS1_2-AES256-GCM", 0x009D),
    ],
)
def test_single_legacy_suite(offered: str, code: int) -> None:
    mode = select_dtls_mode(_headers(offered), DtlsModeSettings())
    assert mode == LegacyMode(offered, code, "X-DTLS-CipherSuite", bytes.fromhex(MASTER))


@pytest.mark.parametrize(
    ("offered", "code"), [("AES256-GCM-SHA384", 0x009D), ("AES128-GCM-SHA256", 0x009C)]
)
def test_dtls12_header_only(offered: str, code: int) -> None:
    mode = select_dtls_mode(_headers(dtls12=offered), DtlsModeSettings())
    assert mode == LegacyMode(offered, code, "X-DTLS12-CipherSuite", bytes.fromhex(MASTER))


@pytest.mark.parametrize(
    "offered",
    ["DHE-RSA-AES128-SHA", "OC2-DTLS1_2-CHACHA20-POLY1305", "AES128-GCM-SHA256"],
)
def test_unsupported_suites_give_no_dtls(offered: str) -> None:
    assert isinstance(select_dtls_mode(_headers(offered), DtlsModeSettings()), NoDtls)


def test_ecdhe_dtls12_suite_gives_no_dtls() -> None:
    headers = _headers(dtls12="ECDHE-RSA-AES256-GCM-SHA384")
    assert isinstance(select_dtls_mode(headers, DtlsModeSettings()), NoDtls)


def test_psk_disabled_dtls12_header_overrides() -> None:
    mode = select_dtls_mode(
        _headers(DEFAULT_LIST, DEFAULT_DTLS12), DtlsModeSettings(psk_enabled=False)
    )
    assert mode == LegacyMode(
        "AES256-GCM-SHA384", 0x009D, "X-DTLS12-CipherSuite", bytes.fromhex(MASTER)
    )


def test_psk_disabled_without_dtls12_uses_priority() -> None:
    mode = select_dtls_mode(_headers(DEFAULT_LIST), DtlsModeSettings(psk_enabled=False))
    assert isinstance(mode, LegacyMode) and mode.suite_name == "OC-DTLS1_2-AES256-GCM"


def test_suite_matching_tls_cipher_wins_immediately() -> None:
    settings = DtlsModeSettings(psk_enabled=False, tls_bulk_and_mac=("AES-128-CBC", "SHA1"))
    mode = select_dtls_mode(_headers("AES256-SHA:AES128-SHA"), settings)
    assert isinstance(mode, LegacyMode) and mode.suite_name == "AES128-SHA"


def test_legacy_disabled_gives_no_dtls() -> None:
    settings = DtlsModeSettings(legacy_enabled=False)
    assert isinstance(select_dtls_mode(_headers("AES128-SHA"), settings), NoDtls)


@pytest.mark.parametrize("master", [None, MASTER[:94], "zz" * 48])
def test_missing_short_or_bad_master_secret_gives_no_dtls(master: str | None) -> None:
    assert isinstance(
        select_dtls_mode(_headers("AES128-SHA", master=master), DtlsModeSettings()), NoDtls
    )


def test_no_headers_gives_no_dtls() -> None:
    assert isinstance(select_dtls_mode([], DtlsModeSettings()), NoDtls)


def test_header_names_are_case_insensitive_and_token_exact() -> None:
    headers = [
        ("x-dtls-ciphersuite", "PSK-NEGOTIATEX:AES128-SHA"),
        ("x-dtls-master-secret", MASTER),
    ]
    mode = select_dtls_mode(headers, DtlsModeSettings())
    assert isinstance(mode, LegacyMode) and mode.suite_name == "AES128-SHA"
