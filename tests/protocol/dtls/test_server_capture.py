"""Replay captured openconnect ClientHellos into `DtlsServer` and compare our flight with ocserv's.

Rules: the server's randomness (server random, PSK session id, CBC IVs) is injected from the
capture, so our ServerHello, ChangeCipherSpec and Finished records must be byte-identical to what
ocserv sent; the client's captured second flight must then complete the handshake and its data must
decrypt.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trio_ocserv.protocol.dtls.events import ApplicationData, HandshakeComplete, HandshakeFailed
from trio_ocserv.protocol.dtls.handshake_messages import ClientHello, parse_fragments
from trio_ocserv.protocol.dtls.record import Record, split_records
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)

from .captures import CapturedSession, dtls_sessions, exporter_secrets, legacy_master_secrets
from .captures import openconnect_psk_from_tls13 as psk_from_exporter

PSK_DEFAULT = bytes.fromhex("d80489bdb396cf3c60a032ad729fb320abad0c3618ffc7034fc97774f6e5254d")


def scripted_random(chunks: list[bytes]) -> Callable[[int], bytes]:
    """A random source that hands out the captured values in order, checking each length."""
    queue = list(chunks)

    def take(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n
        return chunk

    return take


def _server_handshake_records(session: CapturedSession) -> list[Record]:
    """ocserv's records up to (not including) its first application data."""
    records = []
    for datagram in session.from_server():
        for record in split_records(datagram):
            if record.content_type == 23:
                return records
            records.append(record)
    return records


def _run_capture(session: CapturedSession, server: DtlsServer) -> tuple[list[Record], list[object]]:
    ours: list[Record] = []
    events: list[object] = []
    for now, datagram in enumerate(session.from_client()):
        server.receive_datagram(datagram, float(now))
        for out in server.datagrams_to_send():
            ours.extend(split_records(out))
        while (event := server.next_event()) is not None:
            events.append(event)
    return ours, events


def _server_random_and_session_id(record: Record) -> tuple[bytes, bytes]:
    body = parse_fragments(record.body)[0].data
    return body[2:34], body[35 : 35 + body[34]]


def test_psk_default_session_replays_byte_for_byte() -> None:
    (session,) = dtls_sessions("psk-default.pcap")
    theirs = _server_handshake_records(session)
    server_random, session_id = _server_random_and_session_id(theirs[0])
    server = DtlsServer(
        PskServerParameters(PSK_DEFAULT), random_bytes=scripted_random([server_random, session_id])
    )
    ours, events = _run_capture(session, server)
    handshake = [r for r in ours if r.content_type != 23]
    assert handshake == theirs  # SH, SHD, CCS, Finished: identical records
    assert isinstance(events[0], HandshakeComplete)
    assert events[0].cipher_suite == 0x00A9
    data = [e.payload for e in events if isinstance(e, ApplicationData)]
    assert data[0][0] == 0x03 and len(data[0]) == 1435
    assert server.established


@pytest.mark.parametrize(
    ("index", "name", "version"),
    [
        (0, "AES128-SHA", 0x0100),
        (1, "AES256-SHA", 0x0100),
        (2, "OC-DTLS1_2-AES128-GCM", 0xFEFD),
        (3, "OC-DTLS1_2-AES256-GCM", 0xFEFD),
        (4, "DES-CBC3-SHA", 0x0100),
    ],
)
def test_legacy_sessions_replay_byte_for_byte(index: int, name: str, version: int) -> None:
    session = dtls_sessions("dtls-variants.pcap")[index]
    theirs = _server_handshake_records(session)
    client_hello = ClientHello.parse(
        parse_fragments(split_records(session.from_client()[0])[0].body)[0].data
    )
    server_random, _ = _server_random_and_session_id(theirs[0])
    randomness = [server_random]
    finished = theirs[2]
    assert finished.epoch == 1
    if version == 0x0100:  # CBC: the Finished record's explicit IV is ocserv's random
        block = 8 if name == "DES-CBC3-SHA" else 16
        randomness.append(finished.body[:block])
    server = DtlsServer(
        LegacyServerParameters(
            legacy_master_secrets()[name], client_hello.session_id, client_hello.cipher_suites[0]
        ),
        random_bytes=scripted_random(randomness),
    )
    ours, events = _run_capture(session, server)
    assert [r for r in ours if r.content_type != 23][:3] == theirs[:3]
    if version == 0x0100:
        # Quirks of §7.4.4: 3-byte CCS carrying message_seq 1, record version 0x0100.
        assert theirs[1].body == b"\x01\x00\x01"
        assert all(r.version == 0x0100 for r in ours)
    complete = events[0]
    assert isinstance(complete, HandshakeComplete)
    assert complete.mode == "legacy" and complete.version == version
    data = [e.payload for e in events if isinstance(e, ApplicationData)]
    assert data and data[0][0] == 0x03


