"""`peek_client_hello_session_id`: finds the App-ID in real ClientHellos, never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.protocol.dtls.handshake_messages import (
    CLIENT_HELLO,
    EXT_OPENCONNECT_APP_ID,
    ClientHello,
    encode_handshake,
)
from trio_ocserv.protocol.dtls.hello_peek import is_client_hello, peek_client_hello_session_id
from trio_ocserv.protocol.dtls.record import encode_plain_record

from .captures import dtls_sessions

APP_ID = bytes.fromhex("c97ac42e3a6b21cb0b5bdc19ed1739014851610f8cccef14231887eda05375ae")


def _captured_hellos() -> list[bytes]:
    return [
        s.from_client()[0]
        for n in ("psk-default.pcap", "dtls-variants.pcap")
        for s in dtls_sessions(n)
    ]


def _hello_datagram(hello: ClientHello) -> bytes:
    return encode_plain_record(22, 0xFEFF, 0, encode_handshake(CLIENT_HELLO, 0, hello.encode()))


def _hello(
    extensions: tuple[tuple[int, bytes], ...] = (), random: bytes = b"\x11" * 32
) -> ClientHello:
    return ClientHello(0xFEFD, random, b"\x22" * 32, b"", (0x00A9,), b"\x00", extensions)


def test_psk_default_hello_names_the_app_id() -> None:
    (session,) = dtls_sessions("psk-default.pcap")
    assert peek_client_hello_session_id(session.from_client()[0]) == APP_ID


def test_every_captured_hello_yields_its_session_id() -> None:
    for datagram in _captured_hellos():
        assert is_client_hello(datagram)
        session_id = peek_client_hello_session_id(datagram)
        assert session_id is not None and len(session_id) == 32
        assert session_id == datagram[60:92]


def test_app_id_extension_is_preferred_when_present() -> None:
    datagram = _hello_datagram(_hello(((EXT_OPENCONNECT_APP_ID, b"\x04abcd"),)))
    assert peek_client_hello_session_id(datagram) == b"abcd"
    assert peek_client_hello_session_id(datagram, check_app_id_extension=False) == b"\x22" * 32


def test_all_zero_random_is_dropped() -> None:
    assert peek_client_hello_session_id(_hello_datagram(_hello(random=bytes(32)))) is None


def test_non_hello_records_give_none() -> None:
    (session,) = dtls_sessions("psk-default.pcap")
    for datagram in session.from_client()[1:]:
        assert peek_client_hello_session_id(datagram) is None
    assert peek_client_hello_session_id(b"") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = peek_client_hello_session_id(data)
    assert result is None or 0 < len(result) <= 255


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, 6),
    position=st.integers(0, 400),
    value=st.integers(0, 255),
    cut=st.integers(0, 400),
)
def test_mutated_captured_hellos_never_raise(
    index: int, position: int, value: int, cut: int
) -> None:
    hellos = _captured_hellos()
    datagram = bytearray(hellos[index % len(hellos)])
    datagram[position % len(datagram)] = value
    result = peek_client_hello_session_id(bytes(datagram[: max(cut, 1)]))
    assert result is None or isinstance(result, bytes)
