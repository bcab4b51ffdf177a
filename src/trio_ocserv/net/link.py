"""Link configuration through netlink (pyroute2): tun addresses, MTU, state, routes, cleanup.

Owns: turning an opened tun into a configured point-to-point link (server address on our side,
the client's address or prefix routed to the device), per-device routes, deleting links, removing
stale tun devices a previous run left behind, and listing local networks (never banned).

Must not: open tun devices (`net.tun`) or pick addresses (`net.pool`). Every function here blocks
on netlink: call it from `trio.to_thread.run_sync`. Each call opens its own netlink socket, so
calls from different threads never share one. `netns` names a namespace from `ip netns`; None is
the namespace of the calling process.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from trio_ocserv.net.pool import IpLease

__all__ = [
    "LinkError",
    "TunAddressing",
    "add_route",
    "configure_tun",
    "delete_link",
    "link_exists",
    "local_networks",
    "remove_route",
    "remove_stale_tun_devices",
    "stale_device_name",
]

# <linux/if_addr.h>: the address is usable at once, no duplicate address detection on a p-t-p link.
IFA_F_NODAD = 0x02


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


@contextmanager
def _netlink(netns: str | None, what: str) -> Iterator[Any]:
    try:
        with IPRoute(netns=netns) if netns is not None else IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise LinkError(f"{what}: {exc.args[-1] if exc.args else exc}") from exc


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"{name}: no such device")
    return int(found[0])


def configure_tun(name: str, addressing: TunAddressing, *, netns: str | None = None) -> None:
    """Set MTU, addresses and routes of tun `name`, then bring it up.

    IPv4 is `local peer client/32` (the kernel routes the client's address to the device). IPv6
    gets our address as a /128 plus an explicit route to the client's prefix: the kernel installs
    the prefix route of the local side, not of the peer, for an IPv6 `peer` address.
    """
    with _netlink(netns, f"{name}: configure") as ipr:
        index = _index(ipr, name)
        ipr.link("set", index=index, mtu=addressing.mtu)
        if addressing.ipv4_local is not None and addressing.ipv4_peer is not None:
            ipr.addr(
                "add",
                index=index,
                local=str(addressing.ipv4_local),
                address=str(addressing.ipv4_peer),
                prefixlen=32,
            )
        if addressing.ipv6_local is not None:
            ipr.addr(
                "add",
                index=index,
                address=str(addressing.ipv6_local),
                prefixlen=128,
                flags=IFA_F_NODAD,
            )
        ipr.link("set", index=index, state="up")
        if addressing.ipv6_peer is not None:
            ipr.route(
                "add", dst=str(addressing.ipv6_peer), oif=index, family=socket.AF_INET6
            )


def _route(
    command: str, name: str, network: IPv4Network | IPv6Network, netns: str | None
) -> None:
    family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
    with _netlink(netns, f"{name}: route {command} {network}") as ipr:
        ipr.route(command, dst=str(network), oif=_index(ipr, name), family=family)


def add_route(name: str, network: IPv4Network | IPv6Network, *, netns: str | None = None) -> None:
    """Route `network` into device `name` (an `iroute` of a user, or a client's extra prefix)."""
    _route("add", name, network, netns)


def remove_route(
    name: str, network: IPv4Network | IPv6Network, *, netns: str | None = None
) -> None:
    _route("del", name, network, netns)


def link_exists(name: str, *, netns: str | None = None) -> bool:
    with _netlink(netns, f"{name}: lookup") as ipr:
        return bool(ipr.link_lookup(ifname=name))


def delete_link(name: str, *, netns: str | None = None) -> bool:
    """Delete device `name`; False if it was already gone (closing a tun fd also removes it)."""
    with _netlink(netns, f"{name}: delete") as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code == 19:  # ENODEV: it vanished between lookup and delete
                return False
            raise
        return True


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
                    if exc.code != 19:
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