def test_psk_session_in_variants_capture_completes() -> None:
    session = dtls_sessions("dtls-variants.pcap")[5]
    theirs = _server_handshake_records(session)
    server_random, session_id = _server_random_and_session_id(theirs[0])
    for secret in exporter_secrets("dtls-variants.keylog"):
        server = DtlsServer(
            PskServerParameters(psk_from_exporter(secret)),
            random_bytes=scripted_random([server_random, session_id]),
        )
        ours, _ = _run_capture(session, server)
        if server.established:
            assert [r for r in ours if r.content_type != 23] == theirs
            return
    raise AssertionError("no exporter secret of the key log completes the PSK handshake")


def test_wrong_psk_times_out() -> None:
    """Records under a wrong key are dropped silently (RFC 6347); the handshake then times out."""
    (session,) = dtls_sessions("psk-default.pcap")
    server = DtlsServer(PskServerParameters(bytes(32)))
    _, events = _run_capture(session, server)
    assert not server.established
    assert events == []
    now = 100.0
    while (deadline := server.get_timer()) is not None:
        now = max(now, deadline)
        server.handle_timer(now)
    assert server.next_event() == HandshakeFailed("handshake timed out")
    assert server.closed


def test_transcript_mismatch_aborts_with_decrypt_error_alert() -> None:
    """Same keys, different ServerHello (another session id): the client Finished cannot verify."""
    (session,) = dtls_sessions("psk-default.pcap")
    theirs = _server_handshake_records(session)
    server_random, _ = _server_random_and_session_id(theirs[0])
    server = DtlsServer(
        PskServerParameters(PSK_DEFAULT), random_bytes=scripted_random([server_random, bytes(32)])
    )
    ours, events = _run_capture(session, server)
    assert not server.established
    assert events == [HandshakeFailed("client Finished does not verify")]
    alerts = [r for r in ours if r.content_type == 21]
    assert len(alerts) == 1 and alerts[0].epoch == 1


def test_psk_default_session_finished_values_are_ready_before_the_key_exchange() -> None:
    """openconnect's real ClientKeyExchange is the one `prepare()` expects: both Finished values
    come from that early computation, and the records are still ocserv's, byte for byte."""
    (session,) = dtls_sessions("psk-default.pcap")
    theirs = _server_handshake_records(session)
    server_random, session_id = _server_random_and_session_id(theirs[0])
    server = DtlsServer(
        PskServerParameters(PSK_DEFAULT), random_bytes=scripted_random([server_random, session_id])
    )
    ours: list[Record] = []
    late: list[bytes] = []
    for now, datagram in enumerate(session.from_client()):
        server.receive_datagram(datagram, float(now))
        for out in server.datagrams_to_send():
            ours.extend(split_records(out))
        if server.cipher_suite is not None and not server.established and not late:
            server.prepare()
            compute = server._compute_verify_data

            def computed_late(
                label: bytes, transcript: bytes, compute: Callable[..., bytes] = compute
            ) -> bytes:
                late.append(label)
                return compute(label, transcript)

            server._compute_verify_data = computed_late  # type: ignore[method-assign]
            late.append(b"prepared")
    assert [r for r in ours if r.content_type != 23] == theirs
    assert server.established and late == [b"prepared"]
