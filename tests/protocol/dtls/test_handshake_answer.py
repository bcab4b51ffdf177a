"""The receive thread's handshake answers (`_dtls_handshake_answer.c`), held against the engine.

Rules: whatever the C code answers, `DtlsServer` with the same server random and session id
answers with exactly the same bytes; what the C code declines, the engine answers alone (so a
decline is always safe). Captured openconnect traffic gets ocserv's own records back. Malformed
datagrams from anyone never crash it and never make it answer something the engine would not.
"""

from __future__ import annotations

import os
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import require_fastpath
from trio_ocserv.protocol.dtls.client import DtlsLegacyClient, DtlsPskClient
from trio_ocserv.protocol.dtls.events import HandshakeComplete
from trio_ocserv.protocol.dtls.handshake_messages import ClientHello, parse_fragments
from trio_ocserv.protocol.dtls.hello_peek import peek_client_hello_session_id
from trio_ocserv.protocol.dtls.record import split_records
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)
from trio_ocserv.protocol.dtls.suites import DEFAULT_PSK_PREFERENCE

from .captures import dtls_sessions, legacy_master_secrets
from .test_server_capture import (
    PSK_DEFAULT,
    _server_handshake_records,
    _server_random_and_session_id,
    scripted_random,
)

PSK = bytes(range(32))
APP_ID = bytes(32 * [0x5A])
RANDOMS = bytes(range(100, 164))
PREFERENCE = struct.pack(f"!{len(DEFAULT_PSK_PREFERENCE)}H", *DEFAULT_PSK_PREFERENCE)


@pytest.fixture
def fp() -> ModuleType:
    return require_fastpath()


def engine_for(psk: bytes = PSK, randoms: bytes = RANDOMS) -> DtlsServer:
    """The Python engine as the DTLS channel builds it for a thread-answered handshake."""
    return DtlsServer(
        PskServerParameters(psk), random_bytes=scripted_random([randoms[:32], randoms[32:]])
    )


def client_hello(suites: tuple[int, ...] = DEFAULT_PSK_PREFERENCE, psk: bytes = PSK) -> tuple[
    DtlsPskClient, bytes
]:
    client = DtlsPskClient(psk, APP_ID, suites=suites)
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    return client, hello


def test_captured_openconnect_handshake_gets_ocserv_flights(fp: ModuleType) -> None:
    (session,) = dtls_sessions("psk-default.pcap")
    server_random, session_id = _server_random_and_session_id(
        _server_handshake_records(session)[0]
    )
    answer = fp.psk_handshake_answer(PSK_DEFAULT, server_random + session_id, PREFERENCE)
    theirs = session.from_server()
    hello, key_exchange = session.from_client()[:2]
    assert fp.hello_app_id(hello) == peek_client_hello_session_id(hello)
    # ocserv sent one record per datagram, we send each flight in one datagram: same records.
    assert answer.answer_hello(hello) == theirs[0] + theirs[1]
    assert answer.answer_key_exchange(key_exchange) == theirs[2] + theirs[3]


@pytest.mark.parametrize(
    ("suites", "chosen"),
    [(DEFAULT_PSK_PREFERENCE, "TLS_PSK_WITH_AES_256_GCM_SHA384"),
     ((0x00A8, 0xCCAB), "TLS_PSK_WITH_AES_128_GCM_SHA256")],
)  # fmt: skip
def test_our_client_completes_against_the_thread_and_the_engine_agrees(
    fp: ModuleType, suites: tuple[int, ...], chosen: str
) -> None:
    client, hello = client_hello(suites)
    answer = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE)
    engine = engine_for()
    flight = answer.answer_hello(hello)
    engine.receive_datagram(hello, 0.0)
    assert flight is not None and engine.datagrams_to_send() == [flight]
    client.receive_datagram(flight, 0.1)
    (key_exchange,) = client.datagrams_to_send()
    final = answer.answer_key_exchange(key_exchange)
    engine.receive_datagram(key_exchange, 0.2)
    assert final is not None and engine.datagrams_to_send() == [final]
    client.receive_datagram(final, 0.3)
    assert client.established and engine.established
    event = engine.next_event()
    assert isinstance(event, HandshakeComplete) and event.suite_name == chosen
    # One handshake per expectation: a replayed hello or key exchange gets nothing more.
    assert answer.answer_hello(hello) is None
    assert answer.answer_key_exchange(key_exchange) is None


