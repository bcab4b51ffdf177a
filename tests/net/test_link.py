"""rtnetlink request encoding and ack parsing of `net.link` (no root: the kernel side is tested
in tests/e2e/test_tun.py).

pyroute2's own message classes are the oracle for the byte layouts: each request must encode to
exactly what pyroute2 sends for the same operation.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from tests.conftest import require_c_module
from trio_ocserv.net import link
from trio_ocserv.net.link import LinkError, RtnlRequest

NLM_F_REQUEST_ACK = 0x05
NLM_F_CREATE_EXCL = 0x600
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_DELROUTE = (
    16, 17, 18, 20, 24, 25,
)  # fmt: skip


def _pyroute2_bytes(
    message: Any, kind: int, nlm_flags: int, sequence: int, **fields: Any
) -> bytes:
    attrs = fields.pop("attrs", [])
    for key, value in fields.items():
        message[key] = value
    message["attrs"] = attrs
    message["header"]["type"] = kind
    message["header"]["flags"] = nlm_flags
    message["header"]["sequence_number"] = sequence
    message["header"]["pid"] = 0
    message.encode()
    return bytes(message.data)


def test_get_link_by_name_matches_pyroute2() -> None:
    expected = _pyroute2_bytes(
        ifinfmsg(), RTM_GETLINK, NLM_F_REQUEST_ACK, 7, attrs=[("IFLA_IFNAME", "vpns12")]
    )
    assert link.get_link_request("vpns12").encode(7) == expected


def test_set_mtu_and_up_match_pyroute2() -> None:
    mtu = _pyroute2_bytes(
        ifinfmsg(), RTM_NEWLINK, NLM_F_REQUEST_ACK, 1, index=9, attrs=[("IFLA_MTU", 1406)]
    )
    up = _pyroute2_bytes(
        ifinfmsg(), RTM_NEWLINK, NLM_F_REQUEST_ACK, 2, index=9, flags=1, change=1
    )
    assert link.set_mtu_request(9, 1406).encode(1) == mtu
    assert link.set_up_request(9).encode(2) == up


def test_no_ipv6_link_local_matches_pyroute2() -> None:
    expected = _pyroute2_bytes(
        ifinfmsg(), RTM_NEWLINK, NLM_F_REQUEST_ACK, 3, index=9,
        attrs=[("IFLA_AF_SPEC", {"attrs": [
            ("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]}),
        ]})],
    )  # fmt: skip
    assert link.no_ipv6_link_local_request(9).encode(3) == expected


def test_delete_link_matches_pyroute2() -> None:
    expected = _pyroute2_bytes(ifinfmsg(), RTM_DELLINK, NLM_F_REQUEST_ACK, 4, index=33)
    assert link.delete_link_request(33).encode(4) == expected


def test_ipv4_point_to_point_address_matches_pyroute2() -> None:
    expected = _pyroute2_bytes(
        ifaddrmsg(),
        RTM_NEWADDR,
        NLM_F_REQUEST_ACK | NLM_F_CREATE_EXCL,
        3,
        family=socket.AF_INET,
        prefixlen=32,
        index=5,
        attrs=[("IFA_LOCAL", "192.168.99.1"), ("IFA_ADDRESS", "192.168.99.77")],
    )
    request = link.ipv4_peer_address_request(
        5, IPv4Address("192.168.99.1"), IPv4Address("192.168.99.77")
    )
    assert request.encode(3) == expected


def test_ipv6_host_address_without_dad_matches_pyroute2() -> None:
    expected = _pyroute2_bytes(
        ifaddrmsg(),
        RTM_NEWADDR,
        NLM_F_REQUEST_ACK | NLM_F_CREATE_EXCL,
        3,
        family=socket.AF_INET6,
        prefixlen=128,
        index=5,
        attrs=[("IFA_ADDRESS", "fd00::1"), ("IFA_FLAGS", link.IFA_F_NODAD)],
    )
    assert link.ipv6_host_address_request(5, IPv6Address("fd00::1")).encode(3) == expected


@pytest.mark.parametrize("network", [IPv4Network("10.1.0.0/16"), IPv6Network("fd01:2::/64")])
def test_route_add_and_del_match_pyroute2(network: IPv4Network | IPv6Network) -> None:
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    attrs = [("RTA_DST", str(network.network_address)), ("RTA_OIF", 12)]
    add = _pyroute2_bytes(
        rtmsg(),
        RTM_NEWROUTE,
        NLM_F_REQUEST_ACK | NLM_F_CREATE_EXCL,
        1,
        family=family,
        dst_len=network.prefixlen,
        table=254,
        proto=4,  # static
        type=1,  # unicast
        attrs=attrs,
    )
    delete = _pyroute2_bytes(
        rtmsg(),
        RTM_DELROUTE,
        NLM_F_REQUEST_ACK,
        2,
        family=family,
        dst_len=network.prefixlen,
        table=254,
        attrs=attrs,
    )
    assert link.route_request("add", 12, network).encode(1) == add
    assert link.route_request("del", 12, network).encode(2) == delete


def test_route_request_refuses_other_commands() -> None:
    with pytest.raises(ValueError, match="replace"):
        link.route_request("replace", 1, IPv4Network("10.0.0.0/8"))


def _ack(sequence: int, error: int = 0) -> bytes:
    body = struct.pack("=i", -error) + bytes(16)  # nlmsgerr: error, then the request's header
    return struct.pack("=IHHII", 16 + len(body), 2, 0, sequence, 0) + body


def test_parse_acks_splits_a_datagram_and_drops_a_truncated_tail() -> None:
    data = _ack(1) + _ack(2, 19) + _ack(3)[:-4]
    parsed = list(link.parse_acks(data))
    assert [(sequence, kind) for sequence, kind, _ in parsed] == [(1, 2), (2, 2)]
    assert struct.unpack_from("=i", parsed[1][2])[0] == -19


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_parse_acks_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for sequence, kind, body in link.parse_acks(data):
        assert isinstance(sequence, int) and isinstance(kind, int)
        assert len(body) <= len(data)


class FakeRouteSocket:
    """Records the batch sent and answers it with canned datagrams."""

    def __init__(self, answers: list[bytes]) -> None:
        self.sent: list[bytes] = []
        self.answers = answers

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.answers.pop(0)


def test_transact_sends_one_batch_and_matches_acks_by_sequence() -> None:
    requests = [link.set_up_request(4), link.delete_link_request(4), link.set_up_request(5)]
    # acks split over two datagrams and out of order
    fake = FakeRouteSocket([_ack(2, 19), _ack(3) + _ack(1)])
    replies = link._transact(cast(socket.socket, fake), requests, "test")
    assert fake.sent == [b"".join(r.encode(n) for n, r in enumerate(requests, 1))]
    assert [reply.error for reply in replies] == [0, 19, 0]


def test_transact_keeps_data_replies_for_their_request() -> None:
    body = struct.pack("=BxHiII", 0, 0xFFFE, 42, 0, 0)
    newlink = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 0, 1, 0) + body
    fake = FakeRouteSocket([newlink + _ack(1)])
    (reply,) = link._transact(cast(socket.socket, fake), [link.get_link_request("x")], "t")
    assert reply.error == 0
    assert link._link_index_of(reply) == 42


def test_an_error_ack_becomes_a_link_error_naming_the_operation() -> None:
    fake = FakeRouteSocket([_ack(1, 17)])
    replies = link._transact(cast(socket.socket, fake), [link.set_up_request(1)], "vpns3: up")
    with pytest.raises(LinkError, match="vpns3: up: File exists"):
        link._check(replies, "vpns3: up")


def test_request_encoding_pads_to_four_bytes() -> None:
    request = RtnlRequest(RTM_GETLINK, NLM_F_REQUEST_ACK, b"\x01\x02\x03")
    encoded = request.encode(1)
    assert len(encoded) % 4 == 0
    assert struct.unpack_from("=I", encoded)[0] == 16 + 3  # the length excludes the padding


def test_a_gone_device_is_not_deleted_over_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    # The usual teardown: the tun vanished with its fd; the ifindex lookup answers, no socket.
    def no_netlink(*args: object) -> socket.socket:
        raise AssertionError("a netlink socket was opened for a device that is gone")

    monkeypatch.setattr(link, "_route_socket", no_netlink)
    assert link.delete_link_index(2**31 - 1, "vpns9") is False


def test_configuring_a_missing_device_names_it() -> None:
    with pytest.raises(LinkError, match="vpns-missing0: no such device"):
        link._local_index("vpns-missing0")


# The GIL-free round trip (_netlink.c) against the real kernel: reading links needs no privilege.
@pytest.fixture
def netlink_c() -> ModuleType:
    module = require_c_module("_netlink", data_path=False)
    assert link._netlink_c is module  # configure_tun uses it
    return module


def test_the_gil_free_round_trip_reads_what_a_python_socket_reads(netlink_c: ModuleType) -> None:
    requests = [link.get_link_request("lo"), link.get_link_request("no-such-dev0")]
    without_gil = link._transact(None, requests, "lookup")
    with link._rtnl(None, "lookup") as sock:
        with_socket = link._transact(sock, requests, "lookup")
    assert [reply.error for reply in without_gil] == [0, 19] == [r.error for r in with_socket]
    assert link._link_index_of(without_gil[0]) == link._link_index_of(with_socket[0])
    assert link._link_index_of(without_gil[0]) == socket.if_nametoindex("lo")


def test_the_gil_free_round_trip_collects_acks_spread_over_datagrams(
    netlink_c: ModuleType,
) -> None:
    # A dump of every link answers with multi-part datagrams before its ack; 40 lookups of lo
    # come back as one datagram each: the C side counts acks across all of them.
    requests = [link.get_link_request("lo")] * 40
    replies = link._transact(None, requests, "lookup")
    assert [reply.error for reply in replies] == [0] * 40
    assert {link._link_index_of(reply) for reply in replies} == {socket.if_nametoindex("lo")}


def test_the_gil_free_round_trip_times_out_and_refuses_bad_arguments(
    netlink_c: ModuleType,
) -> None:
    # A lookup without NLM_F_ACK gets its answer but no ack: the timeout ends the wait.
    no_ack = RtnlRequest(RTM_GETLINK, 0x01, link.get_link_request("lo").body)
    with pytest.raises(OSError) as caught:
        netlink_c.transact(no_ack.encode(1), 1, 0.05)
    assert caught.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    with pytest.raises(OSError):  # the kernel refuses an empty datagram
        netlink_c.transact(b"", 1, 0.05)
    with pytest.raises(ValueError):
        netlink_c.transact(link.get_link_request("lo").encode(1), 0, 1.0)
    with pytest.raises(ValueError):
        netlink_c.transact(link.get_link_request("lo").encode(1), 1, 0.0)
