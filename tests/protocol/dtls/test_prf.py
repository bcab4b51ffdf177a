"""Known-answer tests for the PRFs and key schedule, from protocol.md Appendix B (captured
sessions)."""

from __future__ import annotations

from trio_ocserv.protocol.dtls.handshake_messages import FINISHED, encode_handshake
from trio_ocserv.protocol.dtls.keys import (
    derive_key_block,
    master_secret_from_psk,
    psk_premaster_secret,
)
from trio_ocserv.protocol.dtls.prf import finished_verify_data, prf_tls10, prf_tls12
from trio_ocserv.protocol.dtls.suites import SUITES_BY_CODE

from .captures import dtls_sessions, legacy_master_secrets

PSK = bytes.fromhex("d80489bdb396cf3c60a032ad729fb320abad0c3618ffc7034fc97774f6e5254d")
CLIENT_RANDOM = bytes.fromhex("b6d154362360a49af2fc585220c9b2e391ca4475d0eccf05b08331a325d24f4f")
SERVER_RANDOM = bytes.fromhex("c4ad120327804703da0bfbf9b8a4669846009e6f56ec8e0aa022517ae3a421bd")
MASTER = bytes.fromhex(
    "5760bbb46af71df3b9bb69ba50ddb2a9fec13ed272474945230e37622f45a05f"
    "d761a01b6eab15120e4e30e624aff300"
)


def test_psk_premaster_layout() -> None:
    premaster = psk_premaster_secret(PSK)
    assert premaster == b"\x00\x20" + bytes(32) + b"\x00\x20" + PSK
    assert len(premaster) == 68


def test_psk_master_secret_and_key_block_match_capture() -> None:
    suite = SUITES_BY_CODE[0x00A9]
    master = master_secret_from_psk(suite, PSK, CLIENT_RANDOM, SERVER_RANDOM)
    assert master == MASTER
    block = derive_key_block(suite, master, CLIENT_RANDOM, SERVER_RANDOM)
    assert (
        block.client_key.hex() == "d3a983d7f9e7398bcfe22472068607f2b3c850ccb0f573e58381ef74fd44494a"
    )
    assert (
        block.server_key.hex() == "178f4fcf692bef775c08552a3de7e1c64510f96c7d3ce0c05afd24f1d605e5e0"
    )
    assert block.client_iv.hex() == "24139e41"
    assert block.server_iv.hex() == "4257ea91"
    assert block.client_mac_key == block.server_mac_key == b""


def test_prf_tls12_is_p_hash_and_extends_consistently() -> None:
    short = prf_tls12("sha256", b"secret", b"label", b"seed", 20)
    long = prf_tls12("sha256", b"secret", b"label", b"seed", 100)
    assert len(long) == 100
    assert long.startswith(short)
    assert prf_tls12("sha384", b"secret", b"label", b"seed", 20) != short


def test_prf_tls10_odd_length_secret_uses_overlapping_halves() -> None:
    # Both halves share the middle byte: changing it changes both the MD5 and the SHA-1 stream.
    base = prf_tls10(b"abcde", b"l", b"s", 32)
    changed = prf_tls10(b"abXde", b"l", b"s", 32)
    assert base != changed
    assert len(base) == 32


def _handshake_bodies(datagrams: list[bytes]) -> list[bytes]:
    from trio_ocserv.protocol.dtls.record import split_records

    return [
        record.body
        for datagram in datagrams
        for record in split_records(datagram)
        if record.content_type == 22 and record.epoch == 0
    ]


def test_bad_version_finished_values_match_capture() -> None:
    """§7.4.4: TLS 1.0 PRF over MD5||SHA1 of the handshake bodies only."""
    session = dtls_sessions("dtls-variants.pcap")[0]  # AES128-SHA on 0x0100
    client_hello = _handshake_bodies(session.from_client())[0]
    server_hello = _handshake_bodies(session.from_server())[0]
    master = legacy_master_secrets()["AES128-SHA"]
    transcript = client_hello[12:] + server_hello[12:]
    server_verify = finished_verify_data(None, master, b"server finished", transcript)
    assert server_verify.hex() == "8868b2bbfd17ff20ea95c995"
    server_finished_body = encode_handshake(FINISHED, 2, server_verify)[12:]
    client_verify = finished_verify_data(
        None, master, b"client finished", transcript + server_finished_body
    )
    assert client_verify.hex() == "5e127834db86bf6a8e9bf751"
