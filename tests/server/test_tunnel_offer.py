"""`plan_tunnel`: DTLS mode, MTU and compression decisions for a CONNECT, without sockets."""

from __future__ import annotations

import ipaddress

import pytest

from trio_ocserv.config.effective import UserSettings
from trio_ocserv.config.model import Settings
from trio_ocserv.net.pool import IpLease, Ipv4Assignment
from trio_ocserv.protocol.dtls.server import LegacyServerParameters, PskServerParameters
from trio_ocserv.protocol.tunnel_setup import LegacyDtls, PskDtls, parse_tunnel_request
from trio_ocserv.server.tunnel_offer import plan_tunnel, tls_bulk_and_mac

MASTER = "AF" * 48
DEFAULT_LISTS = [
    ("X-DTLS-Master-Secret", MASTER),
    ("X-DTLS-CipherSuite", "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:AES256-SHA:AES128-SHA"),
    ("X-DTLS12-CipherSuite", "AES256-GCM-SHA384:AES128-GCM-SHA256"),
    ("X-CSTP-Base-MTU", "1500"),
    ("X-CSTP-Accept-Encoding", "oc-lz4,lzs"),
    ("X-DTLS-Accept-Encoding", "oc-lz4,lzs"),
]
LEASE = IpLease(
    "session-1",
    Ipv4Assignment(
        ipaddress.IPv4Address("192.168.99.2"),
        ipaddress.IPv4Network("192.168.99.0/24"),
        ipaddress.IPv4Address("192.168.99.1"),
    ),
    None,
)


def plan(
    headers: list[tuple[str, str]],
    settings: Settings | None = None,
    udp: int | None = 443,
    no_udp: bool = False,
    tls13: bool = True,
):  # type: ignore[no-untyped-def]
    settings = settings or Settings(rekey_method="ssl", dpd=90, keepalive=32400)
    user = UserSettings(
        "bob",
        None,
        dpd=settings.dpd,
        mobile_dpd=settings.dpd,
        keepalive=settings.keepalive,
        no_udp=no_udp,
    )
    return plan_tunnel(
        settings=settings,
        user=user,
        request=parse_tunnel_request(headers),
        headers=headers,
        lease=LEASE,
        udp_port=udp,
        tls_cipher="TLS_AES_256_GCM_SHA384",
        tls13=tls13,
        export_psk=lambda: b"p" * 32,
        session_timeout_remaining=None,
        dtls_id=b"i" * 32,
    )


def test_default_openconnect_gets_psk_and_mtu_1434() -> None:
    result = plan(DEFAULT_LISTS)
    assert isinstance(result.offer.dtls.mode, PskDtls)  # type: ignore[union-attr]
    assert result.offer.dtls.mode.app_id == b"i" * 32  # type: ignore[union-attr]
    assert result.dtls_parameters == PskServerParameters(b"p" * 32)
    assert result.mtu == 1434 and result.offer.base_mtu == 1500
    assert result.offer.rekey_method == "ssl"
    assert result.compression.cstp is None  # compression is off unless configured


def test_legacy_without_psk_uses_the_dtls12_header_and_mtu() -> None:
    headers = [h for h in DEFAULT_LISTS if h[0] != "X-DTLS-CipherSuite"]
    headers.append(("X-DTLS-CipherSuite", "AES128-SHA"))
    result = plan(headers)
    mode = result.offer.dtls.mode  # type: ignore[union-attr]
    assert isinstance(mode, LegacyDtls) and mode.announce_as_dtls12
    assert mode.ciphersuite == "AES256-GCM-SHA384" and mode.mtu == result.mtu == 1434
    assert isinstance(result.dtls_parameters, LegacyServerParameters)
    assert result.dtls_parameters.master_secret == bytes.fromhex(MASTER)


@pytest.mark.parametrize(("suite", "mtu"), [("AES128-SHA", 1406), ("DES-CBC3-SHA", 1422)])
def test_legacy_cbc_mtu(suite: str, mtu: int) -> None:
    headers = [
        ("X-DTLS-Master-Secret", MASTER),
        ("X-DTLS-CipherSuite", suite),
        ("X-CSTP-Base-MTU", "1500"),
    ]
    assert plan(headers).mtu == mtu


def test_no_dtls_cases() -> None:
    no_match = [
        ("X-DTLS-Master-Secret", MASTER),
        ("X-DTLS-CipherSuite", "DHE-RSA-AES128-SHA"),
        ("X-CSTP-Base-MTU", "1500"),
    ]
    assert plan(no_match).offer.dtls is None and plan(no_match).mtu == 1471
    assert plan([("X-CSTP-Base-MTU", "1500")]).mtu == 1472  # --no-dtls
    assert plan(DEFAULT_LISTS, udp=None).offer.dtls is None
    assert plan(DEFAULT_LISTS, no_udp=True).offer.dtls is None


def test_tls12_rekeys_by_new_tunnel_and_compression_when_enabled() -> None:
    settings = Settings(rekey_method="ssl", compression=True, compression_algo_priority="lzs:100")
    result = plan(DEFAULT_LISTS, settings=settings, tls13=False)
    assert result.offer.rekey_method == "new-tunnel"
    assert result.offer.cstp_content_encoding == "lzs"
    assert result.offer.dtls_content_encoding == "lzs"


def test_tls_bulk_and_mac_names() -> None:
    assert tls_bulk_and_mac("TLS_AES_256_GCM_SHA384") == ("AES-256-GCM", "AEAD")
    assert tls_bulk_and_mac("ECDHE-RSA-AES128-GCM-SHA256") == ("AES-128-GCM", "AEAD")
    assert tls_bulk_and_mac("AES256-SHA") == ("AES-256-CBC", "SHA1")
    assert tls_bulk_and_mac("TLS_CHACHA20_POLY1305_SHA256") is None
    assert tls_bulk_and_mac(None) is None
