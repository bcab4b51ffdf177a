"""Replay captured ocserv flights into `DtlsLegacyClient`; compare our records with openconnect's.

Rules: the client's randomness (client random, CBC IVs) is injected from the capture and our
ClientHello carries the extensions openconnect sends, so our ClientHello, ChangeCipherSpec and
Finished records must be byte-identical to the captured ones.
"""

from __future__ import annotations

import pytest

from trio_ocserv.protocol.dtls.client import DtlsLegacyClient
from trio_ocserv.protocol.dtls.events import HandshakeComplete
from trio_ocserv.protocol.dtls.handshake_messages import ClientHello, parse_fragments
from trio_ocserv.protocol.dtls.record import Record, split_records

from .captures import dtls_sessions, legacy_master_secrets
from .test_server_capture import scripted_random


def _client_handshake_records(datagrams: list[bytes]) -> list[Record]:
    records = []
    for datagram in datagrams:
        for record in split_records(datagram):
            if record.content_type == 23:
                return records
            records.append(record)
    return records


@pytest.mark.parametrize(
    ("index", "name", "iv_length"),
    [(0, "AES128-SHA", 16), (1, "AES256-SHA", 16), (4, "DES-CBC3-SHA", 8)],
)
def test_bad_version_client_replays_byte_for_byte(index: int, name: str, iv_length: int) -> None:
    session = dtls_sessions("dtls-variants.pcap")[index]
    theirs = _client_handshake_records(session.from_client())
    hello = ClientHello.parse(parse_fragments(theirs[0].body)[0].data)
    finished_iv = theirs[2].body[:iv_length]
    client = DtlsLegacyClient(
        legacy_master_secrets()[name],
        hello.session_id,
        hello.cipher_suites[0],
        random_bytes=scripted_random([hello.random, finished_iv]),
    )
    client.start(0.0)
    ours = [r for d in client.datagrams_to_send() for r in split_records(d)]
    for datagram in session.from_server():
        client.receive_datagram(datagram, 0.1)
        ours.extend(r for d in client.datagrams_to_send() for r in split_records(d))
        if client.established:
            break
    assert ours[:3] == theirs[:3]  # ClientHello, CCS (01 00 01), Finished
    event = client.next_event()
    assert isinstance(event, HandshakeComplete) and event.version == 0x0100


@pytest.mark.parametrize(
    ("index", "name"), [(2, "OC-DTLS1_2-AES128-GCM"), (3, "OC-DTLS1_2-AES256-GCM")]
)
def test_dtls12_client_replays_byte_for_byte(index: int, name: str) -> None:
    session = dtls_sessions("dtls-variants.pcap")[index]
    theirs = _client_handshake_records(session.from_client())
    hello = ClientHello.parse(parse_fragments(theirs[0].body)[0].data)
    client = DtlsLegacyClient(
        legacy_master_secrets()[name],
        hello.session_id,
        hello.cipher_suites[0],
        random_bytes=scripted_random([hello.random]),
    )
    client.start(0.0)
    ours = [r for d in client.datagrams_to_send() for r in split_records(d)]
    for datagram in session.from_server():
        client.receive_datagram(datagram, 0.1)
        ours.extend(r for d in client.datagrams_to_send() for r in split_records(d))
        if client.established:
            break
    assert ours[:3] == theirs[:3]  # ClientHello, CCS (01), Finished (AES-GCM: deterministic)
    assert theirs[1].body == b"\x01"
    event = client.next_event()
    assert isinstance(event, HandshakeComplete) and event.version == 0xFEFD
