"""`DtlsServer` unit behaviour: what it accepts, what it answers, how it refuses."""

from __future__ import annotations

import os
import random

import pytest

from trio_ocserv.protocol.dtls.client import DtlsLegacyClient, DtlsPskClient
from trio_ocserv.protocol.dtls.events import (
    AlertReceived,
    ApplicationData,
    HandshakeComplete,
    HandshakeFailed,
)
from trio_ocserv.protocol.dtls.handshake_messages import (
    CLIENT_HELLO,
    EXT_OPENCONNECT_APP_ID,
    EXT_RENEGOTIATION_INFO,
    ClientHello,
    ServerHello,
    encode_handshake,
    parse_fragments,
)
from trio_ocserv.protocol.dtls.record import encode_plain_record, split_records
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)

PSK = os.urandom(32)
APP_ID = os.urandom(32)


def _hello_datagram(hello: ClientHello, record_version: int = 0xFEFF) -> bytes:
    message = encode_handshake(CLIENT_HELLO, 0, hello.encode())
    return encode_plain_record(22, record_version, 0, message)


def _psk_hello(
    session_id: bytes = APP_ID,
    suites: tuple[int, ...] = (0x00A9, 0x00A8),
    extensions: tuple[tuple[int, bytes], ...] = ((EXT_RENEGOTIATION_INFO, b"\x00"),),
    version: int = 0xFEFD,
) -> ClientHello:
    return ClientHello(version, os.urandom(32), session_id, b"", suites, b"\x00", extensions)


def _server_hello(server: DtlsServer) -> ServerHello:
    records = [r for d in server.datagrams_to_send() for r in split_records(d)]
    return ServerHello.parse(parse_fragments(records[0].body)[0].data)


def test_psk_server_hello_has_fresh_session_id_and_renegotiation_info() -> None:
    server = DtlsServer(PskServerParameters(PSK), random_bytes=os.urandom)
    server.receive_datagram(_hello_datagram(_psk_hello()), 0.0)
    hello = _server_hello(server)
    assert hello.session_id != APP_ID and len(hello.session_id) == 32
    assert hello.cipher_suite == 0x00A9 and hello.server_version == 0xFEFD
    assert hello.extensions == ((EXT_RENEGOTIATION_INFO, b"\x00"),)
    assert server.get_timer() == 0.4


def test_renegotiation_info_only_when_offered() -> None:
    server = DtlsServer(PskServerParameters(PSK))
    server.receive_datagram(_hello_datagram(_psk_hello(extensions=())), 0.0)
    assert _server_hello(server).extensions == ()


def test_server_preference_decides_the_suite() -> None:
    server = DtlsServer(PskServerParameters(PSK, suite_preference=(0x00A8, 0x00A9)))
    server.receive_datagram(_hello_datagram(_psk_hello()), 0.0)
    assert _server_hello(server).cipher_suite == 0x00A8


def test_no_common_suite_is_refused_with_handshake_failure() -> None:
    server = DtlsServer(PskServerParameters(PSK))
    server.receive_datagram(_hello_datagram(_psk_hello(suites=(0x002F, 0xC030))), 0.0)
    (alert,) = server.datagrams_to_send()
    assert alert[0] == 21 and alert[-2:] == bytes((2, 40))
    assert server.next_event() == HandshakeFailed("no common PSK cipher suite")


def test_app_id_check_accepts_session_id_or_extension() -> None:
    params = PskServerParameters(PSK, app_id=APP_ID)
    by_session_id = DtlsServer(params)
    by_session_id.receive_datagram(_hello_datagram(_psk_hello()), 0.0)
    assert by_session_id.next_event() is None and not by_session_id.closed

    extension = (EXT_OPENCONNECT_APP_ID, bytes((len(APP_ID),)) + APP_ID)
    by_extension = DtlsServer(params)
    by_extension.receive_datagram(
        _hello_datagram(_psk_hello(session_id=os.urandom(32), extensions=(extension,))), 0.0
    )
    assert by_extension.next_event() is None and not by_extension.closed

    other = DtlsServer(params)
    other.receive_datagram(_hello_datagram(_psk_hello(session_id=os.urandom(32))), 0.0)
    assert other.next_event() == HandshakeFailed("ClientHello names another session")


