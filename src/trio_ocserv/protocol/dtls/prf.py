"""TLS pseudo-random functions used by DTLS: the TLS 1.2 PRF (RFC 5246 §5) and the TLS 1.0 PRF (RFC
2246 §5, MD5 xor SHA-1) that DTLS1_BAD_VER (0x0100) sessions use.

Rules: pure functions of their inputs; `hash_name` is a hashlib name ("sha256", "sha384").
"""

from __future__ import annotations

import hashlib
import hmac


def p_hash(hash_name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_hash: A(i) = HMAC(secret, A(i-1)); output = HMAC(secret, A(1) + seed) || ..."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


def prf_tls12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    return p_hash(hash_name, secret, label + seed, length)


def prf_tls10(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    # The two halves overlap by one byte when the secret length is odd (RFC 2246 §5).
    half = (len(secret) + 1) // 2
    md5_part = p_hash("md5", secret[:half], label + seed, length)
    sha1_part = p_hash("sha1", secret[len(secret) - half :], label + seed, length)
    return bytes(x ^ y for x, y in zip(md5_part, sha1_part, strict=True))


def prf(hash_name: str | None, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """`hash_name=None` selects the TLS 1.0 PRF, anything else the TLS 1.2 PRF with that hash."""
    if hash_name is None:
        return prf_tls10(secret, label, seed, length)
    return prf_tls12(hash_name, secret, label, seed, length)


def transcript_hash(hash_name: str | None, transcript: bytes) -> bytes:
    """The Finished hash: the PRF hash for TLS 1.2, MD5 || SHA-1 for the TLS 1.0 PRF."""
    if hash_name is None:
        return hashlib.md5(transcript).digest() + hashlib.sha1(transcript).digest()
    return hashlib.new(hash_name, transcript).digest()


def finished_verify_data(
    hash_name: str | None, master_secret: bytes, label: bytes, transcript: bytes
) -> bytes:
    return prf(hash_name, master_secret, label, transcript_hash(hash_name, transcript), 12)
