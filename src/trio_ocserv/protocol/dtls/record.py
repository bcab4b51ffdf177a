"""DTLS record layer: the 13-byte header, record splitting, and record protection per cipher suite.

Rules:
* A record header is type(1) version(2) epoch(2) sequence(6) length(2); epoch and sequence travel
  together as one 64-bit integer `epoch_seq` = epoch << 48 | seq, which is also the AEAD explicit
  nonce.
* Protection objects are built once per key (AEAD/HMAC state made in `__init__`); `seal` and `open`
  are the hot path and allocate only their output.
* `open` raises only `DtlsDecodeError` (bad tag, MAC or padding); the caller drops such records
  silently, as RFC 6347 §4.1.2.7 asks.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from .errors import DtlsDecodeError
from .suites import BulkKind, CipherSuite

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23

RECORD_HEADER = struct.Struct("!BHQH")  # type, version, epoch<<48|seq, length
RECORD_HEADER_LENGTH = RECORD_HEADER.size
_AAD = struct.Struct("!QBHH")  # epoch_seq, type, version, plaintext length (also the MAC prefix)
_SEQ_MASK = (1 << 48) - 1
MAX_SEQUENCE = _SEQ_MASK

#: Record versions a DTLS peer of ours may use (DTLS 1.0 ClientHello, DTLS 1.2, Cisco 0x0100).
DTLS_VERSIONS = frozenset((0xFEFF, 0xFEFD, 0x0100))


@attrs.frozen(slots=True)
class Record:
    content_type: int
    version: int
    epoch_seq: int
    body: bytes

    @property
    def epoch(self) -> int:
        return self.epoch_seq >> 48

    @property
    def seq(self) -> int:
        return self.epoch_seq & _SEQ_MASK


def split_records(datagram: bytes) -> list[Record]:
    """All complete records in a datagram; a truncated tail is dropped (it cannot be trusted)."""
    records = []
    pos = 0
    end = len(datagram)
    while pos + RECORD_HEADER_LENGTH <= end:
        content_type, version, epoch_seq, length = RECORD_HEADER.unpack_from(datagram, pos)
        start = pos + RECORD_HEADER_LENGTH
        pos = start + length
        if pos > end:
            break
        records.append(Record(content_type, version, epoch_seq, datagram[start:pos]))
    return records


def encode_plain_record(content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes:
    return RECORD_HEADER.pack(content_type, version, epoch_seq, len(body)) + body


class RecordProtection(Protocol):
    """Seals plaintext into a complete record and opens a record body back into plaintext."""

    def seal(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes: ...

    def open(self, content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes: ...


class NullProtection:
    """Epoch 0: records travel in clear."""

    __slots__ = ()

    def seal(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes:
        return encode_plain_record(content_type, version, epoch_seq, plaintext)

    def open(self, content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes:
        return body


class SaltedAeadProtection:
    """AES-GCM (RFC 5288) and AES-CCM (RFC 6655): nonce = 4-byte salt || 8-byte explicit nonce.

    The explicit nonce is the record's epoch||seq, which is unique per key (what GnuTLS sends too).
    """

    __slots__ = ("_aead", "_salt", "is_gcm", "key")

    def __init__(self, aead: AESGCM | AESCCM, salt: bytes, key: bytes = b"") -> None:
        self._aead = aead
        self._salt = salt
        #: Kept so an accelerated data path (server/dtls_fastpath.py) can take the epoch over.
        self.key = key
        self.is_gcm = isinstance(aead, AESGCM)

    @property
    def salt(self) -> bytes:
        return self._salt

    def seal(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes:
        explicit = epoch_seq.to_bytes(8, "big")
        aad = _AAD.pack(epoch_seq, content_type, version, len(plaintext))
        sealed = self._aead.encrypt(self._salt + explicit, plaintext, aad)
        return (
            RECORD_HEADER.pack(content_type, version, epoch_seq, 8 + len(sealed))
            + explicit
            + sealed
        )

    def open(self, content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes:
        if len(body) < 24:
            raise DtlsDecodeError("AEAD record too short")
        aad = _AAD.pack(epoch_seq, content_type, version, len(body) - 24)
        try:
            return self._aead.decrypt(self._salt + body[:8], body[8:], aad)
        except InvalidTag:
            raise DtlsDecodeError("AEAD record failed authentication") from None


class ChaChaProtection:
    """ChaCha20-Poly1305 (RFC 7905): nonce = IV xor padded epoch||seq; no explicit nonce."""

    __slots__ = ("_aead", "_iv")

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._iv = int.from_bytes(iv, "big")

    def seal(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes:
        nonce = (self._iv ^ epoch_seq).to_bytes(12, "big")
        aad = _AAD.pack(epoch_seq, content_type, version, len(plaintext))
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        return RECORD_HEADER.pack(content_type, version, epoch_seq, len(sealed)) + sealed

    def open(self, content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes:
        if len(body) < 16:
            raise DtlsDecodeError("AEAD record too short")
        nonce = (self._iv ^ epoch_seq).to_bytes(12, "big")
        aad = _AAD.pack(epoch_seq, content_type, version, len(body) - 16)
        try:
            return self._aead.decrypt(nonce, body, aad)
        except InvalidTag:
            raise DtlsDecodeError("AEAD record failed authentication") from None


class CbcHmacProtection:
    """CBC with an explicit per-record IV, MAC-then-encrypt with HMAC (TLS 1.1+ style records).

    Used by the legacy 0x0100 suites and the PSK CBC suites; neither side negotiates
    encrypt_then_mac, so the MAC covers the plaintext and the padding follows it.
    """

    __slots__ = ("_algorithm", "_block", "_mac", "_mac_length", "_random_bytes")

    def __init__(
        self,
        algorithm: algorithms.AES | TripleDES,
        mac_hash: str,
        mac_key: bytes,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._algorithm = algorithm
        self._block = algorithm.block_size // 8
        self._mac = hmac.new(mac_key, digestmod=mac_hash)
        self._mac_length = self._mac.digest_size
        self._random_bytes = random_bytes

    def _mac_of(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(_AAD.pack(epoch_seq, content_type, version, len(plaintext)))
        mac.update(plaintext)
        return mac.digest()

    def seal(self, content_type: int, version: int, epoch_seq: int, plaintext: bytes) -> bytes:
        block = self._block
        mac = self._mac_of(content_type, version, epoch_seq, plaintext)
        pad = block - 1 - (len(plaintext) + len(mac)) % block
        iv = self._random_bytes(block)
        encryptor = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        sealed = (
            encryptor.update(plaintext + mac + bytes((pad,)) * (pad + 1)) + encryptor.finalize()
        )
        return (
            RECORD_HEADER.pack(content_type, version, epoch_seq, block + len(sealed)) + iv + sealed
        )

    def open(self, content_type: int, version: int, epoch_seq: int, body: bytes) -> bytes:
        block = self._block
        if len(body) < 2 * block or len(body) % block or len(body) - block < self._mac_length + 1:
            raise DtlsDecodeError("CBC record has a bad length")
        decryptor = Cipher(self._algorithm, modes.CBC(body[:block])).decryptor()
        raw = decryptor.update(body[block:]) + decryptor.finalize()
        pad = raw[-1]
        content_end = len(raw) - pad - 1 - self._mac_length
        # One error for padding and MAC failures, so the two cannot be told apart.
        padding_ok = (
            content_end >= 0 and raw[content_end + self._mac_length : -1] == bytes((pad,)) * pad
        )
        if not padding_ok:
            content_end = max(0, len(raw) - 1 - self._mac_length)
        plaintext = raw[:content_end]
        expected = self._mac_of(content_type, version, epoch_seq, plaintext)
        received = raw[content_end : content_end + self._mac_length]
        if not hmac.compare_digest(expected, received) or not padding_ok:
            raise DtlsDecodeError("CBC record failed authentication")
        return plaintext


def make_protection(
    suite: CipherSuite,
    key: bytes,
    iv: bytes,
    mac_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> RecordProtection:
    """Build the protection object for one direction of one epoch."""
    if suite.bulk is BulkKind.AES_GCM:
        return SaltedAeadProtection(AESGCM(key), iv, key)
    if suite.bulk is BulkKind.AES_CCM:
        return SaltedAeadProtection(AESCCM(key, tag_length=16), iv, key)
    if suite.bulk is BulkKind.CHACHA20_POLY1305:
        return ChaChaProtection(key, iv)
    assert suite.mac_hash is not None
    algorithm: algorithms.AES | TripleDES = (
        algorithms.AES(key) if suite.bulk is BulkKind.AES_CBC else TripleDES(key)
    )
    return CbcHmacProtection(algorithm, suite.mac_hash, mac_key, random_bytes)
