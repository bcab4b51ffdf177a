"""Test helpers: a tiny pcap reader and the DTLS sessions of the captured openconnect <-> ocserv
runs.

Rules: reads only files in ./data (copied from shared/docs/protocol-captures); no tshark at test
time.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

import attrs

DATA = Path(__file__).parent / "data"
SERVER_PORT = 443


@attrs.frozen
class UdpPacket:
    src_port: int
    dst_port: int
    payload: bytes


def read_udp_packets(path: Path) -> list[UdpPacket]:
    """UDP payloads of an Ethernet pcap (IPv4/IPv6, little-endian classic pcap)."""
    data = path.read_bytes()
    magic = data[:4]
    assert magic == b"\xd4\xc3\xb2\xa1", "classic little-endian pcap expected"
    pos = 24
    packets = []
    while pos + 16 <= len(data):
        _, _, incl_len, _ = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl_len]
        pos += 16 + incl_len
        ether_type = int.from_bytes(frame[12:14], "big")
        ip = frame[14:]
        if ether_type == 0x0800:
            header_length = (ip[0] & 0x0F) * 4
            protocol = ip[9]
            l4 = ip[header_length : int.from_bytes(ip[2:4], "big")]
        elif ether_type == 0x86DD:
            protocol = ip[6]
            l4 = ip[40 : 40 + int.from_bytes(ip[4:6], "big")]
        else:
            continue
        if protocol != 17:
            continue
        src, dst, length = struct.unpack_from("!HHH", l4, 0)
        packets.append(UdpPacket(src, dst, l4[8:length]))
    return packets


@attrs.frozen
class CapturedSession:
    """One DTLS session: datagrams in wire order, tagged by direction."""

    client_port: int
    datagrams: tuple[tuple[bool, bytes], ...]  # (from_client, datagram)

    def from_client(self) -> list[bytes]:
        return [d for c, d in self.datagrams if c]

    def from_server(self) -> list[bytes]:
        return [d for c, d in self.datagrams if not c]


def dtls_sessions(name: str) -> list[CapturedSession]:
    """Sessions of a capture keyed by client UDP port, in order of first appearance."""
    by_port: dict[int, list[tuple[bool, bytes]]] = {}
    for packet in read_udp_packets(DATA / name):
        if packet.dst_port == SERVER_PORT:
            by_port.setdefault(packet.src_port, []).append((True, packet.payload))
        elif packet.src_port == SERVER_PORT:
            by_port.setdefault(packet.dst_port, []).append((False, packet.payload))
    return [CapturedSession(port, tuple(datagrams)) for port, datagrams in by_port.items()]


def legacy_master_secrets() -> dict[str, bytes]:
    secrets = {}
    for line in (DATA / "dtls-variants.master-secrets.txt").read_text().splitlines():
        name, value = line.split()
        secrets[name] = bytes.fromhex(value)
    return secrets


def exporter_secrets(name: str) -> list[bytes]:
    return [
        bytes.fromhex(line.split()[2])
        for line in (DATA / name).read_text().splitlines()
        if line.startswith("EXPORTER_SECRET ")
    ]


def _hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes((counter,)), "sha384")
        out += block
        counter += 1
    return out[:length]


def openconnect_psk_from_tls13(exporter_secret: bytes) -> bytes:
    """RFC 8446 §7.5 exporter, EXPORTER-openconnect-psk, no context, SHA-384 (tests only)."""
    empty = hashlib.sha384(b"").digest()
    derived = _hkdf_expand_label(exporter_secret, b"EXPORTER-openconnect-psk", empty, 48)
    return _hkdf_expand_label(derived, b"exporter", empty, 32)
