"""Real tun devices and netlink configuration, inside a network namespace this test creates.

Root only. The namespace is named after our PID and removed in `finally`; the tun is opened by a
child process started with `ip netns exec` (a tun is created in the namespace of the process that
opens it, the same way the server runs in e2e tests) and that child is waited for by PID.
Running this file as a script is the child's side: `python3 test_tun.py child`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

LOCAL_V4, PEER_V4 = IPv4Address("10.231.0.1"), IPv4Address("10.231.0.2")
PEER_V4_B = IPv4Address("10.231.0.3")
PEER_V4_C = IPv4Address("10.231.0.4")
LOCAL_V6, PEER_V6_PREFIX = IPv6Address("fd00:e2e::1"), IPv6Network("fd00:e2e:1::/64")
PEER_V6 = PEER_V6_PREFIX.network_address + 1
EXTRA_ROUTE = IPv4Network("10.232.0.0/24")
MTU = 1400


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_reply(packet: bytes) -> tuple[dict[str, Any], bytes] | None:
    """If `packet` is an ICMP/ICMPv6 echo request, describe it and build the matching reply."""
    version = packet[0] >> 4
    if version == 4:
        header_len = (packet[0] & 0x0F) * 4
        if packet[9] != 1 or packet[header_len] != 8:
            return None
        src, dst = packet[12:16], packet[16:20]
        icmp = packet[header_len:]
        facts = {"family": 4, "src": str(IPv4Address(src)), "dst": str(IPv4Address(dst)),
                 "icmp_checksum_ok": _checksum(icmp) == 0,
                 "ip_checksum_ok": _checksum(packet[:header_len]) == 0}
        reply_icmp = b"\x00\x00\x00\x00" + icmp[4:]
        reply_icmp = reply_icmp[:2] + struct.pack("!H", _checksum(reply_icmp)) + reply_icmp[4:]
        header = bytearray(packet[:header_len])
        header[12:16], header[16:20] = dst, src
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", _checksum(bytes(header)))
        return facts, bytes(header) + reply_icmp
    if version == 6:
        if packet[6] != 58 or packet[40] != 128:
            return None
        src, dst = packet[8:24], packet[24:40]
        icmp = packet[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
        facts = {"family": 6, "src": str(IPv6Address(src)), "dst": str(IPv6Address(dst)),
                 "icmp_checksum_ok": _checksum(pseudo + icmp) == 0, "ip_checksum_ok": True}
        reply_icmp = b"\x81\x00\x00\x00" + icmp[4:]
        reply_pseudo = dst + src + struct.pack("!I3xB", len(reply_icmp), 58)
        checksum = struct.pack("!H", _checksum(reply_pseudo + reply_icmp))
        reply_icmp = reply_icmp[:2] + checksum + reply_icmp[4:]
        return facts, packet[:8] + dst + src + reply_icmp
    return None


def _answer_one_ping(tun: Any, argv: list[str]) -> dict[str, Any]:
    """Run ping, read its echo request from the tun, write the reply, report what happened.

    The read goes through trio (`receive_batch` -> `wait_readable` on the real tun fd).
    """
    import trio

    from trio_ocserv.net.tun import receive_batch

    facts: dict[str, Any] = {"request": None, "written": False}

    async def answer() -> None:
        with trio.fail_after(20):
            ping = await trio.lowlevel.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                while facts["request"] is None:
                    for packet in await receive_batch(tun):
                        reply = _echo_reply(packet)
                        if reply is not None:  # skip router solicitations and the like
                            facts["request"], answer_packet = reply
                            facts["written"] = tun.write(answer_packet)
                            break
                facts["ping_rc"] = await ping.wait()
                assert ping.stdout is not None
                output = b""
                while chunk := await ping.stdout.receive_some(65536):
                    output += chunk
                facts["ping_output"] = output.decode()
            finally:
                if ping.returncode is None:
                    ping.kill()
                    await ping.wait()

    trio.run(answer)
    return facts


def _echo_request_v4() -> bytes:
    icmp = b"\x08\x00\x00\x00\x00\x01\x00\x01" + b"probe"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                                   PEER_V4.packed, LOCAL_V4.packed))
    header[10:12] = struct.pack("!H", _checksum(bytes(header)))
    return bytes(header) + icmp


def _child_main() -> None:
    """Inside the namespace: open and configure a tun, answer pings, close it, report as JSON."""
    from trio_ocserv.net.link import (
        TunAddressing,
        add_route,
        configure_tun,
        delete_link,
        link_exists,
        local_networks,
        remove_route,
        reset_tun,
    )
    from trio_ocserv.net.tun import TunDevice

    report: dict[str, Any] = {}
    tun = TunDevice.open("toce%d")
    report["name"] = tun.name
    # Down until configured: the kernel refuses writes (EIO), which are dropped, not fatal.
    probe = _echo_reply(_echo_request_v4())
    assert probe is not None
    report["write_while_down"] = tun.write(probe[1])
    configure_tun(tun.name, TunAddressing(mtu=MTU, ipv4_local=LOCAL_V4, ipv4_peer=PEER_V4,
                                          ipv6_local=LOCAL_V6, ipv6_peer=PEER_V6_PREFIX))
    report["ip_addr"] = subprocess.run(["ip", "addr", "show", "dev", tun.name],
                                       capture_output=True, text=True, check=True).stdout
    add_route(tun.name, EXTRA_ROUTE)
    report["routes_with_extra"] = subprocess.run(["ip", "route"], capture_output=True,
                                                 text=True, check=True).stdout
    remove_route(tun.name, EXTRA_ROUTE)
    report["routes_after_remove"] = subprocess.run(["ip", "route"], capture_output=True,
                                                   text=True, check=True).stdout
    report["routes6"] = subprocess.run(["ip", "-6", "route"], capture_output=True,
                                       text=True, check=True).stdout
    report["local_networks"] = [str(n) for n in local_networks()]
    report["ping4"] = _answer_one_ping(tun, ["ping", "-n", "-c", "1", "-W", "5", str(PEER_V4)])
    report["ping6"] = _answer_one_ping(tun, ["ping", "-6", "-n", "-c", "1", "-W", "5",
                                            str(PEER_V6)])
    # A tunnel without IPv6 gets no link-local address either (nothing of its own to send).
    plain = TunDevice.open("toce%d")
    configure_tun(plain.name, TunAddressing(mtu=MTU, ipv4_local=LOCAL_V4, ipv4_peer=PEER_V4_B))
    report["ipv4_only_addr"] = subprocess.run(["ip", "addr", "show", "dev", plain.name],
                                              capture_output=True, text=True, check=True).stdout
    # Reset for reuse (devices.py): down, no address, no route; then configured for another peer.
    index = socket.if_nametoindex(plain.name)
    reset_tun(plain.name, index, TunAddressing(mtu=MTU, ipv4_local=LOCAL_V4, ipv4_peer=PEER_V4_B))
    report["reset_addr"] = subprocess.run(["ip", "addr", "show", "dev", plain.name],
                                          capture_output=True, text=True, check=True).stdout
    report["reset_routes"] = subprocess.run(["ip", "route"], capture_output=True, text=True,
                                            check=True).stdout
    configure_tun(plain.name, TunAddressing(mtu=MTU, ipv4_local=LOCAL_V4, ipv4_peer=PEER_V4_C),
                  index=index)
    report["reused_addr"] = subprocess.run(["ip", "addr", "show", "dev", plain.name],
                                           capture_output=True, text=True, check=True).stdout
    plain.close()
    tun.close()
    report["exists_after_close"] = link_exists(report["name"])
    report["delete_after_close"] = delete_link(report["name"])
    print(json.dumps(report))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.mark.e2e
def test_tun_configure_ping_and_close_in_a_netns() -> None:
    from tests.conftest import require_root_tools

    require_root_tools("ip", "ping")
    netns = f"toce{os.getpid()}"
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "set", "lo", "up")
        child = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, __file__, "child"],
            capture_output=True, text=True, timeout=90, check=False,
        )
        assert child.returncode == 0, child.stderr
        report = json.loads(child.stdout)
    finally:
        _ip("netns", "del", netns)

    name = report["name"]
    assert name.startswith("toce")
    assert report["write_while_down"] is False
    assert f"inet {LOCAL_V4} peer {PEER_V4_B}/32" in report["ipv4_only_addr"]
    assert ",UP," in report["ipv4_only_addr"] and "inet6" not in report["ipv4_only_addr"]
    # Reset: down, no address of the last tunnel, no route to its peer; then the next peer's.
    assert ",UP," not in report["reset_addr"] and "inet" not in report["reset_addr"]
    assert str(PEER_V4_B) not in report["reset_routes"]
    assert f"inet {LOCAL_V4} peer {PEER_V4_C}/32" in report["reused_addr"]
    assert str(PEER_V4_B) not in report["reused_addr"] and ",UP," in report["reused_addr"]
    assert f"mtu {MTU}" in report["ip_addr"]
    assert f"inet {LOCAL_V4} peer {PEER_V4}/32" in report["ip_addr"]
    assert f"inet6 {LOCAL_V6}/128" in report["ip_addr"]
    assert ",UP," in report["ip_addr"]
    assert f"{EXTRA_ROUTE} dev {name}" in report["routes_with_extra"]
    assert str(EXTRA_ROUTE) not in report["routes_after_remove"]
    assert f"{PEER_V6_PREFIX} dev {name}" in report["routes6"]
    assert "127.0.0.0/8" in report["local_networks"]
    assert f"{PEER_V4}/32" not in report["local_networks"]

    for key, family, src, dst in (("ping4", 4, LOCAL_V4, PEER_V4),
                                  ("ping6", 6, LOCAL_V6, PEER_V6)):
        ping = report[key]
        assert ping["request"] == {"family": family, "src": str(src), "dst": str(dst),
                                   "icmp_checksum_ok": True, "ip_checksum_ok": True}, ping
        assert ping["written"] is True
        assert ping["ping_rc"] == 0, ping["ping_output"]
        assert "1 received" in ping["ping_output"]

    assert report["exists_after_close"] is False
    assert report["delete_after_close"] is False


@pytest.mark.e2e
def test_remove_stale_tun_devices_only_touches_our_tuns() -> None:
    from tests.conftest import require_root_tools
    from trio_ocserv.net.link import link_exists, remove_stale_tun_devices

    require_root_tools("ip")
    netns = f"tocf{os.getpid()}"
    _ip("netns", "add", netns)
    try:
        # Persistent tuns survive their creator, like the leftovers of a crashed server.
        for device in ("tocs3", "tocs17", "tocsx", "other4"):
            _ip("-n", netns, "tuntap", "add", "dev", device, "mode", "tun")
        _ip("-n", netns, "tuntap", "add", "dev", "tocs8", "mode", "tap")
        _ip("-n", netns, "link", "add", "tocs5", "type", "veth", "peer", "name", "tocs6")
        removed = remove_stale_tun_devices("tocs", netns=netns)
        assert sorted(removed) == ["tocs17", "tocs3"]
        remaining = {d: link_exists(d, netns=netns) for d in
                     ("tocs3", "tocs17", "tocsx", "other4", "tocs8", "tocs5")}
        assert remaining == {"tocs3": False, "tocs17": False, "tocsx": True, "other4": True,
                             "tocs8": True, "tocs5": True}
    finally:
        _ip("netns", "del", netns)


if __name__ == "__main__" and sys.argv[1:] == ["child"]:
    _child_main()