def test_psk_client_retransmits_hello_in_a_dtls10_record() -> None:
    client = DtlsPskClient(PSK, APP_ID)
    client.start(0.0)
    (first,) = client.datagrams_to_send()
    client.handle_timer(0.4)
    (again,) = client.datagrams_to_send()
    assert first[1:3] == again[1:3] == b"\xfe\xff"
    assert split_records(again)[0].seq == 1


def test_legacy_unknown_session_id_is_refused() -> None:
    master = os.urandom(48)
    server = DtlsServer(LegacyServerParameters(master, os.urandom(32), 0x002F))
    client = DtlsLegacyClient(master, os.urandom(32), 0x002F)
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    server.receive_datagram(hello, 0.0)
    assert server.next_event() == HandshakeFailed("unknown session id")


def test_legacy_wrong_master_secret_fails_the_finished_check() -> None:
    session_id = os.urandom(32)
    server = DtlsServer(LegacyServerParameters(os.urandom(48), session_id, 0x009D))
    client = DtlsLegacyClient(os.urandom(48), session_id, 0x009D)
    client.start(0.0)
    for datagram in client.datagrams_to_send():
        server.receive_datagram(datagram, 0.0)
    for datagram in server.datagrams_to_send():
        client.receive_datagram(datagram, 0.0)
    # The client cannot open the server's Finished (other keys): it is dropped silently, and the
    # handshake ends at the client's handshake timeout.
    assert not client.established
    client.handle_timer(100.0)
    assert client.next_event() == HandshakeFailed("handshake timed out")


def test_legacy_version_must_match_the_suite() -> None:
    session_id = os.urandom(32)
    server = DtlsServer(LegacyServerParameters(os.urandom(48), session_id, 0x002F))
    hello = _psk_hello(session_id=session_id, suites=(0x002F,), version=0xFEFD)
    server.receive_datagram(_hello_datagram(hello, 0xFEFD), 0.0)
    assert server.next_event() == HandshakeFailed("client hello version does not match suite")


def test_legacy_handshake_reports_mode_and_version() -> None:
    master, session_id = os.urandom(48), os.urandom(32)
    server = DtlsServer(LegacyServerParameters(master, session_id, 0x0035))
    client = DtlsLegacyClient(master, session_id, 0x0035)
    client.start(0.0)
    for _ in range(2):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send():
            client.receive_datagram(datagram, 0.0)
    expected = HandshakeComplete(0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", 0x0100, "legacy")
    assert server.next_event() == expected
    assert client.next_event() == expected


def test_renegotiation_is_refused_with_a_warning_and_the_session_continues() -> None:
    client = DtlsPskClient(PSK, APP_ID)
    server = DtlsServer(PskServerParameters(PSK))
    client.start(0.0)
    for _ in range(3):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send():
            client.receive_datagram(datagram, 0.0)
    assert server.established and isinstance(server.next_event(), HandshakeComplete)
    # A new ClientHello inside the live epoch (message_seq starts again at 0), twice in a datagram.
    hello = encode_handshake(CLIENT_HELLO, 0, _psk_hello().encode())
    renegotiation = client._seal(22, 1, hello) + client._seal(22, 1, hello)
    server.receive_datagram(renegotiation, 1.0)
    (alert,) = server.datagrams_to_send()  # one no_renegotiation warning, no flight resend
    client.receive_datagram(alert, 1.0)
    assert [client.next_event() for _ in range(2)][1] == AlertReceived(1, 100)
    assert server.established and not server.closed and not client.closed
    server.receive_datagram(client.send_application_data(b"\x00still here"), 2.0)
    assert server.next_event() == ApplicationData(b"\x00still here")


def test_open_application_datagram_fast_path_matches_the_full_path() -> None:
    from trio_ocserv.protocol.dtls.client import DtlsPskClient
    from trio_ocserv.protocol.dtls.events import HandshakeComplete
    from trio_ocserv.protocol.dtls.server import DtlsServer, PskServerParameters

    psk, app_id = bytes(range(32)), bytes(32 * [7])
    client = DtlsPskClient(psk, app_id)
    server = DtlsServer(PskServerParameters(psk))
    now = 0.0
    client.start(now)
    for _ in range(10):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, now)
        for datagram in server.datagrams_to_send():
            client.receive_datagram(datagram, now)
        if client.established and server.established:
            break
    assert server.established
    assert isinstance(server.next_event(), HandshakeComplete)
    record = client.send_application_data(b"\x00hello")
    assert server.open_application_datagram(record) == b"\x00hello"
    assert server.open_application_datagram(record) == b""  # replayed: dropped
    forged = record[:-1] + bytes([record[-1] ^ 1])
    assert server.open_application_datagram(forged) == b""
    # not one app-data record of the current epoch: the caller takes the full path
    assert server.open_application_datagram(record + record) is None
    assert server.open_application_datagram(b"\x16" + record[1:]) is None
    assert server.open_application_datagram(b"short") is None
    assert server.next_event() is None


