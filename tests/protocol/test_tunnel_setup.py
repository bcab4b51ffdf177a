"""CONNECT request parsing and the 200 CONNECTED reply, pinned to protocol.md §5.3's responses."""

from __future__ import annotations

import contextlib
import ipaddress

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_ocserv.protocol.tunnel_setup import (
    DtlsOffer,
    LegacyDtls,
    PskDtls,
    TunnelOffer,
    TunnelRequest,
    TunnelRequestError,
    data_mtu,
    encode_connect_response,
    link_mtu,
    parse_tunnel_request,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network

# §5.1, as openconnect 9.01 sent it with default options.
OBSERVED_REQUEST = [
    ("Host", "198.18.0.1"),
    ("User-Agent", "Open AnyConnect VPN Agent v9.01-3"),
    ("Cookie", "webvpn=AETuz/ZDDn7A3yijGR+YH19UGahKBxto7E+lOyhIF7k="),
    ("X-CSTP-Version", "1"),
    ("X-CSTP-Hostname", "vm"),
    ("X-CSTP-Accept-Encoding", "oc-lz4,lzs"),
    ("X-CSTP-Base-MTU", "1500"),
    ("X-CSTP-MTU", "1390"),
    ("X-CSTP-Address-Type", "IPv6,IPv4"),
    ("X-CSTP-Full-IPv6-Capability", "true"),
    ("X-DTLS-Master-Secret", "AF636A2B862A1FF56A1C9C6D061D3EB055D8B23A4530CE29AB236499C7DC13CE"
     "FFD03A2559A682D090AEAD86BB882A91"),
    ("X-DTLS-CipherSuite", "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:"
     "OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"),
    ("X-DTLS12-CipherSuite", "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
     "AES256-GCM-SHA384:AES128-GCM-SHA256:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:"
     "AES128-SHA"),
    ("X-DTLS-Accept-Encoding", "oc-lz4,lzs"),
]

OBSERVED_PSK_RESPONSE = """\
HTTP/1.1 200 CONNECTED
X-CSTP-Version: 1
X-CSTP-Server-Name: ocserv 1.1.6
X-CSTP-Hostname: vm
X-CSTP-DPD: 90
X-CSTP-Default-Domain: example.com
X-CSTP-Address: 192.168.99.50
X-CSTP-Netmask: 255.255.255.0
X-CSTP-Address-IP6: fd99:4efe:7e3b:8e4f:9a7c:c09f:b76e:58ef/64
X-CSTP-DNS: 192.168.99.1
X-CSTP-DNS: fd99:4efe:7e3b:3ea::1
X-CSTP-Split-DNS: example.com
X-CSTP-Split-Include: 192.168.100.0/255.255.255.0
X-CSTP-Split-Include-IP6: fd98::/64
X-CSTP-Tunnel-All-DNS: false
X-CSTP-Client-Bypass-Protocol: false
X-CSTP-Split-Exclude: 192.168.100.128/255.255.255.128
X-CSTP-Keepalive: 32400
X-CSTP-Idle-Timeout: 1200
X-CSTP-Smartcard-Removal-Disconnect: true
X-CSTP-Rekey-Time: 172824
X-CSTP-Rekey-Method: ssl
X-CSTP-Session-Timeout: 0
X-CSTP-Session-Timeout-Remaining: 0
X-CSTP-Disconnected-Timeout: none
X-CSTP-Keep: true
X-CSTP-TCP-Keepalive: true
X-CSTP-License: accept
X-DTLS-DPD: 90
X-DTLS-Port: 443
X-DTLS-Rekey-Time: 172834
X-DTLS-Rekey-Method: ssl
X-DTLS-Keepalive: 32400
X-DTLS-App-ID: c97ac42e3a6b21cb0b5bdc19ed1739014851610f8cccef14231887eda05375ae
X-DTLS-CipherSuite: PSK-NEGOTIATE
X-CSTP-Base-MTU: 1500
X-CSTP-MTU: 1434
X-CSTP-Banner: Welcome to the spec test VPN
X-DTLS-Content-Encoding: oc-lz4
X-CSTP-Content-Encoding: oc-lz4

"""

OBSERVED_MINIMAL_RESPONSE = """\
HTTP/1.1 200 CONNECTED
X-CSTP-Version: 1
X-CSTP-Server-Name: ocserv 1.1.6
X-CSTP-DPD: 90
X-CSTP-Default-Domain: example.com
X-CSTP-Address: 192.168.99.106
X-CSTP-Netmask: 255.255.255.0
X-CSTP-Address: fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849
X-CSTP-Netmask: fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849/64
X-CSTP-DNS: 192.168.99.1
X-CSTP-Split-DNS: example.com
X-CSTP-Split-Include: 192.168.100.0/255.255.255.0
X-CSTP-Tunnel-All-DNS: false
X-CSTP-Client-Bypass-Protocol: false
X-CSTP-Split-Exclude: 192.168.100.128/255.255.255.128
X-CSTP-Keepalive: 32400
X-CSTP-Idle-Timeout: 1200
X-CSTP-Smartcard-Removal-Disconnect: true
X-CSTP-Rekey-Time: 172816
X-CSTP-Rekey-Method: ssl
X-CSTP-Session-Timeout: 0
X-CSTP-Session-Timeout-Remaining: 0
X-CSTP-Disconnected-Timeout: none
X-CSTP-Keep: true
X-CSTP-TCP-Keepalive: true
X-CSTP-License: accept
X-CSTP-Base-MTU: 1500
X-CSTP-MTU: 1472
X-CSTP-Banner: Welcome to the spec test VPN

"""


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def _spec_offer(**changes: object) -> TunnelOffer:
    base = TunnelOffer(
        server_name="ocserv 1.1.6",
        hostname="vm",
        dpd=90,
        keepalive=32400,
        base_mtu=1500,
        mtu=1434,
        default_domains=("example.com",),
        ipv4_address=ipaddress.IPv4Address("192.168.99.50"),
        ipv4_network=ipaddress.IPv4Network("192.168.99.0/24"),
        ipv6_address=ipaddress.IPv6Address("fd99:4efe:7e3b:8e4f:9a7c:c09f:b76e:58ef"),
        ipv6_prefix=64,
        full_ipv6=True,
        dns=(ip("192.168.99.1"), ip("fd99:4efe:7e3b:3ea::1")),
        split_dns=("example.com",),
        routes=(net("192.168.100.0/24"), net("fd98::/64")),
        no_routes=(net("192.168.100.128/25"),),
        idle_timeout=1200,
        rekey_time=172824,
        rekey_method="ssl",
        dtls=DtlsOffer(
            port=443, dpd=90, keepalive=32400, rekey_time=172824, rekey_method="ssl",
            mode=PskDtls(bytes.fromhex(
                "c97ac42e3a6b21cb0b5bdc19ed1739014851610f8cccef14231887eda05375ae")),
        ),
        banner="Welcome to the spec test VPN",
        dtls_content_encoding="oc-lz4",
        cstp_content_encoding="oc-lz4",
    )
    return attrs.evolve(base, **changes)


def test_observed_psk_response_byte_for_byte() -> None:
    assert encode_connect_response(_spec_offer()) == _crlf(OBSERVED_PSK_RESPONSE)


def test_observed_minimal_response_byte_for_byte() -> None:
    offer = _spec_offer(
        hostname=None,
        ipv4_address=ipaddress.IPv4Address("192.168.99.106"),
        ipv6_address=ipaddress.IPv6Address("fd99:4efe:7e3b:84ed:7960:92fa:f28e:8849"),
        full_ipv6=False,
        rekey_time=172816,
        dtls=None,
        mtu=1472,
        dtls_content_encoding=None,
        cstp_content_encoding=None,
    )
    assert encode_connect_response(offer) == _crlf(OBSERVED_MINIMAL_RESPONSE)


def test_legacy_dtls12_and_default_route() -> None:
    offer = _spec_offer(
        routes=(net("0.0.0.0/0"), net("10.0.0.0/8")),
        dtls=DtlsOffer(
            port=4443, dpd=0, keepalive=30, rekey_time=0, rekey_method="none",
            mode=LegacyDtls(b"\xab" * 32, "AES256-GCM-SHA384", announce_as_dtls12=True, mtu=1434),
        ),
        rekey_time=0,
    )
    text = encode_connect_response(offer).decode()
    assert "X-CSTP-Split-Include:" not in text  # a default route means full tunnel
    assert "X-CSTP-Tunnel-All-DNS: true" in text
    assert "X-CSTP-Rekey-Method: none" in text and "X-CSTP-Rekey-Time" not in text
    assert "X-DTLS-DPD" not in text and "X-DTLS-Rekey" not in text
    assert "X-DTLS-Session-ID: " + "ab" * 32 in text
    assert "X-DTLS12-CipherSuite: AES256-GCM-SHA384\r\nX-DTLS-MTU: 1434\r\n" in text


def test_line_breaks_in_config_text_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_connect_response(_spec_offer(banner="hi\r\nX-Evil: 1"))


def test_parse_observed_request() -> None:
    req = parse_tunnel_request(OBSERVED_REQUEST)
    assert req.hostname == "vm"
    assert req.cstp_accept_encoding == ("oc-lz4", "lzs")
    assert req.dtls_accept_encoding == ("oc-lz4", "lzs")
    assert (req.base_mtu, req.mtu) == (1500, 1390)
    assert req.wants_ipv4 and req.wants_ipv6 and req.full_ipv6
    assert req.dtls_master_secret is not None and len(req.dtls_master_secret) == 48
    assert req.dtls_ciphersuites[0] == "PSK-NEGOTIATE" and len(req.dtls_ciphersuites) == 8
    assert req.dtls12_ciphersuites[-1] == "AES128-SHA"
    assert req.wants_dtls and not req.is_mobile
    assert req.user_agent.startswith("Open AnyConnect")


def test_parse_no_dtls_ipv4_only_reconnect_mobile() -> None:
    req = parse_tunnel_request([
        ("x-cstp-address-type", "IPv4"),
        ("X-CSTP-Address", "192.168.99.50"),
        ("X-CSTP-Hostname", "bad host name!"),
        ("X-DTLS-Master-Secret", "ABCD"),
        ("X-AnyConnect-Identifier-Platform", "android"),
    ])
    assert req.wants_ipv4 and not req.wants_ipv6 and not req.full_ipv6
    assert req.previous_addresses == ("192.168.99.50",)
    assert req.hostname is None  # invalid names are dropped, as ocserv does
    assert req.dtls_master_secret is None and not req.wants_dtls
    assert req.is_mobile


@pytest.mark.parametrize("value", ["abc", "-5", "0", "70000", ""])
def test_bad_mtu_header_is_a_request_error(value: str) -> None:
    with pytest.raises(TunnelRequestError):
        parse_tunnel_request([("X-CSTP-Base-MTU", value)])


@given(st.lists(st.tuples(st.text(max_size=40), st.text(max_size=200)), max_size=20))
def test_arbitrary_headers_never_raise_anything_else(headers: list[tuple[str, str]]) -> None:
    with contextlib.suppress(TunnelRequestError):
        parse_tunnel_request(headers)


@pytest.mark.parametrize(
    ("crypto_overhead", "expected"),
    [(37, 1434), (65, 1406), (49, 1422), (0, 1471), (None, 1472)],
)
def test_data_mtu_matches_the_observed_table(crypto_overhead: int | None, expected: int) -> None:
    # §7.10 table: IPv4 outer path, base MTU 1500.
    req = TunnelRequest(base_mtu=1500, mtu=1390)
    link = link_mtu(req, configured_mtu=None, tcp_path_mtu=1500, dtls_overhead=crypto_overhead or 0)
    assert data_mtu(link, crypto_overhead) == expected


def test_link_mtu_takes_the_smallest_view() -> None:
    assert link_mtu(TunnelRequest(base_mtu=1400), 1500, 1500, 37) == 1400
    assert link_mtu(TunnelRequest(base_mtu=1500), 1300, None, 37) == 1300
    assert link_mtu(TunnelRequest(base_mtu=1500), None, 1280, 37) == 1280
    # only X-CSTP-MTU: the client's MTU plus IP/UDP and the DTLS overhead
    assert link_mtu(TunnelRequest(mtu=1390), None, None, 37) == 1390 + 28 + 37
    assert link_mtu(TunnelRequest(), None, None, 37) == 1500
