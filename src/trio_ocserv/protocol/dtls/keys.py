"""Key schedule: PSK premaster secret, master secret, key block split (RFC 4279, RFC 5246 §6.3).

Rules: pure functions; no record protection objects are built here (see `record.py`).
"""

from __future__ import annotations

import attrs

from .prf import prf
from .suites import CipherSuite


@attrs.frozen(slots=True)
class KeyBlock:
    client_mac_key: bytes
    server_mac_key: bytes
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes


def psk_premaster_secret(psk: bytes) -> bytes:
    """Plain PSK key exchange: uint16(N) || N zero bytes || uint16(N) || PSK."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def master_secret_from_psk(
    suite: CipherSuite, psk: bytes, client_random: bytes, server_random: bytes
) -> bytes:
    return prf(
        suite.prf_hash,
        psk_premaster_secret(psk),
        b"master secret",
        client_random + server_random,
        48,
    )


def derive_key_block(
    suite: CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes
) -> KeyBlock:
    raw = prf(
        suite.prf_hash,
        master_secret,
        b"key expansion",
        server_random + client_random,
        suite.key_block_length,
    )
    parts = []
    pos = 0
    for size in (
        suite.mac_length,
        suite.mac_length,
        suite.key_length,
        suite.key_length,
        suite.fixed_iv_length,
        suite.fixed_iv_length,
    ):
        parts.append(raw[pos : pos + size])
        pos += size
    return KeyBlock(*parts)