def _patched(datagram: bytes, offset: int, value: bytes) -> bytes:
    return datagram[:offset] + value + datagram[offset + len(value) :]


_BODY = 13 + 12  # record header + handshake header


@pytest.mark.parametrize(
    "case",
    ["chacha-only", "dtls-1.0-client", "no-null-compression", "fragment", "message-seq-1",
     "two-records", "trailing-byte"],
)  # fmt: skip
def test_hellos_the_thread_leaves_to_the_engine(fp: ModuleType, case: str) -> None:
    _, hello = client_hello((0xCCAB,) if case == "chacha-only" else DEFAULT_PSK_PREFERENCE)
    if case == "dtls-1.0-client":
        hello = _patched(hello, _BODY, b"\xfe\xff")
    elif case == "no-null-compression":
        # openconnect's hello: ... suites, 0x01 0x00 (one method: null) -> method 0x01 (none null)
        body = hello[_BODY:]
        at = 2 + 32 + 1 + body[34] + 1 + body[35 + body[34]]
        at += 2 + int.from_bytes(body[at : at + 2], "big")
        assert body[at : at + 2] == b"\x01\x00"
        hello = _patched(hello, _BODY + at + 1, b"\x01")
    elif case == "fragment":
        hello = _patched(hello, 13 + 9, (len(hello) - _BODY - 1).to_bytes(3, "big"))
    elif case == "message-seq-1":
        hello = _patched(hello, 13 + 4, b"\x00\x01")
    elif case == "two-records":
        hello += hello
    elif case == "trailing-byte":
        hello = hello[:11] + (len(hello) - 12).to_bytes(2, "big") + hello[13:] + b"\x00"
    answer = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE)
    assert answer.answer_hello(hello) is None


def test_key_exchange_under_another_psk_is_not_answered(fp: ModuleType) -> None:
    client, hello = client_hello(psk=bytes(32))
    answer = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE)
    engine = engine_for()
    flight = answer.answer_hello(hello)
    assert flight is not None
    client.receive_datagram(flight, 0.1)
    (key_exchange,) = client.datagrams_to_send()
    assert answer.answer_key_exchange(key_exchange) is None
    # The engine, answering alone, does not accept it either (the Finished does not decrypt).
    engine.receive_datagram(hello, 0.0)
    engine.datagrams_to_send()
    engine.receive_datagram(key_exchange, 0.2)
    assert engine.datagrams_to_send() == [] and not engine.established


def test_parameters_out_of_range_are_refused(fp: ModuleType) -> None:
    with pytest.raises(ValueError):
        fp.psk_handshake_answer(PSK, RANDOMS[:63], PREFERENCE)
    with pytest.raises(ValueError):
        fp.psk_handshake_answer(b"", RANDOMS, PREFERENCE)
    with pytest.raises(ValueError):
        fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE + b"\x00")
    with pytest.raises(ValueError):
        fp.legacy_handshake_answer(bytes(47), APP_ID, 0x009C, RANDOMS[:32])
    with pytest.raises(ValueError):
        fp.legacy_handshake_answer(bytes(48), bytes(33), 0x009C, RANDOMS[:32])


_mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255)),
    min_size=1,
    max_size=4,
)


