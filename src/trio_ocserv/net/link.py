"""Link configuration through rtnetlink: tun addresses, MTU, state, routes, cleanup.

Owns: turning an opened tun into a configured point-to-point link (server address on our side,
the client's address or prefix routed to the device), per-device routes, deleting links, removing
stale tun devices a previous run left behind, and listing local networks (never banned).

Must not: open tun devices (`net.tun`) or pick addresses (`net.pool`). Every function here blocks
on netlink: call it from `trio.to_thread.run_sync`. `netns` names a namespace from `ip netns`;
None is the namespace of the calling process.

The per-tunnel operations (configure, routes, delete) build their few rtnetlink requests here and
send them as one batch on a fresh socket: pyroute2 spends milliseconds of CPU per call setting up
its own event loop, more than the kernel work itself, and a login pays for it twice. Configuring a
tun in our own namespace sends that batch through `_netlink.c` when it is built, with the GIL
released for the whole exchange. The listing operations, run once at start, still use pyroute2's
parsers.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, Final

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from trio_ocserv.net.pool import IpLease


def _load_netlink_c() -> Any:
    """`_netlink.c`: an rtnetlink round trip without the GIL, so that a worker configuring a tun
    never stalls the event loop. Optional, like the C data paths (None: Python's socket)."""
    try:
        return importlib.import_module("trio_ocserv._netlink")
    except ImportError:  # pragma: no cover - the build without a compiler
        return None


_netlink_c: Any = _load_netlink_c()

__all__ = [
    "LinkError",
    "RtnlReply",
    "RtnlRequest",
    "TunAddressing",
    "add_route",
    "configure_tun",
    "delete_link",
    "delete_link_index",
    "delete_link_request",
    "get_link_request",
    "ipv4_peer_address_request",
    "ipv6_host_address_request",
    "link_exists",
    "local_networks",
    "parse_acks",
    "remove_route",
    "remove_stale_tun_devices",
    "route_request",
    "set_mtu_request",
    "set_up_request",
    "stale_device_name",
]

# <linux/if_addr.h>: the address is usable at once, no duplicate address detection on a p-t-p link.
IFA_F_NODAD = 0x02

# <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>
_NLMSG_HEADER: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 0x01
_NLM_F_ACK: Final = 0x04
_NLM_F_EXCL: Final = 0x200
_NLM_F_CREATE: Final = 0x400
_RTM_NEWLINK: Final = 16
_RTM_DELLINK: Final = 17
_RTM_GETLINK: Final = 18
_RTM_NEWADDR: Final = 20
_RTM_DELADDR: Final = 21
_RTM_NEWROUTE: Final = 24
_RTM_DELROUTE: Final = 25
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG: Final = struct.Struct("=BBBBi")  # family, prefix length, flags, scope, index
_RTMSG: Final = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type
_IFLA_IFNAME: Final = 3
_IFLA_MTU: Final = 4
_IFLA_AF_SPEC: Final = 26
_IFLA_INET6_ADDR_GEN_MODE: Final = 8  # nested in IFLA_AF_SPEC / AF_INET6
_IN6_ADDR_GEN_MODE_NONE: Final = 1
_IFA_ADDRESS: Final = 1
_IFA_LOCAL: Final = 2
_IFA_FLAGS: Final = 8
_RTA_DST: Final = 1
_RTA_OIF: Final = 4
_RT_TABLE_MAIN: Final = 254
_RTPROT_UNSPEC: Final = 0
_RTPROT_STATIC: Final = 4
_RTN_UNSPEC: Final = 0
_RTN_UNICAST: Final = 1
_IFF_UP: Final = 0x1
_ENODEV: Final = 19
_CREATE: Final = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL
_CHANGE: Final = _NLM_F_REQUEST | _NLM_F_ACK
_CLONE_NEWNET: Final = 0x40000000
_NETNS_DIR: Final = "/run/netns"
_ACK_TIMEOUT: Final = 5.0


class LinkError(Exception):
    """A netlink operation failed; the message names the device and the operation."""


@attrs.frozen
class TunAddressing:
    """How one tun is configured: MTU, and for each family our address and the client's side."""

    mtu: int
    ipv4_local: IPv4Address | None = None
    ipv4_peer: IPv4Address | None = None
    ipv6_local: IPv6Address | None = None
    # The client's prefix (a /128 when each client gets one address).
    ipv6_peer: IPv6Network | None = None

    @classmethod
    def from_lease(cls, lease: IpLease, mtu: int) -> TunAddressing:
        return cls(
            mtu=mtu,
            ipv4_local=lease.ipv4.local if lease.ipv4 else None,
            ipv4_peer=lease.ipv4.address if lease.ipv4 else None,
            ipv6_local=lease.ipv6.local if lease.ipv6 else None,
            ipv6_peer=lease.ipv6.prefix if lease.ipv6 else None,
        )


# ---------------------------------------------------------------------------------------------
# rtnetlink requests: pure encoding, and the ack parser


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


@attrs.frozen
class RtnlRequest:
    """One rtnetlink request; the sequence number is given when a batch is sent."""

    kind: int
    flags: int
    body: bytes

    def encode(self, sequence: int) -> bytes:
        length = _NLMSG_HEADER.size + len(self.body)
        header = _NLMSG_HEADER.pack(length, self.kind, self.flags, sequence, 0)
        return header + self.body + bytes(-length % 4)


def get_link_request(name: str) -> RtnlRequest:
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attribute(_IFLA_IFNAME, name.encode() + b"\0")
    return RtnlRequest(_RTM_GETLINK, _CHANGE, body)


def set_mtu_request(index: int, mtu: int) -> RtnlRequest:
    body = _IFINFOMSG.pack(0, 0, index, 0, 0) + _attribute(_IFLA_MTU, struct.pack("=I", mtu))
    return RtnlRequest(_RTM_NEWLINK, _CHANGE, body)


def set_up_request(index: int) -> RtnlRequest:
    return RtnlRequest(_RTM_NEWLINK, _CHANGE, _IFINFOMSG.pack(0, 0, index, _IFF_UP, _IFF_UP))


def no_ipv6_link_local_request(index: int) -> RtnlRequest:
    """`addrgenmode none`: no IPv6 link-local address, so no router solicitations. Before the
    device goes up, for a tunnel without IPv6 (ocserv's tuns send nothing of their own either)."""
    mode = _attribute(_IFLA_INET6_ADDR_GEN_MODE, bytes([_IN6_ADDR_GEN_MODE_NONE]))
    spec = _attribute(_IFLA_AF_SPEC, _attribute(socket.AF_INET6, mode))
    return RtnlRequest(_RTM_NEWLINK, _CHANGE, _IFINFOMSG.pack(0, 0, index, 0, 0) + spec)


def set_down_request(index: int) -> RtnlRequest:
    return RtnlRequest(_RTM_NEWLINK, _CHANGE, _IFINFOMSG.pack(0, 0, index, 0, _IFF_UP))


def delete_ipv4_peer_address_request(
    index: int, local: IPv4Address, peer: IPv4Address
) -> RtnlRequest:
    """The address `ipv4_peer_address_request` added, deleted."""
    return RtnlRequest(_RTM_DELADDR, _CHANGE, ipv4_peer_address_request(index, local, peer).body)


def delete_link_request(index: int) -> RtnlRequest:
    return RtnlRequest(_RTM_DELLINK, _CHANGE, _IFINFOMSG.pack(0, 0, index, 0, 0))


def ipv4_peer_address_request(index: int, local: IPv4Address, peer: IPv4Address) -> RtnlRequest:
    """`local peer PEER/32`: the kernel routes the peer's address to the device."""
    body = (
        _IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, index)
        + _attribute(_IFA_LOCAL, local.packed)
        + _attribute(_IFA_ADDRESS, peer.packed)
    )
    return RtnlRequest(_RTM_NEWADDR, _CREATE, body)


