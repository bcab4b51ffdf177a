"""Client sides of both AnyConnect DTLS handshakes, for our test client and load generator:
`DtlsPskClient` (PSK-NEGOTIATE) and `DtlsLegacyClient` (Cisco resumption, DTLS 1.2 or 0x0100).

PSK state machine:
    start() --> send CH (session_id = App-ID) --> WAIT_SERVER_HELLO
    --SH--> WAIT_SERVER_HELLO_DONE --SHD--> send CKE("psk"), CCS, Finished --> WAIT_FINISHED
    --server Finished ok--> ESTABLISHED

Rules: same engine rules as the server (`endpoint.py`); the ClientHello looks like openconnect
9.01's (record version 0xFEFF, client_version 0xFEFD, App-ID as session_id, empty cookie, null
compression, empty renegotiation_info); a ServerHello echoing our session_id (a resumption) is
refused.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable

from .endpoint import (
    ALERT_DECRYPT_ERROR,
    ALERT_HANDSHAKE_FAILURE,
    ALERT_ILLEGAL_PARAMETER,
    ALERT_PROTOCOL_VERSION,
    ALERT_UNEXPECTED_MESSAGE,
    DEFAULT_MTU,
    HANDSHAKE_TIMEOUT,
    DtlsEndpoint,
    HandshakeAbort,
)
from .errors import DtlsLocalError
from .events import HandshakeComplete
from .handshake_messages import (
    CLIENT_HELLO,
    CLIENT_KEY_EXCHANGE,
    EXT_RECORD_SIZE_LIMIT,
    EXT_RENEGOTIATION_INFO,
    EXT_SESSION_TICKET,
    FINISHED,
    PSK_IDENTITY,
    SERVER_HELLO,
    SERVER_HELLO_DONE,
    ClientHello,
    HandshakeMessage,
    ServerHello,
    encode_handshake,
    encode_psk_client_key_exchange,
)
from .keys import derive_key_block, master_secret_from_psk
from .prf import finished_verify_data
from .record import CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, make_protection
from .suites import (
    DEFAULT_PSK_PREFERENCE,
    DTLS1_0,
    DTLS1_2,
    SUITES_BY_CODE,
    CipherSuite,
    version_for_suite,
)

EXT_SIGNATURE_ALGORITHMS = 13
#: What openconnect 9.01 (GnuTLS 3.7) offers; only sent so our legacy DTLS 1.2 ClientHello looks
#: exactly like openconnect's (nothing is signed in a resumption).
OPENCONNECT_SIGNATURE_ALGORITHMS = bytes.fromhex(
    "0020040108090804040308070501080a0805050308080601080b0806060302010203"
)


class _State(enum.Enum):
    IDLE = enum.auto()
    WAIT_SERVER_HELLO = enum.auto()
    WAIT_SERVER_HELLO_DONE = enum.auto()
    WAIT_FINISHED = enum.auto()
    ESTABLISHED = enum.auto()


class DtlsPskClient(DtlsEndpoint):
    """One client-side PSK-NEGOTIATE DTLS connection (sans-IO)."""

    def __init__(
        self,
        psk: bytes,
        app_id: bytes,
        *,
        suites: tuple[int, ...] = DEFAULT_PSK_PREFERENCE,
        random_bytes: Callable[[int], bytes] = os.urandom,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(random_bytes=random_bytes, mtu=mtu, handshake_timeout=handshake_timeout)
        self._psk = psk
        self._app_id = app_id
        self._offered = suites
        self._state = _State.IDLE
        self._suite: CipherSuite | None = None
        self._client_random = b""
        self._server_random = b""
        self._master_secret = b""

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._suite

    def start(self, now: float) -> None:
        """Queue the ClientHello flight."""
        if self._state is not _State.IDLE:
            raise DtlsLocalError("handshake already started")
        self._start_handshake_clock(now)
        self._client_random = self._random_bytes(32)
        hello = ClientHello(
            DTLS1_2,
            self._client_random,
            self._app_id,
            b"",
            self._offered,
            b"\x00",
            ((EXT_RENEGOTIATION_INFO, b"\x00"), (EXT_RECORD_SIZE_LIMIT, b"\x40\x00")),
        )
        message = encode_handshake(CLIENT_HELLO, self._next_handshake_seq(), hello.encode())
        self._transcript += message
        self._state = _State.WAIT_SERVER_HELLO
        # openconnect's GnuTLS sends its ClientHello in a DTLS 1.0 record.
        self._send_flight(
            [(CONTENT_HANDSHAKE, 0, message)], now, expects_reply=True, record_version=DTLS1_0
        )

    def _on_handshake_message(self, message: HandshakeMessage, epoch: int, now: float) -> None:
        state = self._state
        if state is _State.WAIT_SERVER_HELLO and message.msg_type == SERVER_HELLO:
            self._on_server_hello(message)
        elif state is _State.WAIT_SERVER_HELLO_DONE and message.msg_type == SERVER_HELLO_DONE:
            self._on_server_hello_done(message, now)
        elif state is _State.WAIT_FINISHED and message.msg_type == FINISHED and epoch > 0:
            self._on_server_finished(message, now)
        else:
            raise HandshakeAbort(
                ALERT_UNEXPECTED_MESSAGE, f"unexpected handshake message {message.msg_type}"
            )

    def _on_server_hello(self, message: HandshakeMessage) -> None:
        hello = ServerHello.parse(message.body)
        if hello.server_version != DTLS1_2:
            raise HandshakeAbort(ALERT_PROTOCOL_VERSION, "server did not choose DTLS 1.2")
        suite = SUITES_BY_CODE.get(hello.cipher_suite)
        if suite is None or not suite.psk or hello.cipher_suite not in self._offered:
            raise HandshakeAbort(ALERT_ILLEGAL_PARAMETER, "server chose a suite we did not offer")
        if hello.session_id == self._app_id or hello.compression_method != 0:
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "server tried to resume a session")
        self._flight_acknowledged()
        self._suite = suite
        self._server_random = hello.random
        self._transcript += message.encode()
        self._state = _State.WAIT_SERVER_HELLO_DONE

    def _on_server_hello_done(self, message: HandshakeMessage, now: float) -> None:
        suite = self._suite
        assert suite is not None
        self._transcript += message.encode()
        cke = encode_handshake(
            CLIENT_KEY_EXCHANGE,
            self._next_handshake_seq(),
            encode_psk_client_key_exchange(PSK_IDENTITY),
        )
        self._transcript += cke
        self._master_secret = master_secret_from_psk(
            suite, self._psk, self._client_random, self._server_random
        )
        block = derive_key_block(
            suite, self._master_secret, self._client_random, self._server_random
        )
        self._install_write_epoch(
            1,
            make_protection(
                suite, block.client_key, block.client_iv, block.client_mac_key, self._random_bytes
            ),
        )
        finished = encode_handshake(
            FINISHED,
            self._next_handshake_seq(),
            finished_verify_data(
                suite.prf_hash, self._master_secret, b"client finished", bytes(self._transcript)
            ),
        )
        self._transcript += finished
        self._state = _State.WAIT_FINISHED
        self._send_flight(
            [
                (CONTENT_HANDSHAKE, 0, cke),
                (CONTENT_CHANGE_CIPHER_SPEC, 0, b"\x01"),
                (CONTENT_HANDSHAKE, 1, finished),
            ],
            now,
            expects_reply=True,
        )
        self._install_read_epoch(
            1,
            make_protection(
                suite, block.server_key, block.server_iv, block.server_mac_key, self._random_bytes
            ),
            now,
        )

    def _on_server_finished(self, message: HandshakeMessage, now: float) -> None:
        suite = self._suite
        assert suite is not None
        expected = finished_verify_data(
            suite.prf_hash, self._master_secret, b"server finished", bytes(self._transcript)
        )
        if not hmac.compare_digest(message.body, expected):
            raise HandshakeAbort(ALERT_DECRYPT_ERROR, "server Finished does not verify")
        self._flight_acknowledged()
        self._state = _State.ESTABLISHED
        self._become_established(1, received_final_flight=True)
        self._events.append(HandshakeComplete(suite.code, suite.name, self._version, "psk"))
        self._deliver_early_data()


class _LegacyState(enum.Enum):
    IDLE = enum.auto()
    WAIT_SERVER_HELLO = enum.auto()
    WAIT_FINISHED = enum.auto()
    ESTABLISHED = enum.auto()


class DtlsLegacyClient(DtlsEndpoint):
    """Client side of the legacy Cisco resumption (protocol.md §7.4), DTLS 1.2 or 0x0100.

    State machine:
        start() --> send CH (session_id = X-DTLS-Session-ID, one suite) --> WAIT_SERVER_HELLO
        --SH echoing the session--> WAIT_FINISHED
        --server Finished ok--> send CCS, Finished (final flight) --> ESTABLISHED
    """

    def __init__(
        self,
        master_secret: bytes,
        session_id: bytes,
        suite: int,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(random_bytes=random_bytes, mtu=mtu, handshake_timeout=handshake_timeout)
        self._suite = SUITES_BY_CODE[suite]
        self._master_secret = master_secret
        self._session_id = session_id
        self._version = version_for_suite(self._suite)
        self._state = _LegacyState.IDLE
        self._client_random = b""
        self._server_random = b""

    @property
    def cipher_suite(self) -> CipherSuite:
        return self._suite

    def start(self, now: float) -> None:
        if self._state is not _LegacyState.IDLE:
            raise DtlsLocalError("handshake already started")
        self._start_handshake_clock(now)
        self._client_random = self._random_bytes(32)
        extensions: list[tuple[int, bytes]] = []
        if self._version == DTLS1_2:
            extensions.append((EXT_SIGNATURE_ALGORITHMS, OPENCONNECT_SIGNATURE_ALGORITHMS))
        extensions += [
            (EXT_SESSION_TICKET, b""),
            (EXT_RENEGOTIATION_INFO, b"\x00"),
            (EXT_RECORD_SIZE_LIMIT, b"\x40\x00"),
        ]
        hello = ClientHello(
            self._version,
            self._client_random,
            self._session_id,
            b"",
            (self._suite.code,),
            b"\x00",
            tuple(extensions),
        )
        message = HandshakeMessage(CLIENT_HELLO, self._next_handshake_seq(), hello.encode())
        self._add_to_transcript(message)
        self._state = _LegacyState.WAIT_SERVER_HELLO
        self._send_flight([(CONTENT_HANDSHAKE, 0, message.encode())], now, expects_reply=True)

    def _on_handshake_message(self, message: HandshakeMessage, epoch: int, now: float) -> None:
        if self._state is _LegacyState.WAIT_SERVER_HELLO and message.msg_type == SERVER_HELLO:
            self._on_server_hello(message, now)
        elif (
            self._state is _LegacyState.WAIT_FINISHED and message.msg_type == FINISHED and epoch > 0
        ):
            self._on_server_finished(message, now)
        else:
            raise HandshakeAbort(
                ALERT_UNEXPECTED_MESSAGE, f"unexpected handshake message {message.msg_type}"
            )

    def _on_server_hello(self, message: HandshakeMessage, now: float) -> None:
        hello = ServerHello.parse(message.body)
        if hello.server_version != self._version:
            raise HandshakeAbort(ALERT_PROTOCOL_VERSION, "server answered another version")
        if hello.session_id != self._session_id or hello.cipher_suite != self._suite.code:
            # openconnect: "DTLS session resume failed; possible MITM attack. Disabling DTLS."
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "server did not resume the session")
        self._flight_acknowledged()
        self._server_random = hello.random
        self._add_to_transcript(message)
        suite = self._suite
        block = derive_key_block(suite, self._master_secret, self._client_random, hello.random)
        self._install_write_epoch(
            1,
            make_protection(
                suite, block.client_key, block.client_iv, block.client_mac_key, self._random_bytes
            ),
        )
        self._state = _LegacyState.WAIT_FINISHED
        self._install_read_epoch(
            1,
            make_protection(
                suite, block.server_key, block.server_iv, block.server_mac_key, self._random_bytes
            ),
            now,
        )

    def _verify_data(self, label: bytes) -> bytes:
        return finished_verify_data(
            self._suite.prf_hash, self._master_secret, label, bytes(self._transcript)
        )

    def _on_server_finished(self, message: HandshakeMessage, now: float) -> None:
        if not hmac.compare_digest(message.body, self._verify_data(b"server finished")):
            raise HandshakeAbort(ALERT_DECRYPT_ERROR, "server Finished does not verify")
        self._add_to_transcript(message)
        ccs = self._change_cipher_spec_body()
        finished = HandshakeMessage(
            FINISHED, self._next_handshake_seq(), self._verify_data(b"client finished")
        )
        self._state = _LegacyState.ESTABLISHED
        # Our CCS + Finished is the last flight: it is resent only when the server repeats its own.
        self._send_flight(
            [(CONTENT_CHANGE_CIPHER_SPEC, 0, ccs), (CONTENT_HANDSHAKE, 1, finished.encode())],
            now,
            expects_reply=False,
        )
        self._become_established(1, received_final_flight=False)
        self._events.append(
            HandshakeComplete(self._suite.code, self._suite.name, self._version, "legacy")
        )
        self._deliver_early_data()
