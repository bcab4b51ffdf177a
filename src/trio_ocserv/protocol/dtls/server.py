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
* Work that does not wait for the peer is done in `prepare()`, which the caller runs after it has
  sent our flight: in PSK mode the epoch-1 keys depend only on the PSK and the two randoms, so they
  are derived while the client computes its answer, not after it arrives. So are both Finished
  values for the ClientKeyExchange openconnect always sends (psk_identity "psk"): the rest of the
  transcript is known by then. They are kept by the exact transcript they cover, so any other
  key exchange just computes its own. Calling `prepare()` is optional.
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
    PSK_IDENTITY,
    SERVER_HELLO,
    SERVER_HELLO_DONE,
    ClientHello,
    HandshakeMessage,
    ServerHello,
    encode_handshake,
    encode_psk_client_key_exchange,
    parse_psk_client_key_exchange,
)
from .keys import derive_key_block, master_secret_from_psk
from .prf import finished_verify_data
from .record import (
    CONTENT_CHANGE_CIPHER_SPEC,
    CONTENT_HANDSHAKE,
    RecordProtection,
    make_protection,
)
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
        #: Epoch 1's (write, read) protections, derived ahead of their installation.
        self._epoch_keys: tuple[RecordProtection, RecordProtection] | None = None
        #: Finished verify_data computed ahead, by (label, the transcript they cover).
        self._finished_ahead: dict[tuple[bytes, bytes], bytes] = {}
        if isinstance(parameters, LegacyServerParameters):
            self._version = version_for_suite(SUITES_BY_CODE[parameters.suite])

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._suite

    def prepare(self) -> None:
        """Do now what the next client flight would otherwise wait for (see the module rules).
        Meant to be called right after sending `datagrams_to_send()`; harmless at any time."""
        if self._state is _State.WAIT_CLIENT_KEY_EXCHANGE and self._epoch_keys is None:
            self._derive_psk_keys()
            self._compute_expected_finished()

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
        if self._epoch_keys is None:
            self._derive_psk_keys()  # the caller did not `prepare()`
        self._state = _State.WAIT_FINISHED
        self._install_keys(now)

    def _derive_psk_keys(self) -> None:
        """The master secret and epoch-1 keys: PRF outputs of the PSK and the two randoms only
        (RFC 4279 §2, RFC 5246 §8.1), so they need nothing from the ClientKeyExchange."""
        assert isinstance(self._parameters, PskServerParameters)
        assert self._suite is not None
        self._master_secret = master_secret_from_psk(
            self._suite, self._parameters.psk, self._client_random, self._server_random
        )
        self._epoch_keys = self._derive_epoch_keys()

    def _compute_expected_finished(self) -> None:
        """Both Finished values of the transcript openconnect will produce: ours so far, its
        ClientKeyExchange, its Finished (DTLS 1.2 hashes whole messages, headers included)."""
        key_exchange = encode_handshake(
            CLIENT_KEY_EXCHANGE,
            self._reassembler.next_seq,
            encode_psk_client_key_exchange(PSK_IDENTITY),
        )
        transcript = bytes(self._transcript) + key_exchange
        client_verify = self._compute_verify_data(b"client finished", transcript)
        client_finished = encode_handshake(FINISHED, self._reassembler.next_seq + 1, client_verify)
        self._finished_ahead = {
            (b"client finished", transcript): client_verify,
            (b"server finished", transcript + client_finished): self._compute_verify_data(
                b"server finished", transcript + client_finished
            ),
        }

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

    def _derive_epoch_keys(self) -> tuple[RecordProtection, RecordProtection]:
        """Epoch 1's (write, read) record protections from the master secret and the randoms."""
        suite = self._suite
        assert suite is not None
        block = derive_key_block(
            suite, self._master_secret, self._client_random, self._server_random
        )
        write = make_protection(
            suite, block.server_key, block.server_iv, block.server_mac_key, self._random_bytes
        )
        read = make_protection(
            suite, block.client_key, block.client_iv, block.client_mac_key, self._random_bytes
        )
        return write, read

    def _install_keys(self, now: float) -> None:
        write, read = self._epoch_keys or self._derive_epoch_keys()
        self._epoch_keys = None  # installed: the engine keeps them per epoch from here on
        self._install_write_epoch(1, write)
        self._install_read_epoch(1, read, now)

    def _verify_data(self, label: bytes) -> bytes:
        transcript = bytes(self._transcript)
        ahead = self._finished_ahead.pop((label, transcript), None)
        return ahead if ahead is not None else self._compute_verify_data(label, transcript)

    def _compute_verify_data(self, label: bytes, transcript: bytes) -> bytes:
        assert self._suite is not None
        return finished_verify_data(self._suite.prf_hash, self._master_secret, label, transcript)

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
