"""The cipher suites our DTLS engine speaks, as data.

Rules: one frozen `CipherSuite` per TLS code point; everything the record layer and key schedule
need (bulk cipher, key/IV/MAC sizes, PRF hash, record version) is read from here, never
special-cased by name elsewhere. PSK suites are the ones openconnect 9.01 offers in PSK-NEGOTIATE
mode (protocol.md §7.3.3); legacy suites are the Cisco resumption table of §7.4.1.
"""

from __future__ import annotations

import enum

import attrs

DTLS1_BAD_VER = 0x0100
DTLS1_0 = 0xFEFF
DTLS1_2 = 0xFEFD


class BulkKind(enum.Enum):
    AES_GCM = "aes-gcm"
    AES_CCM = "aes-ccm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    AES_CBC = "aes-cbc"
    TRIPLE_DES_CBC = "3des-cbc"


@attrs.frozen(slots=True)
class CipherSuite:
    code: int
    name: str
    bulk: BulkKind
    key_length: int
    #: Per-direction IV bytes in the key block: AEAD salt (4), ChaCha IV (12), CBC IV (unused).
    fixed_iv_length: int
    #: HMAC hash for CBC suites (None for AEAD).
    mac_hash: str | None
    #: PRF and Finished hash; None = TLS 1.0 PRF (MD5 xor SHA-1), used by DTLS1_BAD_VER.
    prf_hash: str | None
    psk: bool

    @property
    def mac_length(self) -> int:
        return {None: 0, "sha1": 20, "sha256": 32, "sha384": 48}[self.mac_hash]

    @property
    def is_aead(self) -> bool:
        return self.mac_hash is None

    @property
    def key_block_length(self) -> int:
        return 2 * (self.mac_length + self.key_length + self.fixed_iv_length)

    @property
    def record_overhead(self) -> int:
        """Worst-case bytes a record adds to its plaintext (header included), for MTU maths."""
        if self.bulk is BulkKind.CHACHA20_POLY1305:
            return 13 + 16
        if self.is_aead:
            return 13 + 8 + 16
        block = 8 if self.bulk is BulkKind.TRIPLE_DES_CBC else 16
        return 13 + block + self.mac_length + block


def _suite(
    code: int,
    name: str,
    bulk: BulkKind,
    key_length: int,
    mac_hash: str | None,
    prf_hash: str | None,
    *,
    psk: bool,
) -> CipherSuite:
    fixed_iv = {
        BulkKind.AES_GCM: 4,
        BulkKind.AES_CCM: 4,
        BulkKind.CHACHA20_POLY1305: 12,
        BulkKind.AES_CBC: 16,
        BulkKind.TRIPLE_DES_CBC: 8,
    }[bulk]
    return CipherSuite(code, name, bulk, key_length, fixed_iv, mac_hash, prf_hash, psk)


_A = BulkKind
ALL_SUITES: tuple[CipherSuite, ...] = (
    # PSK suites (DTLS 1.2, PSK-NEGOTIATE)
    _suite(0x00A9, "TLS_PSK_WITH_AES_256_GCM_SHA384", _A.AES_GCM, 32, None, "sha384", psk=True),
    _suite(0x00A8, "TLS_PSK_WITH_AES_128_GCM_SHA256", _A.AES_GCM, 16, None, "sha256", psk=True),
    _suite(
        0xCCAB,
        "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
        _A.CHACHA20_POLY1305,
        32,
        None,
        "sha256",
        psk=True,
    ),
    _suite(0xC0A5, "TLS_PSK_WITH_AES_256_CCM", _A.AES_CCM, 32, None, "sha256", psk=True),
    _suite(0xC0A4, "TLS_PSK_WITH_AES_128_CCM", _A.AES_CCM, 16, None, "sha256", psk=True),
    _suite(0x008D, "TLS_PSK_WITH_AES_256_CBC_SHA", _A.AES_CBC, 32, "sha1", "sha256", psk=True),
    _suite(0x008C, "TLS_PSK_WITH_AES_128_CBC_SHA", _A.AES_CBC, 16, "sha1", "sha256", psk=True),
    _suite(0x00AE, "TLS_PSK_WITH_AES_128_CBC_SHA256", _A.AES_CBC, 16, "sha256", "sha256", psk=True),
    # Legacy resumption suites, DTLS 1.2 (OC-DTLS1_2-* and X-DTLS12 names)
    _suite(0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384", _A.AES_GCM, 32, None, "sha384", psk=False),
    _suite(0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256", _A.AES_GCM, 16, None, "sha256", psk=False),
    # Legacy resumption suites, DTLS1_BAD_VER (TLS 1.0 PRF)
    _suite(0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", _A.AES_CBC, 32, "sha1", None, psk=False),
    _suite(0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA", _A.AES_CBC, 16, "sha1", None, psk=False),
    _suite(0x000A, "TLS_RSA_WITH_3DES_EDE_CBC_SHA", _A.TRIPLE_DES_CBC, 24, "sha1", None, psk=False),
)

SUITES_BY_CODE: dict[int, CipherSuite] = {s.code: s for s in ALL_SUITES}

#: Server preference in PSK mode: AES-GCM first (what ocserv picks with an AES-GCM TLS session).
DEFAULT_PSK_PREFERENCE: tuple[int, ...] = (
    0x00A9,
    0x00A8,
    0xCCAB,
    0xC0A5,
    0xC0A4,
    0x008D,
    0x008C,
    0x00AE,
)


def version_for_suite(suite: CipherSuite) -> int:
    """Legacy CBC suites run on DTLS1_BAD_VER; everything else on DTLS 1.2."""
    if suite.prf_hash is None:
        return DTLS1_BAD_VER
    return DTLS1_2
