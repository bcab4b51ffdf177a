"""Our PSK client against our server over an in-memory network that loses, reorders and duplicates.

Rules: virtual time only (the engines take `now` as an argument); every scenario must end with both
sides established and data flowing both ways; randomness is seeded so every run is the same.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable

import pytest

from trio_ocserv.protocol.dtls.client import DtlsLegacyClient, DtlsPskClient
from trio_ocserv.protocol.dtls.endpoint import DtlsEndpoint
from trio_ocserv.protocol.dtls.errors import DtlsLocalError
from trio_ocserv.protocol.dtls.events import ApplicationData, Event, HandshakeComplete
from trio_ocserv.protocol.dtls.record import split_records
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)

LATENCY = 0.01

# A policy sees (sender name, datagram) and returns the list of (delay, datagram) to deliver.
Policy = Callable[[str, bytes], list[tuple[float, bytes]]]


class FakeNetwork:
    """Two endpoints joined by a datagram pipe that applies `policy` to everything sent."""

    def __init__(
        self, client: DtlsPskClient | DtlsLegacyClient, server: DtlsServer, policy: Policy
    ) -> None:
        self.client = client
        self.server = server
        self.policy = policy
        self.now = 0.0
        self.in_flight: list[tuple[float, int, str, bytes]] = []
        self.counter = 0
        self.events: dict[str, list[Event]] = {"client": [], "server": []}

    def _collect(self) -> None:
        for name, endpoint in (("client", self.client), ("server", self.server)):
            for datagram in endpoint.datagrams_to_send():
                self.send(name, datagram)
            while (event := endpoint.next_event()) is not None:
                self.events[name].append(event)

    def send(self, sender: str, datagram: bytes) -> None:
        peer = "server" if sender == "client" else "client"
        for delay, delivered in self.policy(sender, datagram):
            self.counter += 1
            self.in_flight.append((self.now + LATENCY + delay, self.counter, peer, delivered))

    def run(self, until: Callable[[], bool], limit: float = 60.0) -> None:
        self._collect()
        while not until() and self.now < limit:
            timers = [
                t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None
            ]
            arrivals = [t for t, *_ in self.in_flight]
            if not timers and not arrivals:
                break
            self.now = max(self.now, min(timers + arrivals))
            self.in_flight.sort()
            due = [item for item in self.in_flight if item[0] <= self.now]
            self.in_flight = [item for item in self.in_flight if item[0] > self.now]
            for _, _, peer, datagram in due:
                endpoint: DtlsEndpoint = self.client if peer == "client" else self.server
                endpoint.receive_datagram(datagram, self.now)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self._collect()


def perfect(_: str, datagram: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, datagram)]


def drop_every_flight_once() -> Policy:
    seen: set[tuple[str, tuple[tuple[int, int], ...]]] = set()

    def policy(sender: str, datagram: bytes) -> list[tuple[float, bytes]]:
        # A flight is named by its record types and epochs; retransmissions share the name.
        key = (sender, tuple((r.content_type, r.epoch) for r in split_records(datagram)))
        if key not in seen and (23, 1) not in key[1]:
            seen.add(key)
            return []
        return [(0.0, datagram)]

    return policy


def reorder(seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda _, d: [(rng.uniform(0.0, 0.2), d)]


def duplicate(_: str, datagram: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, datagram), (0.05, datagram)]


def lossy(seed: int, loss: float) -> Policy:
    rng = random.Random(seed)
    return lambda _, d: [] if rng.random() < loss else [(rng.uniform(0.0, 0.05), d)]


def split_records_into_datagrams(_: str, datagram: bytes) -> list[tuple[float, bytes]]:
    # Every record alone, last first: the peer sees Finished before ClientKeyExchange.
    records = []
    pos = 0
    while pos < len(datagram):
        length = int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        records.append(datagram[pos : pos + 13 + length])
        pos += 13 + length
    return [(0.001 * (len(records) - i), r) for i, r in enumerate(records)]


def _pair(suites: tuple[int, ...] = (0x00A9, 0x00A8)) -> tuple[DtlsPskClient, DtlsServer]:
    psk = os.urandom(32)
    client = DtlsPskClient(psk, os.urandom(32), suites=suites)
    server = DtlsServer(PskServerParameters(psk))
    return client, server


SCENARIOS: dict[str, Callable[[], Policy]] = {
    "perfect": lambda: perfect,
    "drop-every-flight-once": drop_every_flight_once,
    "reorder": lambda: reorder(1),
    "reorder-2": lambda: reorder(2),
    "duplicate": lambda: duplicate,
    "records-reversed": lambda: split_records_into_datagrams,
    "lossy-20": lambda: lossy(3, 0.2),
    "lossy-20-b": lambda: lossy(4, 0.2),
}


def _legacy_pair(suite: int) -> tuple[DtlsLegacyClient, DtlsServer]:
    master, session_id = os.urandom(48), os.urandom(32)
    client = DtlsLegacyClient(master, session_id, suite)
    server = DtlsServer(LegacyServerParameters(master, session_id, suite))
    return client, server


PAIRS: dict[str, Callable[[], tuple[DtlsPskClient | DtlsLegacyClient, DtlsServer]]] = {
    "psk": _pair,
    "legacy-aes128-sha-0x0100": lambda: _legacy_pair(0x002F),
    "legacy-3des-0x0100": lambda: _legacy_pair(0x000A),
    "legacy-aes256-gcm-dtls12": lambda: _legacy_pair(0x009D),
}


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_handshake_and_data_survive_the_network(scenario: str, kind: str) -> None:
    client, server = PAIRS[kind]()
    network = FakeNetwork(client, server, SCENARIOS[scenario]())
    client.start(0.0)
    network.run(until=lambda: client.established and server.established)
    assert client.established and server.established, network.events
    assert isinstance(network.events["client"][0], HandshakeComplete)
    assert isinstance(network.events["server"][0], HandshakeComplete)
    assert client.cipher_suite is not None
    assert network.events["client"][0].cipher_suite == client.cipher_suite.code
    if kind == "psk":
        assert client.cipher_suite.code == 0x00A9

    # Data both ways through the same network: reordered and duplicated, or lost for "lossy".
    sent = [bytes((0,)) + i.to_bytes(2, "big") * 50 for i in range(20)]
    for payload in sent:
        network.send("client", client.send_application_data(payload))
        network.send("server", server.send_application_data(payload))
    network.run(until=lambda: False, limit=network.now + 5)
    for name in ("client", "server"):
        received = [e.payload for e in network.events[name] if isinstance(e, ApplicationData)]
        # Every payload at most once (the replay window catches duplicates) and none invented.
        assert len(set(received)) == len(received)
        assert set(received) <= set(sent)
        if not scenario.startswith("lossy"):
            assert sorted(received) == sent
        else:
            assert len(received) >= len(sent) // 2


@pytest.mark.parametrize("suite", [0x00A9, 0x00A8, 0xCCAB, 0xC0A5, 0xC0A4, 0x008D, 0x008C, 0x00AE])
def test_every_psk_suite_negotiates(suite: int) -> None:
    client, server = _pair((suite,))
    network = FakeNetwork(client, server, perfect)
    client.start(0.0)
    network.run(until=lambda: client.established and server.established)
    assert server.cipher_suite is not None and server.cipher_suite.code == suite
    server.receive_datagram(client.send_application_data(b"\x00ping"), network.now)
    assert server.next_event() == ApplicationData(b"\x00ping")


def test_retransmission_backs_off_and_gives_up() -> None:
    client, _ = _pair()
    client.start(0.0)
    first = client.datagrams_to_send()
    assert len(first) == 1
    deadlines = []
    while (deadline := client.get_timer()) is not None:
        deadlines.append(deadline)
        client.handle_timer(deadline)
        if not client.closed:
            assert len(client.datagrams_to_send()) == 1  # the ClientHello again
    gaps = [b - a for a, b in itertools.pairwise(deadlines)]
    assert gaps[:3] == pytest.approx([0.8, 1.6, 3.2])
    assert client.closed
    assert deadlines[-1] <= 20.0 + 1e-9


def test_duplicate_client_hello_resends_server_flight() -> None:
    client, server = _pair()
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    server.receive_datagram(hello, 0.0)
    first_flight = server.datagrams_to_send()
    client.handle_timer(0.4)  # the client times out and retransmits its ClientHello
    (retransmitted,) = client.datagrams_to_send()
    assert retransmitted != hello  # new record sequence number
    server.receive_datagram(retransmitted, 0.5)
    again = server.datagrams_to_send()
    assert [r.body for d in again for r in split_records(d)] == [
        r.body for d in first_flight for r in split_records(d)
    ]
    # An exact duplicate (same record sequence number) is a replay: ignored.
    server.receive_datagram(hello, 0.6)
    assert server.datagrams_to_send() == []


def test_send_before_established_is_a_local_error() -> None:
    client, _ = _pair()
    with pytest.raises(DtlsLocalError):
        client.send_application_data(b"x")
    client.start(0.0)
    with pytest.raises(DtlsLocalError):
        client.start(0.0)


def test_close_notify_reaches_the_peer() -> None:
    client, server = _pair()
    network = FakeNetwork(client, server, perfect)
    client.start(0.0)
    network.run(until=lambda: client.established and server.established)
    server.receive_datagram(client.close(), network.now)
    event = server.next_event()
    assert event is not None and getattr(event, "closes_connection", False)
    assert server.closed and client.closed


def _handshake_keeping_flights(
    client: DtlsPskClient | DtlsLegacyClient, server: DtlsServer
) -> tuple[list[bytes], list[bytes]]:
    """Run a clean handshake; return every datagram each side sent."""
    client_sent: list[bytes] = []
    server_sent: list[bytes] = []
    client.start(0.0)
    now = 0.0
    while not (client.established and server.established):
        now += 0.01
        for datagram in client.datagrams_to_send():
            client_sent.append(datagram)
            server.receive_datagram(datagram, now)
        for datagram in server.datagrams_to_send():
            server_sent.append(datagram)
            client.receive_datagram(datagram, now)
    client.datagrams_to_send()
    return client_sent, server_sent


def _replay(datagram: bytes, offset: int) -> bytes:
    """The same records, the clear (epoch 0) ones with fresh sequence numbers as a retransmission
    would carry (encrypted ones cannot be renumbered here: the replay window drops them)."""
    out = b""
    for record in split_records(datagram):
        header = bytes((record.content_type,)) + record.version.to_bytes(2, "big")
        epoch_seq = record.epoch_seq + (offset if record.epoch == 0 else 0)
        out += header + epoch_seq.to_bytes(8, "big") + len(record.body).to_bytes(2, "big")
        out += record.body
    return out


@pytest.mark.parametrize("kind", PAIRS)
def test_retransmitted_final_flights_do_not_ping_pong(kind: str) -> None:
    """Only the side that sent the final flight answers a retransmission, and only once."""
    client, server = PAIRS[kind]()
    client_sent, server_sent = _handshake_keeping_flights(client, server)
    if kind == "psk":
        # The client repeats its CKE/CCS/Finished: the server resends CCS + Finished...
        server.receive_datagram(_replay(client_sent[-1], 100), 10.0)
        answer = server.datagrams_to_send()
        assert [r.content_type for d in answer for r in split_records(d)] == [20, 22]
        # ...and the client, already done, stays quiet when that answer arrives.
        client.receive_datagram(answer[0], 10.1)
        assert client.datagrams_to_send() == []
    else:
        # The server repeats SH/CCS/Finished: the client resends its CCS + Finished...
        client.receive_datagram(_replay(server_sent[-1], 100), 10.0)
        answer = client.datagrams_to_send()
        assert [r.content_type for d in answer for r in split_records(d)] == [20, 22]
        # ...and the server, already done, stays quiet.
        server.receive_datagram(answer[0], 10.1)
        assert server.datagrams_to_send() == []
    assert client.established and server.established


def test_clear_alerts_are_ignored_once_keys_exist() -> None:
    """A forged epoch-0 fatal alert must not tear down an established session."""
    client, server = _pair()
    _handshake_keeping_flights(client, server)
    forged = bytes.fromhex("15fefd00000000000000630002") + bytes((2, 40))
    server.receive_datagram(forged, 5.0)
    client.receive_datagram(forged, 5.0)
    assert not server.closed and not client.closed
    assert isinstance(server.next_event(), HandshakeComplete)  # and nothing after it
    assert server.next_event() is None
