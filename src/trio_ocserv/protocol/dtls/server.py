"""`DtlsServer`: the server side of the two AnyConnect DTLS handshakes.

State machine (one handshake per object; a client re-handshake gets a fresh object):

PSK-NEGOTIATE (protocol.md §7.3), a plain TLS 1.2 PSK full handshake:
    WAIT_CLIENT_HELLO --CH--> send SH, SHD --> WAIT_CLIENT_KEY_EXCHANGE
    --CKE--> derive keys --> WAIT_FINISHED
    --client Finished ok--> send CCS, Finished --> ESTABLISHED
Legacy Cisco resumption (§7.4), an abbreviated handshake on a master secret the client invented:
    WAIT_CLIENT_HELLO --CH(session_id, suite)--> send SH, CCS, Finished --> WAIT_FINISHED
    --client CCS + Finished ok--> ESTABLISHED

Rules:
* The PSK is given (the control channel's exporter value); the client's psk_identity is ignored.
* The PSK ServerHello carries a fresh random session_id, never the client's (that would mean
  "resumed"); the legacy ServerHello must echo it.
* DTLS1_BAD_VER (0x0100) differs from DTLS 1.2 in exactly the ways of §7.4.4: TLS 1.0 PRF, a 3-byte
  CCS that consumes a handshake message_seq, and a Finished transcript of message bodies only.
* Randomness comes from the injected `random_bytes`, so tests can replay captured sessions.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable

import attrs

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
from .events import HandshakeComplete
from .handshake_messages import (
    CLIENT_HELLO,
    CLIENT_KEY_EXCHANGE,
    EXT_OPENCONNECT_APP_ID,
    EXT_RECORD_SIZE_LIMIT,
    EXT_RENEGOTIATION_INFO,
    FINISHED,
    SERVER_HELLO,
    SERVER_HELLO_DONE,
    ClientHello,
    HandshakeMessage,
    ServerHello,
    encode_handshake,
    parse_psk_client_key_exchange,
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

#: record_size_limit 16384, as ocserv answers (optional, harmless).
_RECORD_SIZE_LIMIT_EXT = (EXT_RECORD_SIZE_LIMIT, b"\x40\x00")
#: TLS_EMPTY_RENEGOTIATION_INFO_SCSV
_SCSV = 0x00FF


@attrs.frozen(slots=True)
class PskServerParameters:
    """PSK-NEGOTIATE: the 32-byte exporter value and the suites we accept, best first."""

    psk: bytes
    suite_preference: tuple[int, ...] = DEFAULT_PSK_PREFERENCE
    #: If set, the ClientHello must name this App-ID (extension 48018, else session_id); the UDP
    #: demultiplexer normally checked that already, this keeps the engine safe on its own.
    app_id: bytes | None = None


@attrs.frozen(slots=True)
class LegacyServerParameters:
    """Legacy resumption: the client's X-DTLS-Master-Secret, our X-DTLS-Session-ID, its suite."""

    master_secret: bytes
    session_id: bytes
    suite: int


def _named_app_id(hello: ClientHello) -> bytes:
    """The App-ID a PSK ClientHello names: extension 48018 (<len><id>) first, then session_id."""
    extension = hello.extension(EXT_OPENCONNECT_APP_ID)
    if extension and 0 < extension[0] <= len(extension) - 1:
        return extension[1 : 1 + extension[0]]
    return hello.session_id


class _State(enum.Enum):
    WAIT_CLIENT_HELLO = enum.auto()
    WAIT_CLIENT_KEY_EXCHANGE = enum.auto()
    WAIT_FINISHED = enum.auto()
    ESTABLISHED = enum.auto()