def ipv6_host_address_request(index: int, address: IPv6Address) -> RtnlRequest:
    """`ADDRESS/128 nodad`."""
    body = (
        _IFADDRMSG.pack(socket.AF_INET6, 128, 0, 0, index)
        + _attribute(_IFA_ADDRESS, address.packed)
        + _attribute(_IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
    )
    return RtnlRequest(_RTM_NEWADDR, _CREATE, body)


def route_request(command: str, index: int, network: IPv4Network | IPv6Network) -> RtnlRequest:
    """`ip route add|del NETWORK dev INDEX` in the main table (added routes are `proto static`)."""
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    if command == "add":
        kind, flags, protocol, route_type = _RTM_NEWROUTE, _CREATE, _RTPROT_STATIC, _RTN_UNICAST
    elif command == "del":
        kind, flags, protocol, route_type = _RTM_DELROUTE, _CHANGE, _RTPROT_UNSPEC, _RTN_UNSPEC
    else:
        raise ValueError(f"route command {command!r}: expected add or del")
    body = (
        _RTMSG.pack(family, network.prefixlen, 0, 0, _RT_TABLE_MAIN, protocol, 0, route_type, 0)
        + _attribute(_RTA_DST, network.network_address.packed)
        + _attribute(_RTA_OIF, struct.pack("=i", index))
    )
    return RtnlRequest(kind, flags, body)


@attrs.frozen
class RtnlReply:
    """What the kernel answered to one request: an errno (0 is success) and any data messages."""

    error: int = 0
    messages: tuple[tuple[int, bytes], ...] = ()


def parse_acks(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(sequence, type, body) of each netlink message in `data`; a truncated tail is dropped."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _flags, sequence, _port = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size or offset + length > len(data):
            return
        yield sequence, kind, data[offset + _NLMSG_HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _link_index_of(reply: RtnlReply) -> int | None:
    for kind, body in reply.messages:
        if kind == _RTM_NEWLINK and len(body) >= _IFINFOMSG.size:
            return int(_IFINFOMSG.unpack_from(body)[2])
    return None


# ---------------------------------------------------------------------------------------------
# the socket


def _route_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        sock.bind((0, 0))
        # The kernel answers before sendto returns; a lost ack must not hang a worker thread.
        sock.settimeout(_ACK_TIMEOUT)
    except OSError:
        sock.close()
        raise
    return sock


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _route_socket_in(netns: str) -> socket.socket:
    """A netlink socket stays in the namespace it was made in: make it in a helper thread that
    joined `netns` (a thread can change namespace alone) and ends right after."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with open(os.path.join(_NETNS_DIR, netns), "rb") as namespace:
                _setns(namespace.fileno())
            made.append(_route_socket())
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    helper = threading.Thread(target=make, name=f"netns {netns}")
    helper.start()
    helper.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


@contextmanager
def _rtnl(netns: str | None, what: str) -> Iterator[socket.socket]:
    try:
        sock = _route_socket() if netns is None else _route_socket_in(netns)
    except OSError as exc:
        raise LinkError(f"{what}: {exc.strerror or exc}") from exc
    with sock:
        yield sock


def _transact(
    sock: socket.socket | None, requests: Sequence[RtnlRequest], what: str
) -> list[RtnlReply]:
    """Send `requests` as one batch (the kernel runs them in order) and collect every ack.
    With `sock` None the exchange runs on a socket of our own namespace, without the GIL."""
    data = b"".join(request.encode(number) for number, request in enumerate(requests, 1))
    errors: dict[int, int] = {}
    messages: dict[int, list[tuple[int, bytes]]] = {}

    def take(datagram: bytes) -> None:
        for sequence, kind, body in parse_acks(datagram):
            if kind == _NLMSG_ERROR and len(body) >= 4:
                errors[sequence] = -struct.unpack_from("=i", body)[0]
            else:
                messages.setdefault(sequence, []).append((kind, body))

    try:
        if sock is None:
            for datagram in _netlink_c.transact(data, len(requests), _ACK_TIMEOUT):
                take(datagram)
        else:
            sock.sendto(data, (0, 0))
            while len(errors) < len(requests):
                take(sock.recv(65536))
    except OSError as exc:
        raise LinkError(f"{what}: {exc.strerror or exc}") from exc
    return [
        RtnlReply(errors.get(number, 0), tuple(messages.get(number, ())))
        for number in range(1, len(requests) + 1)
    ]


def _check(replies: Iterable[RtnlReply], what: str) -> None:
    for reply in replies:
        if reply.error:
            raise LinkError(f"{what}: {os.strerror(reply.error)}")


def _index(sock: socket.socket, name: str, what: str) -> int | None:
    (reply,) = _transact(sock, [get_link_request(name)], what)
    if reply.error == _ENODEV:
        return None
    _check([reply], what)
    return _link_index_of(reply)


def _local_index(name: str) -> int:
    """The ifindex of `name` in our own namespace: one ioctl, cheaper than a netlink round trip."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise LinkError(f"{name}: no such device") from None


def _local_index_exists(index: int) -> bool:
    try:
        socket.if_indextoname(index)
    except OSError:
        return False
    return True


def _existing_index(sock: socket.socket, name: str, what: str) -> int:
    index = _index(sock, name, what)
    if index is None:
        raise LinkError(f"{name}: no such device")
    return index


# ---------------------------------------------------------------------------------------------
# per-tunnel operations


def configure_tun(
    name: str, addressing: TunAddressing, *, netns: str | None = None, index: int | None = None
) -> int:
    """Set MTU, addresses and routes of tun `name`, then bring it up; return its ifindex (which
    the caller may already know: `index`).

    IPv4 is `local peer client/32` (the kernel routes the client's address to the device). IPv6
    gets our address as a /128 plus an explicit route to the client's prefix: the kernel installs
    the prefix route of the local side, not of the peer, for an IPv6 `peer` address.
    """
    what = f"{name}: configure"
    if netns is None:
        index = _local_index(name) if index is None else index
        if _netlink_c is not None:
            _check(_transact(None, _configure_requests(index, addressing), what), what)
            return index
    with _rtnl(netns, what) as sock:
        if index is None:
            index = _existing_index(sock, name, what)
        _check(_transact(sock, _configure_requests(index, addressing), what), what)
        return index


def _configure_requests(index: int, addressing: TunAddressing) -> list[RtnlRequest]:
    requests = [set_mtu_request(index, addressing.mtu)]
    if addressing.ipv4_local is not None and addressing.ipv4_peer is not None:
        local, peer = addressing.ipv4_local, addressing.ipv4_peer
        requests.append(ipv4_peer_address_request(index, local, peer))
    if addressing.ipv6_local is not None:
        requests.append(ipv6_host_address_request(index, addressing.ipv6_local))
    elif addressing.ipv6_peer is None:
        requests.append(no_ipv6_link_local_request(index))
    requests.append(set_up_request(index))
    if addressing.ipv6_peer is not None:
        requests.append(route_request("add", index, addressing.ipv6_peer))
    return requests


def reset_tun(name: str, index: int, addressing: TunAddressing) -> None:
    """Undo `configure_tun` of an IPv4-only tun, for its reuse: down (the kernel drops the routes
    through it) and without its address."""
    if addressing.ipv4_local is None or addressing.ipv4_peer is None:
        raise LinkError(f"{name}: reset: not an IPv4 tun")
    what = f"{name}: reset"
    requests = [
        set_down_request(index),
        delete_ipv4_peer_address_request(index, addressing.ipv4_local, addressing.ipv4_peer),
    ]
    if _netlink_c is not None:
        _check(_transact(None, requests, what), what)
        return
    with _rtnl(None, what) as sock:
        _check(_transact(sock, requests, what), what)


def _route(
    command: str, name: str, network: IPv4Network | IPv6Network, netns: str | None
) -> None:
    what = f"{name}: route {command} {network}"
    with _rtnl(netns, what) as sock:
        index = _existing_index(sock, name, what)
        _check(_transact(sock, [route_request(command, index, network)], what), what)


def add_route(name: str, network: IPv4Network | IPv6Network, *, netns: str | None = None) -> None:
    """Route `network` into device `name` (an `iroute` of a user, or a client's extra prefix)."""
    _route("add", name, network, netns)


def remove_route(
    name: str, network: IPv4Network | IPv6Network, *, netns: str | None = None
) -> None:
    _route("del", name, network, netns)


def link_exists(name: str, *, netns: str | None = None) -> bool:
    what = f"{name}: lookup"
    with _rtnl(netns, what) as sock:
        return _index(sock, name, what) is not None


def delete_link(name: str, *, netns: str | None = None) -> bool:
    """Delete device `name`; False if it was already gone (closing a tun fd also removes it)."""
    what = f"{name}: delete"
    with _rtnl(netns, what) as sock:
        index = _index(sock, name, what)
        return index is not None and _delete(sock, index, what)


def delete_link_index(index: int, name: str, *, netns: str | None = None) -> bool:
    """Delete the device with ifindex `index` (`name` is for messages); False if it is gone.

    An index is not handed out again soon, unlike a `vpns%d` name, which the next tun may get
    the moment the old one is gone."""
    what = f"{name}: delete"
    if netns is None and not _local_index_exists(index):
        return False  # the usual case: the tun went away with its fd, no netlink needed
    with _rtnl(netns, what) as sock:
        return _delete(sock, index, what)


def _delete(sock: socket.socket, index: int, what: str) -> bool:
    (reply,) = _transact(sock, [delete_link_request(index)], what)
    if reply.error == _ENODEV:
        return False
    _check([reply], what)
    return True


# ---------------------------------------------------------------------------------------------
# listings, run at start (pyroute2 parses the dumps)


@contextmanager
def _netlink(netns: str | None, what: str) -> Iterator[Any]:
    try:
        with IPRoute(netns=netns) if netns is not None else IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise LinkError(f"{what}: {exc.args[-1] if exc.args else exc}") from exc


def stale_device_name(name: str, prefix: str) -> bool:
    """True for `<prefix><digits>`: the only names our own tun devices get."""
    return re.fullmatch(re.escape(prefix) + r"\d+", name) is not None


# IFLA_TUN_TYPE values from <linux/if_tun.h>: tap devices share the "tun" link kind.
_IFF_TUN_TYPE = 1


def _is_tun(link: Any) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "tun":
        return False
    data = info.get_attr("IFLA_INFO_DATA")
    return data is None or data.get_attr("IFLA_TUN_TYPE") in (None, _IFF_TUN_TYPE)


def remove_stale_tun_devices(prefix: str, *, netns: str | None = None) -> list[str]:
    """Delete tun devices named `<prefix><digits>` (left by a crashed run); return their names.

    Devices of other kinds (tap, veth, ...), or tuns with other names, are never touched.
    """
    removed: list[str] = []
    with _netlink(netns, f"remove stale {prefix}N devices") as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and _is_tun(link) and stale_device_name(name, prefix):
                try:
                    ipr.link("del", index=link["index"])
                except NetlinkError as exc:
                    if exc.code != _ENODEV:
                        raise
                    continue
                removed.append(name)
    return removed


def _networks(addresses: Iterable[Any]) -> Iterator[IPv4Network | IPv6Network]:
    for message in addresses:
        address = message.get_attr("IFA_ADDRESS")
        local = message.get_attr("IFA_LOCAL")
        # A point-to-point address (ours on a tun) names the client's side, not a local subnet.
        if address is None or (local is not None and local != address):
            continue
        yield ip_network(f"{address}/{message['prefixlen']}", strict=False)


def local_networks(*, netns: str | None = None) -> list[IPv4Network | IPv6Network]:
    """Subnets of this host's interfaces (loopback included), for the never-ban list."""
    with _netlink(netns, "list addresses") as ipr:
        return sorted(set(_networks(ipr.get_addr())), key=lambda n: (n.version, n))
