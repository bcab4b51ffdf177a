"""Record layer: decrypt every captured DTLS record of every variant; seal/open round trips;
tampering.

Rules: keys come from the capture's inputs (X-DTLS-Master-Secret, or the PSK from the TLS 1.3
exporter secret in the key log) through our own PRF and key schedule; any record we cannot open
fails the test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.dtls.errors import DtlsDecodeError
from trio_ocserv.protocol.dtls.handshake_messages import (
    ClientHello,
    ServerHello,
    parse_fragments,
)
from trio_ocserv.protocol.dtls.keys import derive_key_block, master_secret_from_psk
from trio_ocserv.protocol.dtls.record import (
    RecordProtection,
    make_protection,
    split_records,
)
from trio_ocserv.protocol.dtls.suites import ALL_SUITES, SUITES_BY_CODE, CipherSuite

from .captures import (
    CapturedSession,
    dtls_sessions,
    exporter_secrets,
    legacy_master_secrets,
    openconnect_psk_from_tls13,
)

LEGACY_NAMES = {
    0x002F: "AES128-SHA",
    0x0035: "AES256-SHA",
    0x009C: "OC-DTLS1_2-AES128-GCM",
    0x009D: "OC-DTLS1_2-AES256-GCM",
    0x000A: "DES-CBC3-SHA",
}


def _hellos(session: CapturedSession) -> tuple[ClientHello, ServerHello]:
    client = split_records(session.from_client()[0])[0]
    server = split_records(session.from_server()[0])[0]
    return (
        ClientHello.parse(parse_fragments(client.body)[0].data),
        ServerHello.parse(parse_fragments(server.body)[0].data),
    )


def _protections(
    suite: CipherSuite, master: bytes, client_random: bytes, server_random: bytes
) -> tuple[RecordProtection, RecordProtection]:
    block = derive_key_block(suite, master, client_random, server_random)
    client = make_protection(
        suite, block.client_key, block.client_iv, block.client_mac_key, os.urandom
    )
    server = make_protection(
        suite, block.server_key, block.server_iv, block.server_mac_key, os.urandom
    )
    return client, server


def _open_all(
    session: CapturedSession, client: RecordProtection, server: RecordProtection
) -> list[tuple[bool, int, bytes]]:
    opened = []
    for from_client, datagram in session.datagrams:
        for record in split_records(datagram):
            if record.epoch == 0:
                continue
            protection = client if from_client else server
            plaintext = protection.open(
                record.content_type, record.version, record.epoch_seq, record.body
            )
            opened.append((from_client, record.content_type, plaintext))
    return opened


def _master_for(session: CapturedSession, hello: ClientHello, server: ServerHello) -> bytes:
    suite = SUITES_BY_CODE[server.cipher_suite]
    if not suite.psk:
        return legacy_master_secrets()[LEGACY_NAMES[server.cipher_suite]]
    # The key log holds one exporter secret per TLS connection; the right one opens the Finished.
    for name in ("psk-default.keylog", "dtls-variants.keylog"):
        for secret in exporter_secrets(name):
            psk = openconnect_psk_from_tls13(secret)
            master = master_secret_from_psk(suite, psk, hello.random, server.random)
            client, server_p = _protections(suite, master, hello.random, server.random)
            try:
                _open_all(
                    CapturedSession(session.client_port, session.datagrams[:4]), client, server_p
                )
            except DtlsDecodeError:
                continue
            return master
    raise AssertionError("no exporter secret opens this PSK session")


ALL_CAPTURED = [("psk-default.pcap", s) for s in dtls_sessions("psk-default.pcap")] + [
    ("dtls-variants.pcap", s) for s in dtls_sessions("dtls-variants.pcap")
]


@pytest.mark.parametrize(
    ("capture", "session"), ALL_CAPTURED, ids=[f"{c}:{s.client_port}" for c, s in ALL_CAPTURED]
)
def test_every_captured_record_decrypts(capture: str, session: CapturedSession) -> None:
    hello, server_hello = _hellos(session)
    suite = SUITES_BY_CODE[server_hello.cipher_suite]
    master = _master_for(session, hello, server_hello)
    client, server = _protections(suite, master, hello.random, server_hello.random)
    opened = _open_all(session, client, server)
    finished = [p for _, t, p in opened if t == 22]
    assert len(finished) >= 2 and all(p[0] == 20 and len(p) == 24 for p in finished)
    data = [(c, p) for c, t, p in opened if t == 23]
    assert any(c for c, _ in data) and any(not c for c, _ in data)
    # The first client data record is openconnect's MTU probe: a DPD-REQ (type 0x03).
    first_client = next(p for c, p in data if c)
    assert first_client[0] == 0x03
    # The server echoes it as DPD-RESP with the identical payload (§7.6).
    assert any(p == b"\x04" + first_client[1:] for c, p in data if not c)


def test_psk_default_first_probe_is_1435_bytes() -> None:
    (session,) = dtls_sessions("psk-default.pcap")
    hello, server_hello = _hellos(session)
    suite = SUITES_BY_CODE[server_hello.cipher_suite]
    master = _master_for(session, hello, server_hello)
    assert master.hex().startswith("5760bbb46af71df3")
    client, server = _protections(suite, master, hello.random, server_hello.random)
    data = [p for c, t, p in _open_all(session, client, server) if c and t == 23]
    assert len(data[0]) == 1435


def _pair(suite: CipherSuite) -> tuple[RecordProtection, RecordProtection]:
    key = os.urandom(suite.key_length)
    iv = os.urandom(suite.fixed_iv_length)
    mac_key = os.urandom(suite.mac_length)
    return (
        make_protection(suite, key, iv, mac_key, os.urandom),
        make_protection(suite, key, iv, mac_key, os.urandom),
    )


@pytest.mark.parametrize("suite", ALL_SUITES, ids=[s.name for s in ALL_SUITES])
@settings(max_examples=20, deadline=None)
@given(payload=st.binary(max_size=300), seq=st.integers(0, (1 << 48) - 1))
def test_seal_open_round_trip(suite: CipherSuite, payload: bytes, seq: int) -> None:
    sender, receiver = _pair(suite)
    version = 0x0100 if suite.prf_hash is None else 0xFEFD
    epoch_seq = (1 << 48) | seq
    record = split_records(sender.seal(23, version, epoch_seq, payload))[0]
    assert record.epoch_seq == epoch_seq
    assert len(record.body) + 13 <= len(payload) + suite.record_overhead
    assert receiver.open(23, version, epoch_seq, record.body) == payload


@pytest.mark.parametrize("suite", ALL_SUITES, ids=[s.name for s in ALL_SUITES])
def test_tampered_records_are_rejected(suite: CipherSuite) -> None:
    sender, receiver = _pair(suite)
    epoch_seq = (1 << 48) | 7
    body = split_records(sender.seal(23, 0xFEFD, epoch_seq, b"x" * 40))[0].body
    for index in (0, len(body) // 2, len(body) - 1):
        tampered = bytearray(body)
        tampered[index] ^= 0x01
        with pytest.raises(DtlsDecodeError):
            receiver.open(23, 0xFEFD, epoch_seq, bytes(tampered))
    # Header fields are authenticated too: another sequence number or type must fail.
    with pytest.raises(DtlsDecodeError):
        receiver.open(23, 0xFEFD, epoch_seq + 1, body)
    with pytest.raises(DtlsDecodeError):
        receiver.open(21, 0xFEFD, epoch_seq, body)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=[s.name for s in ALL_SUITES])
@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=120))
def test_open_garbage_raises_only_decode_error(suite: CipherSuite, body: bytes) -> None:
    _, receiver = _pair(suite)
    with pytest.raises(DtlsDecodeError):
        receiver.open(23, 0xFEFD, 1 << 48, body)


def test_split_records_drops_truncated_tail() -> None:
    whole = bytes.fromhex("17fefd000100000000000100020102")
    records = split_records(whole + whole[:-1])
    assert len(records) == 1
    assert records[0].body == b"\x01\x02"
    assert records[0].epoch == 1
    assert records[0].seq == 1