def _mutate(datagram: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(datagram)
    for at, value in edits:
        data[at % len(data)] = value
    return bytes(data[: max(1, len(data) - cut)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_mutations, cut=st.integers(min_value=0, max_value=3))
def test_mutated_hellos_are_answered_as_the_engine_would_or_not_at_all(
    edits: list[tuple[int, int]], cut: int
) -> None:
    fp = require_fastpath()
    _, hello = client_hello()
    hello = _mutate(hello, edits, cut)
    named = fp.hello_app_id(hello)
    if named is not None:
        assert named == peek_client_hello_session_id(hello)
    flight = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE).answer_hello(hello)
    if flight is not None:
        engine = engine_for()
        engine.receive_datagram(hello, 0.0)
        assert engine.datagrams_to_send() == [flight]


def answered_hello_and_key_exchange() -> tuple[Any, bytes, bytes]:
    """(the thread's answer object, our client's hello, its key exchange flight after the
    thread's ServerHello)."""
    fp = require_fastpath()
    client, hello = client_hello()
    answer = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE)
    flight = answer.answer_hello(hello)
    assert flight is not None
    client.receive_datagram(flight, 0.1)
    (key_exchange,) = client.datagrams_to_send()
    return answer, hello, key_exchange


def engine_answer(hello: bytes, key_exchange: bytes) -> tuple[list[bytes], bool]:
    """What the engine (same randoms) sends for `key_exchange`, and whether it is then up."""
    engine = engine_for()
    engine.receive_datagram(hello, 0.0)
    engine.datagrams_to_send()
    engine.receive_datagram(key_exchange, 0.2)
    return engine.datagrams_to_send(), engine.established


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_mutations, cut=st.integers(min_value=0, max_value=3))
def test_mutated_key_exchanges_are_answered_as_the_engine_would_or_not_at_all(
    edits: list[tuple[int, int]], cut: int
) -> None:
    """Fuzz: random byte edits almost always break the Finished, and then nothing is answered
    (never a crash); the targeted property below covers the fields that may vary."""
    answer, hello, key_exchange = answered_hello_and_key_exchange()
    key_exchange = _mutate(key_exchange, edits, cut)
    final = answer.answer_key_exchange(key_exchange)
    if final is not None:
        assert engine_answer(hello, key_exchange) == ([final], True)


_KE_RECORDS = (0, 13 + 17, 13 + 17 + 13 + 1)  # offsets of the key exchange flight's records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    numbers=st.tuples(*[st.integers(min_value=0, max_value=80)] * 2),
    versions=st.tuples(*[st.sampled_from([0xFEFD, 0xFEFF, 0x0100, 0xFEFC])] * 2),
)
def test_key_exchange_record_numbers_and_versions_agree_with_the_engine(
    numbers: tuple[int, int], versions: tuple[int, int]
) -> None:
    """The fields of the key exchange flight that may vary without breaking its Finished (whose
    tag covers its own header): the record numbers and versions of the two clear records.
    Whatever the thread answers, the engine answers alike."""
    answer, hello, key_exchange = answered_hello_and_key_exchange()
    for at, number, version in zip(_KE_RECORDS[:2], numbers, versions, strict=True):
        key_exchange = _patched(key_exchange, at + 5, number.to_bytes(6, "big"))
        key_exchange = _patched(key_exchange, at + 1, version.to_bytes(2, "big"))
    final = answer.answer_key_exchange(key_exchange)
    if final is not None:
        assert engine_answer(hello, key_exchange) == ([final], True)


def test_key_exchange_numbering_cases_both_ways() -> None:
    """The property above sees both outcomes: in order is answered, a reused number is not."""
    answer, _, key_exchange = answered_hello_and_key_exchange()
    reused = _patched(key_exchange, _KE_RECORDS[1] + 5, key_exchange[5:11])  # CCS = KE's number
    assert answer.answer_key_exchange(reused) is None
    assert answer.answer_key_exchange(key_exchange) is not None


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(min_size=0, max_size=300))
def test_junk_is_never_answered_unlike_the_engine(junk: bytes) -> None:
    fp = require_fastpath()
    answer = fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE)
    assert answer.answer_key_exchange(junk) is None  # before any hello: never
    for datagram in (junk, b"\x16\xfe\xfd" + bytes(8) + len(junk).to_bytes(2, "big") + junk):
        fp.hello_app_id(datagram)
        flight = answer.answer_hello(datagram)
        if flight is not None:
            engine = engine_for()
            engine.receive_datagram(datagram, 0.0)
            assert engine.datagrams_to_send() == [flight]
            return