def _psk_handshake(*, prepare: bool) -> tuple[list[bytes], DtlsServer]:
    """One PSK handshake with seeded randomness: every server datagram, and the server."""
    client = DtlsPskClient(PSK, APP_ID, random_bytes=random.Random(1).randbytes)
    server = DtlsServer(PskServerParameters(PSK), random_bytes=random.Random(2).randbytes)
    sent: list[bytes] = []
    client.start(0.0)
    for _ in range(3):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, 0.0)
        flight = server.datagrams_to_send()
        if prepare:
            server.prepare()  # as the UDP channel does once the flight is sent
            if server.cipher_suite is not None and not server.established:
                assert server._epoch_keys is not None  # derived before the key exchange
        sent += flight
        for datagram in flight:
            client.receive_datagram(datagram, 0.0)
    assert client.established and isinstance(client.next_event(), HandshakeComplete)
    return sent, server


def test_prepare_changes_only_when_the_psk_keys_are_derived() -> None:
    prepared, server = _psk_handshake(prepare=True)
    lazy, _ = _psk_handshake(prepare=False)
    assert prepared == lazy  # the same flights, byte for byte
    assert server.established and server.next_event() == HandshakeComplete(
        0x00A9, "TLS_PSK_WITH_AES_256_GCM_SHA384", 0xFEFD, "psk"
    )


def test_prepare_outside_the_key_exchange_wait_does_nothing() -> None:
    server = DtlsServer(PskServerParameters(PSK))
    server.prepare()  # before any ClientHello
    assert server.datagrams_to_send() == [] and server.next_event() is None
    legacy = DtlsServer(LegacyServerParameters(os.urandom(48), APP_ID, 0x009C))
    legacy.receive_datagram(_hello_datagram(_psk_hello(suites=(0x009C,)), 0xFEFD), 0.0)
    flight = legacy.datagrams_to_send()
    legacy.prepare()  # legacy keys are installed with the first flight already
    assert len(flight) == 1 and legacy.datagrams_to_send() == []
    assert legacy.next_event() is None and not legacy.closed


def test_another_psk_identity_computes_its_own_finished_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trio_ocserv.protocol.dtls.client as client_module

    monkeypatch.setattr(client_module, "PSK_IDENTITY", b"somebody else")
    prepared, server = _psk_handshake(prepare=True)
    assert server.established and isinstance(server.next_event(), HandshakeComplete)
    lazy, _ = _psk_handshake(prepare=False)
    assert prepared == lazy
