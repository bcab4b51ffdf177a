"""Value parsers: each gives a typed value or a ValueProblem naming the bad text."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.config import values
from trio_ocserv.config.errors import ValueProblem


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (values.boolean, "true", True),
        (values.boolean, "Yes", True),
        (values.boolean, "FALSE", False),
        (values.boolean, "no", False),
        (values.count, "0", 0),
        (values.count, "1024", 1024),
        (values.seconds, "86400", 86400),
        (values.port, "443", 443),
        (values.port, "65535", 65535),
        (values.ipv4_network, "192.168.1.0/24", IPv4Network("192.168.1.0/24")),
        (values.ipv4_network, "192.168.1.7/24", IPv4Network("192.168.1.0/24")),
        (values.ipv4_network, "10.0.0.0/255.0.0.0", IPv4Network("10.0.0.0/8")),
        (values.ipv4_netmask, "255.255.255.0", 24),
        (values.ipv4_netmask, "/20", 20),
        # sample.config's own example has host bits set; like ocserv we clear them.
        (values.ipv6_network, "fda9:4efe:7e3b:03ea::/48", IPv6Network("fda9:4efe:7e3b::/48")),
        (values.ipv6_interface, "fd00::7/64", IPv6Interface("fd00::7/64")),
        (values.ip_address, "fc00::4be0", IPv6Address("fc00::4be0")),
        (values.ip_address, "192.168.1.1", IPv4Address("192.168.1.1")),
        (values.route, "default", "default"),
        (values.route, "10.10.10.0/255.255.255.0", IPv4Network("10.10.10.0/24")),
        (values.route, "fef4:db8:1000:1001::/64", IPv6Network("fef4:db8:1000:1001::/64")),
        (
            values.group_choice,
            "group2[My special group]",
            values.GroupChoice("group2", "My special group"),
        ),
        (values.group_choice, "group1", values.GroupChoice("group1")),
        (values.certificate_oid, "0.9.2342.19200300.100.1.1", "0.9.2342.19200300.100.1.1"),
        (values.certificate_oid, "SAN(rfc822name)", "SAN(rfc822name)"),
        (values.net_priority, "3", values.NetPriority(3)),
        (values.net_priority, "0x20", values.NetPriority(0x20, is_tos=True)),
        (values.domain_list, "example.com   one.example.com", "example.com one.example.com"),
        (values.http_header, "X-My-Header: hi there", "X-My-Header: hi there"),
        (values.at_least(64), "10", 64),
        (values.port_restrictions, "!(tcp(443), icmp())", "!(tcp(443), icmp())"),
        (values.choice("ssl", "new-tunnel"), "new-tunnel", "new-tunnel"),
    ],
)
def test_good_values(parse: Callable[[str], object], text: str, expected: object) -> None:
    assert parse(text) == expected


def test_kkdcp_endpoint_with_ipv6_server() -> None:
    parsed = values.kkdcp_endpoint("/KdcProxy KERBEROS.REALM tcp@[::1]:88")
    assert parsed == values.KkdcpEndpoint("/KdcProxy", "KERBEROS.REALM", "tcp", "::1", 88)


@pytest.mark.parametrize(
    ("parse", "text", "fragment"),
    [
        (values.boolean, "maybe", "expected true or false, got 'maybe'"),
        (values.count, "-5", "must not be negative"),
        (values.seconds, "-1", "a time must not be negative, got -1"),
        (values.seconds, "10m", "expected a time in seconds, got '10m'"),
        (values.port, "https", "expected a port number, got 'https'"),
        (values.port, "0", "port 0 is out of range"),
        (values.port, "70000", "port 70000 is out of range"),
        (values.ipv4_network, "10.0.0.0/33", "'10.0.0.0/33' is not an IPv4 network"),
        (values.ipv4_network, "300.1.1.0/24", "is not an IPv4 network"),
        (values.ipv4_netmask, "255.0.255.0", "is not a netmask"),
        (values.ipv4_netmask, "33", "longer than 32 bits"),
        (values.ipv6_network, "fd00::", "needs a /prefix"),
        (values.ipv6_network, "fd00::/129", "is not an IPv6 network"),
        (values.route, "10.0.0.0", "is not a route"),
        (values.route, "bogus/8", "is not a route"),
        (values.ip_address, "dns.example.com", "is not an IP address"),
        (values.certificate_oid, "CN", "is not an OID"),
        (values.net_priority, "7", "out of range 0-6"),
        (values.net_priority, "0xzz", "not a hex TOS value"),
        (values.http_header, "no colon here", "expected 'Header-Name: value'"),
        (values.kkdcp_endpoint, "/KdcProxy REALM", "expected '/PATH REALM"),
        (values.port_restrictions, "tcp(443), ftp(21)", "'ftp(21)' is not a port rule"),
        (values.port_restrictions, "tcp(70000)", "port 70000 is out of range"),
        (values.path, "", "expected a file name"),
        (values.name, "two words", "expected a name without spaces"),
        (values.choice("ssl", "new-tunnel"), "tls", "expected one of ssl, new-tunnel"),
    ],
)
def test_bad_values(parse: Callable[[str], object], text: str, fragment: str) -> None:
    with pytest.raises(ValueProblem, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


_PARSERS = [
    values.boolean,
    values.count,
    values.seconds,
    values.port,
    values.ip_address,
    values.ipv4_network,
    values.ipv4_netmask,
    values.ipv6_network,
    values.ipv6_interface,
    values.route,
    values.group_choice,
    values.certificate_oid,
    values.net_priority,
    values.http_header,
    values.kkdcp_endpoint,
    values.port_restrictions,
    values.domain_list,
]


@settings(max_examples=200, deadline=None)
@given(parse=st.sampled_from(_PARSERS), text=st.text(max_size=40))
def test_arbitrary_values_raise_only_value_problem(
    parse: Callable[[str], object], text: str
) -> None:
    try:
        parse(text)
    except ValueProblem as problem:
        assert str(problem)