def test_many_answers_keep_memory_flat(fp: ModuleType) -> None:
    """Each answer allocates a transcript and frees (and wipes) it: 20,000 handshakes' worth."""
    _, hello = client_hello()

    def rss_kib() -> int:
        with open(f"/proc/{os.getpid()}/status") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
        return int(line.split()[1])

    for _ in range(2000):
        fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE).answer_hello(hello)
    before = rss_kib()
    for _ in range(20000):
        fp.psk_handshake_answer(PSK, RANDOMS, PREFERENCE).answer_hello(hello)
    assert rss_kib() - before < 2048


# -- legacy resumption: one flight (ServerHello, CCS, Finished), answered by the hello alone --


@pytest.mark.parametrize(("index", "name"), [(2, "OC-DTLS1_2-AES128-GCM"),
                                             (3, "OC-DTLS1_2-AES256-GCM")])  # fmt: skip
def test_captured_legacy_gcm_hellos_get_ocservs_flight(
    fp: ModuleType, index: int, name: str
) -> None:
    session = dtls_sessions("dtls-variants.pcap")[index]
    hello = session.from_client()[0]
    parsed = ClientHello.parse(parse_fragments(split_records(hello)[0].body)[0].data)
    theirs = _server_handshake_records(session)
    server_random, _ = _server_random_and_session_id(theirs[0])
    suite = parsed.cipher_suites[0]
    answer = fp.legacy_handshake_answer(
        legacy_master_secrets()[name], parsed.session_id, suite, server_random
    )
    flight = answer.answer_hello(hello)
    assert flight is not None and split_records(flight) == theirs[:3]
    assert answer.answer_hello(hello) is None  # one flight per expectation
    engine = DtlsServer(
        LegacyServerParameters(legacy_master_secrets()[name], parsed.session_id, suite),
        random_bytes=scripted_random([server_random]),
    )
    engine.receive_datagram(hello, 0.0)
    assert engine.datagrams_to_send() == [flight]


@pytest.mark.parametrize("suite", [0x009C, 0x009D])
def test_our_legacy_client_completes_against_the_thread(fp: ModuleType, suite: int) -> None:
    master = bytes(range(48))
    client = DtlsLegacyClient(master, APP_ID, suite)
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    assert fp.hello_app_id(hello) == APP_ID
    answer = fp.legacy_handshake_answer(master, APP_ID, suite, RANDOMS[:32])
    flight = answer.answer_hello(hello)
    engine = DtlsServer(
        LegacyServerParameters(master, APP_ID, suite), random_bytes=scripted_random([RANDOMS[:32]])
    )
    engine.receive_datagram(hello, 0.0)
    assert flight is not None and engine.datagrams_to_send() == [flight]
    client.receive_datagram(flight, 0.1)
    assert client.established
    (last,) = client.datagrams_to_send()
    assert answer.answer_key_exchange(last) is None  # the engine checks the client's Finished
    engine.receive_datagram(last, 0.2)
    assert engine.established


@pytest.mark.parametrize("case", ["other-session", "suite-not-offered", "cbc-suite", "dtls-1.0"])
def test_legacy_hellos_the_thread_leaves_to_the_engine(fp: ModuleType, case: str) -> None:
    master = bytes(range(48))
    suite = 0x002F if case == "cbc-suite" else 0x009C
    client = DtlsLegacyClient(master, APP_ID, suite)
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    expected_id, agreed = APP_ID, suite
    if case == "other-session":
        expected_id = bytes(32)
    elif case == "suite-not-offered":
        agreed = 0x009D
    elif case == "dtls-1.0":
        hello = _patched(hello, _BODY, b"\xfe\xff")
    answer = fp.legacy_handshake_answer(master, expected_id, agreed, RANDOMS[:32])
    assert answer.answer_hello(hello) is None