class DtlsServer(DtlsEndpoint):
    """One server-side DTLS connection (sans-IO)."""

    def __init__(
        self,
        parameters: PskServerParameters | LegacyServerParameters,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(random_bytes=random_bytes, mtu=mtu, handshake_timeout=handshake_timeout)
        self._parameters = parameters
        self._state = _State.WAIT_CLIENT_HELLO
        self._suite: CipherSuite | None = None
        self._client_random = b""
        self._server_random = b""
        self._master_secret = b""
        if isinstance(parameters, LegacyServerParameters):
            self._version = version_for_suite(SUITES_BY_CODE[parameters.suite])

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._suite

    def _on_handshake_message(self, message: HandshakeMessage, epoch: int, now: float) -> None:
        state = self._state
        if state is _State.WAIT_CLIENT_HELLO and message.msg_type == CLIENT_HELLO:
            if isinstance(self._parameters, PskServerParameters):
                self._start_psk(message, self._parameters, now)
            else:
                self._start_legacy(message, self._parameters, now)
        elif state is _State.WAIT_CLIENT_KEY_EXCHANGE and message.msg_type == CLIENT_KEY_EXCHANGE:
            self._on_psk_client_key_exchange(message, now)
        elif state is _State.WAIT_FINISHED and message.msg_type == FINISHED and epoch > 0:
            self._on_client_finished(message, now)
        else:
            raise HandshakeAbort(
                ALERT_UNEXPECTED_MESSAGE, f"unexpected handshake message {message.msg_type}"
            )

    # ----------------------------------------------------------------------------- PSK

    def _start_psk(
        self, message: HandshakeMessage, params: PskServerParameters, now: float
    ) -> None:
        hello = ClientHello.parse(message.body)
        if params.app_id is not None and not hmac.compare_digest(
            _named_app_id(hello), params.app_id
        ):
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "ClientHello names another session")
        # DTLS versions count down: 0xFEFD (1.2) is numerically below 0xFEFF (1.0).
        if hello.client_version > DTLS1_2:
            # Alert in the client's own record version, or it may drop it and keep retrying.
            self._version = DTLS1_0
            raise HandshakeAbort(ALERT_PROTOCOL_VERSION, "client does not offer DTLS 1.2")
        offered = set(hello.cipher_suites)
        chosen = next((code for code in params.suite_preference if code in offered), None)
        if chosen is None or chosen not in SUITES_BY_CODE or not SUITES_BY_CODE[chosen].psk:
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "no common PSK cipher suite")
        if 0 not in hello.compression_methods:
            raise HandshakeAbort(ALERT_ILLEGAL_PARAMETER, "client lacks null compression")
        self._suite = SUITES_BY_CODE[chosen]
        self._version = DTLS1_2
        self._client_random = hello.random
        self._server_random = self._random_bytes(32)
        extensions = []
        # RFC 5746: answer renegotiation_info only to a client that signalled support for it.
        if hello.extension(EXT_RENEGOTIATION_INFO) is not None or _SCSV in hello.cipher_suites:
            extensions.append((EXT_RENEGOTIATION_INFO, b"\x00"))
        if hello.extension(EXT_RECORD_SIZE_LIMIT) is not None:
            extensions.append(_RECORD_SIZE_LIMIT_EXT)
        server_hello = ServerHello(
            DTLS1_2, self._server_random, self._random_bytes(32), chosen, 0, tuple(extensions)
        )
        self._add_to_transcript(message)
        sh = encode_handshake(SERVER_HELLO, self._next_handshake_seq(), server_hello.encode())
        shd = encode_handshake(SERVER_HELLO_DONE, self._next_handshake_seq(), b"")
        self._transcript += sh + shd
        self._state = _State.WAIT_CLIENT_KEY_EXCHANGE
        self._send_flight(
            [(CONTENT_HANDSHAKE, 0, sh), (CONTENT_HANDSHAKE, 0, shd)], now, expects_reply=True
        )

    def _on_psk_client_key_exchange(self, message: HandshakeMessage, now: float) -> None:
        assert isinstance(self._parameters, PskServerParameters)
        assert self._suite is not None
        parse_psk_client_key_exchange(message.body)  # identity is a constant ("psk"): ignored
        self._flight_acknowledged()
        self._add_to_transcript(message)
        self._master_secret = master_secret_from_psk(
            self._suite, self._parameters.psk, self._client_random, self._server_random
        )
        self._state = _State.WAIT_FINISHED
        self._install_keys(now)

    # ----------------------------------------------------------------------------- legacy

    def _start_legacy(
        self, message: HandshakeMessage, params: LegacyServerParameters, now: float
    ) -> None:
        hello = ClientHello.parse(message.body)
        suite = SUITES_BY_CODE[params.suite]
        if hello.client_version != self._version:
            raise HandshakeAbort(
                ALERT_PROTOCOL_VERSION, "client hello version does not match suite"
            )
        if not hmac.compare_digest(hello.session_id, params.session_id):
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "unknown session id")
        if params.suite not in hello.cipher_suites:
            raise HandshakeAbort(ALERT_HANDSHAKE_FAILURE, "client does not offer the agreed suite")
        self._suite = suite
        self._client_random = hello.random
        self._server_random = self._random_bytes(32)
        self._master_secret = params.master_secret
        extensions = []
        if hello.extension(EXT_RECORD_SIZE_LIMIT) is not None:
            extensions.append(_RECORD_SIZE_LIMIT_EXT)
        server_hello = ServerHello(
            self._version,
            self._server_random,
            params.session_id,
            params.suite,
            0,
            tuple(extensions),
        )
        self._add_to_transcript(message)
        sh = HandshakeMessage(SERVER_HELLO, self._next_handshake_seq(), server_hello.encode())
        self._add_to_transcript(sh)
        self._install_keys(now)
        ccs = self._change_cipher_spec_body()
        finished = HandshakeMessage(
            FINISHED, self._next_handshake_seq(), self._verify_data(b"server finished")
        )
        self._add_to_transcript(finished)
        self._state = _State.WAIT_FINISHED
        self._send_flight(
            [
                (CONTENT_HANDSHAKE, 0, sh.encode()),
                (CONTENT_CHANGE_CIPHER_SPEC, 0, ccs),
                (CONTENT_HANDSHAKE, 1, finished.encode()),
            ],
            now,
            expects_reply=True,
        )

    # ----------------------------------------------------------------------------- common

    def _install_keys(self, now: float) -> None:
        suite = self._suite
        assert suite is not None
        block = derive_key_block(
            suite, self._master_secret, self._client_random, self._server_random
        )
        self._install_write_epoch(
            1,
            make_protection(
                suite, block.server_key, block.server_iv, block.server_mac_key, self._random_bytes
            ),
        )
        self._install_read_epoch(
            1,
            make_protection(
                suite, block.client_key, block.client_iv, block.client_mac_key, self._random_bytes
            ),
            now,
        )

    def _verify_data(self, label: bytes) -> bytes:
        assert self._suite is not None
        return finished_verify_data(
            self._suite.prf_hash, self._master_secret, label, bytes(self._transcript)
        )

    def _on_client_finished(self, message: HandshakeMessage, now: float) -> None:
        assert self._suite is not None
        if not hmac.compare_digest(message.body, self._verify_data(b"client finished")):
            raise HandshakeAbort(ALERT_DECRYPT_ERROR, "client Finished does not verify")
        self._flight_acknowledged()
        self._state = _State.ESTABLISHED
        if isinstance(self._parameters, PskServerParameters):
            self._add_to_transcript(message)
            finished = encode_handshake(
                FINISHED, self._next_handshake_seq(), self._verify_data(b"server finished")
            )
            self._send_flight(
                [(CONTENT_CHANGE_CIPHER_SPEC, 0, b"\x01"), (CONTENT_HANDSHAKE, 1, finished)],
                now,
                expects_reply=False,
            )
        self._become_established(
            1, received_final_flight=isinstance(self._parameters, LegacyServerParameters)
        )
        self._events.append(
            HandshakeComplete(
                self._suite.code,
                self._suite.name,
                self._version,
                "psk" if isinstance(self._parameters, PskServerParameters) else "legacy",
            )
        )
        self._deliver_early_data()
