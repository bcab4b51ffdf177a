"""Fuzz: arbitrary and mutated datagrams never raise out of the engines (errors become
drops/events).

Rules: hypothesis with modest example counts; each example builds fresh engines so it stays fast.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.dtls.client import DtlsPskClient
from trio_ocserv.protocol.dtls.endpoint import DtlsEndpoint
from trio_ocserv.protocol.dtls.events import (
    AlertReceived,
    ApplicationData,
    HandshakeComplete,
    HandshakeFailed,
)
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)

from .captures import dtls_sessions, legacy_master_secrets

PSK = bytes.fromhex("d80489bdb396cf3c60a032ad729fb320abad0c3618ffc7034fc97774f6e5254d")
EVENT_TYPES = (AlertReceived, ApplicationData, HandshakeComplete, HandshakeFailed)

CAPTURED_CLIENT_DATAGRAMS = [
    d
    for name in ("psk-default.pcap", "dtls-variants.pcap")
    for session in dtls_sessions(name)
    for d in session.from_client()[:4]
]
AES128_SHA_HELLO = dtls_sessions("dtls-variants.pcap")[0].from_client()[0]


def _servers() -> list[DtlsEndpoint]:
    return [
        DtlsServer(PskServerParameters(PSK)),
        DtlsServer(
            LegacyServerParameters(
                legacy_master_secrets()["AES128-SHA"], AES128_SHA_HELLO[60:92], 0x002F
            )
        ),
    ]


def _drain(endpoint: DtlsEndpoint) -> None:
    endpoint.datagrams_to_send()
    while (event := endpoint.next_event()) is not None:
        assert isinstance(event, EVENT_TYPES)
    endpoint.handle_timer(1000.0)


def _established_pair() -> tuple[DtlsPskClient, DtlsServer]:
    client = DtlsPskClient(PSK, os.urandom(32))
    server = DtlsServer(PskServerParameters(PSK))
    client.start(0.0)
    for _ in range(3):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send():
            client.receive_datagram(datagram, 0.0)
    assert client.established and server.established
    return client, server


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_random_datagrams_into_fresh_servers(datagrams: list[bytes]) -> None:
    for server in _servers():
        for datagram in datagrams:
            server.receive_datagram(datagram, 0.0)
        _drain(server)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(CAPTURED_CLIENT_DATAGRAMS) - 1),
    mutations=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(1, 2000),
)
def test_mutated_captured_datagrams(index: int, mutations: list[tuple[int, int]], cut: int) -> None:
    datagram = bytearray(CAPTURED_CLIENT_DATAGRAMS[index])
    for position, value in mutations:
        datagram[position % len(datagram)] = value
    mutated = bytes(datagram[:cut])
    for server in _servers():
        server.receive_datagram(AES128_SHA_HELLO, 0.0)  # some engines are mid-handshake
        server.receive_datagram(mutated, 0.5)
        _drain(server)
    client = DtlsPskClient(PSK, os.urandom(32))
    client.start(0.0)
    client.receive_datagram(mutated, 0.1)
    _drain(client)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=13, max_size=200), st.sampled_from([20, 21, 22, 23]))
def test_random_records_into_established_connections(body: bytes, content_type: int) -> None:
    client, server = _established_pair()
    # A syntactically valid header in the live epoch with a garbage body.
    header = (
        bytes((content_type,))
        + b"\xfe\xfd\x00\x01"
        + body[:6]
        + (len(body) - 13).to_bytes(2, "big")
    )
    server.receive_datagram(header + body[13:], 1.0)
    client.receive_datagram(header + body[13:], 1.0)
    for endpoint in (client, server):
        assert endpoint.established
        _drain(endpoint)
    # The connection still works afterwards.
    server.receive_datagram(client.send_application_data(b"\x00ok"), 2.0)
    assert server.next_event() == ApplicationData(b"\x00ok")
