"""The part of a DTLS connection both sides share: epochs, sequence numbers, replay windows,
handshake reassembly, flight retransmission, alerts and the application-data hot path.

Rules (the state machine of the handshake itself lives in `server.py` / `client.py`):
* Sans-IO: `receive_datagram(data, now)` in; `datagrams_to_send()`, `next_event()` out; time only
  arrives as an argument (`now`), `get_timer()` says when `handle_timer(now)` wants to run.
* Nothing the peer sends can make `receive_datagram` raise: bad records are dropped silently (RFC
  6347 §4.1.2.7); a broken handshake becomes `HandshakeFailed` plus a fatal alert.
* A flight is resent whole, with fresh record sequence numbers, when the retransmission timer fires
  (initial 0.4 s like ocserv, doubling) or when the peer retransmits a message we already processed
  (at most every 0.1 s). The side that receives the final flight forgets its own last flight, so
  resends can never ping-pong.
* Only alerts of the newest keyed epoch count (clear ones could be forged once keys exist). A
  renegotiation attempt (a hello inside the live epoch) gets a no_renegotiation warning.
* Records of an epoch whose keys we do not have yet are kept (a few) and replayed once the keys
  exist, so reordering across the key change loses nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

import attrs

from .errors import DtlsDecodeError, DtlsLocalError
from .events import AlertReceived, ApplicationData, Event, HandshakeFailed
from .handshake_messages import (
    CHANGE_CIPHER_SPEC_MARKER,
    CLIENT_HELLO,
    HELLO_REQUEST,
    HandshakeMessage,
    HandshakeReassembler,
    parse_fragments,
)
from .record import (
    CONTENT_ALERT,
    CONTENT_APPLICATION_DATA,
    CONTENT_CHANGE_CIPHER_SPEC,
    CONTENT_HANDSHAKE,
    DTLS_VERSIONS,
    MAX_SEQUENCE,
    RECORD_HEADER,
    RECORD_HEADER_LENGTH,
    NullProtection,
    RecordProtection,
)
from .replay import ReplayCheck, ReplayWindow
from .suites import DTLS1_BAD_VER

ALERT_WARNING = 1
ALERT_FATAL = 2
ALERT_CLOSE_NOTIFY = 0
ALERT_UNEXPECTED_MESSAGE = 10
ALERT_HANDSHAKE_FAILURE = 40
ALERT_ILLEGAL_PARAMETER = 47
ALERT_DECODE_ERROR = 50
ALERT_DECRYPT_ERROR = 51
ALERT_PROTOCOL_VERSION = 70
ALERT_NO_RENEGOTIATION = 100

INITIAL_RETRANSMIT_TIMEOUT = 0.4
MAX_RETRANSMIT_TIMEOUT = 10.0
MAX_RETRANSMISSIONS = 6
DEFAULT_MTU = 1400
#: A handshake that has not completed this long after its first datagram is abandoned
#: (openconnect itself gives up after 12 s).
HANDSHAKE_TIMEOUT = 20.0
#: Resends caused by peer retransmissions are rate-limited, so duplicated or looping datagrams
#: cannot turn the engine into an amplifier.
MIN_RESEND_INTERVAL = 0.1
#: Records of a not-yet-keyed epoch (or early application data) kept for later.
MAX_PENDING_RECORDS = 16


class HandshakeAbort(Exception):
    """Raised by handshake code to abort with a fatal alert; caught in `receive_datagram`.

    Control flow inside the engine only: it never escapes to the caller.
    """

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


class WriteSequence(Protocol):
    """Where an established epoch's record numbers come from (one source per epoch, shared
    with an accelerated data path)."""

    def take_sequence(self) -> int:
        """The next epoch<<48|seq, counted as used; -1 once the epoch has run out."""
        ...


class CountingSequence:
    __slots__ = ("next_sequence",)

    def __init__(self, first: int) -> None:
        self.next_sequence = first

    def take_sequence(self) -> int:
        epoch_seq = self.next_sequence
        if epoch_seq & MAX_SEQUENCE == MAX_SEQUENCE:
            return -1
        self.next_sequence = epoch_seq + 1
        return epoch_seq


@attrs.frozen(slots=True)
class AppEpoch:
    """An established epoch, as handed to an accelerated data path."""

    epoch: int
    version: int
    read: RecordProtection
    write: RecordProtection
    replay: ReplayCheck
    sequence: WriteSequence


@attrs.frozen(slots=True)
class _FlightItem:
    content_type: int
    epoch: int
    plaintext: bytes
    #: Record version, fixed when the flight is made (a PSK ClientHello goes out as DTLS 1.0).
    version: int


class DtlsEndpoint:
    """Record layer and handshake plumbing; subclasses implement `_on_handshake_message`."""

    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes],
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._random_bytes = random_bytes
        self._handshake_timeout = handshake_timeout
        self._handshake_deadline: float | None = None
        self._mtu = mtu
        self._events: collections.deque[Event] = collections.deque()
        self._outgoing: list[bytes] = []
        #: Record version we write; subclasses set it once the version is known.
        self._version = 0xFEFD
        self._write_protections: dict[int, RecordProtection] = {0: NullProtection()}
        self._write_next: dict[int, int] = {0: 0}  # epoch -> next epoch_seq
        self._read_protections: dict[int, RecordProtection] = {0: NullProtection()}
        self._replay: dict[int, ReplayCheck] = {0: ReplayWindow()}
        self._pending: list[tuple[int, int, int, bytes]] = []
        self._early_data: list[bytes] = []
        self._reassembler = HandshakeReassembler()
        self._transcript = bytearray()
        self._next_send_seq = 0
        self._flight: list[_FlightItem] = []
        self._timer: float | None = None
        self._timeout = INITIAL_RETRANSMIT_TIMEOUT
        self._retransmissions = 0
        self._retransmit_requested = False
        self._renegotiation_refused = False
        self._last_peer_triggered_resend = -MIN_RESEND_INTERVAL
        # Hot path state, valid once established.
        self._established = False
        self._closed = False
        self._app_read_epoch = -1
        self._app_read: RecordProtection = NullProtection()
        self._app_replay: ReplayCheck = ReplayWindow()
        self._app_write: RecordProtection = NullProtection()
        self._app_sequence: WriteSequence = CountingSequence(0)

    # ----------------------------------------------------------------------------- public API

    @property
    def established(self) -> bool:
        return self._established

    @property
    def closed(self) -> bool:
        return self._closed

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        if self._closed:
            return None
        deadline = None if self._established else self._handshake_deadline
        if self._timer is None:
            return deadline
        return self._timer if deadline is None else min(self._timer, deadline)

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        deadline = self._handshake_deadline
        if not self._established and deadline is not None and now >= deadline:
            self._fail_timeout()
            return
        if self._timer is None or now < self._timer:
            return
        self._retransmissions += 1
        if self._retransmissions > MAX_RETRANSMISSIONS:
            self._fail_timeout()
            return
        self._timeout = min(self._timeout * 2, MAX_RETRANSMIT_TIMEOUT)
        self._timer = now + self._timeout
        self._transmit_flight()

    def send_application_data(self, payload: bytes) -> bytes:
        """One sealed application-data record (a whole datagram) for the caller to send."""
        if not self._established or self._closed:
            raise DtlsLocalError("DTLS connection is not established")
        epoch_seq = self._take_app_sequence()
        return self._app_write.seal(CONTENT_APPLICATION_DATA, self._version, epoch_seq, payload)

    def _take_app_sequence(self) -> int:
        epoch_seq = self._app_sequence.take_sequence()
        if epoch_seq < 0:
            raise DtlsLocalError("DTLS sequence numbers exhausted: a new handshake is needed")
        return epoch_seq

    # -- hand-over of the established epoch to an accelerated data path (server/dtls_fastpath.py)

    def app_epoch(self) -> AppEpoch | None:
        """The established epoch's keys and state, or None before establishment / after close."""
        if not self._established or self._closed:
            return None
        return AppEpoch(
            epoch=self._app_read_epoch,
            version=self._version,
            read=self._app_read,
            write=self._app_write,
            replay=self._app_replay,
            sequence=self._app_sequence,
        )

    def share_replay_window(self, window: ReplayCheck) -> None:
        """Use `window` (already holding this epoch's state) for the established epoch, so
        records opened elsewhere and here are checked against one window."""
        self._app_replay = window
        self._replay[self._app_read_epoch] = window

    def share_write_sequence(self, sequence: WriteSequence) -> None:
        """Number the established epoch's records from `sequence` (already at this epoch's next
        number), which records sealed elsewhere draw from too."""
        self._app_sequence = sequence

    def close(self) -> bytes:
        """A close_notify alert datagram; the connection is closed afterwards."""
        alert = self._seal_current(CONTENT_ALERT, bytes((ALERT_WARNING, ALERT_CLOSE_NOTIFY)))
        self._closed = True
        self._timer = None
        return alert

    def open_application_datagram(self, data: bytes) -> bytes | None:
        """The hot path: the plaintext of a datagram that is exactly one application-data record
        of the established epoch, or None for anything else (then use `receive_datagram`, which
        also drops what fails here: replays, forgeries). No event is queued for it."""
        if len(data) < RECORD_HEADER_LENGTH or not self._established:
            return None
        content_type, version, epoch_seq, length = RECORD_HEADER.unpack_from(data)
        if (
            content_type != CONTENT_APPLICATION_DATA
            or epoch_seq >> 48 != self._app_read_epoch
            or RECORD_HEADER_LENGTH + length != len(data)
            or self._closed
        ):
            return None
        seq = epoch_seq & MAX_SEQUENCE
        if not self._app_replay.check(seq):
            return b""  # a replay: handled, nothing to deliver
        try:
            plaintext = self._app_read.open(
                CONTENT_APPLICATION_DATA,
                version,
                epoch_seq,
                data[RECORD_HEADER_LENGTH:],
            )
        except DtlsDecodeError:
            return b""  # forged or corrupt: dropped, as receive_datagram would
        self._app_replay.mark(seq)
        return plaintext

    def receive_datagram(self, data: bytes, now: float) -> None:
        self._retransmit_requested = False
        self._start_handshake_clock(now)
        pos = 0
        end = len(data)
        while not self._closed and pos + RECORD_HEADER_LENGTH <= end:
            content_type, version, epoch_seq, length = RECORD_HEADER.unpack_from(data, pos)
            start = pos + RECORD_HEADER_LENGTH
            pos = start + length
            if pos > end:
                break
            body = data[start:pos]
            # Hot path: application data of the established epoch.
            if content_type == CONTENT_APPLICATION_DATA and epoch_seq >> 48 == self._app_read_epoch:
                self._receive_app_record(version, epoch_seq, body)
                continue
            try:
                self._receive_record(content_type, version, epoch_seq, body, now)
            except HandshakeAbort as abort:
                self._abort(abort.alert, abort.reason)
            except DtlsDecodeError:
                # Malformed bytes may be forged by anyone on the path: drop, do not abort.
                continue
        if self._renegotiation_refused:
            self._renegotiation_refused = False
            self._outgoing.append(
                self._seal_current(CONTENT_ALERT, bytes((ALERT_WARNING, ALERT_NO_RENEGOTIATION)))
            )
        if (
            self._retransmit_requested
            and self._flight
            and not self._closed
            and now - self._last_peer_triggered_resend >= MIN_RESEND_INTERVAL
        ):
            self._last_peer_triggered_resend = now
            self._transmit_flight()

    # ----------------------------------------------------------------------------- records in

    def _receive_app_record(self, version: int, epoch_seq: int, body: bytes) -> None:
        seq = epoch_seq & MAX_SEQUENCE
        if not self._app_replay.check(seq):
            return
        try:
            plaintext = self._app_read.open(CONTENT_APPLICATION_DATA, version, epoch_seq, body)
        except DtlsDecodeError:
            return
        self._app_replay.mark(seq)
        self._events.append(ApplicationData(plaintext))

    def _receive_record(
        self, content_type: int, version: int, epoch_seq: int, body: bytes, now: float
    ) -> None:
        if version not in DTLS_VERSIONS:
            return
        epoch = epoch_seq >> 48
        protection = self._read_protections.get(epoch)
        if protection is None:
            if (
                epoch == max(self._read_protections) + 1
                and len(self._pending) < MAX_PENDING_RECORDS
            ):
                self._pending.append((content_type, version, epoch_seq, body))
            return
        window = self._replay[epoch]
        seq = epoch_seq & MAX_SEQUENCE
        if not window.check(seq):
            return
        try:
            plaintext = protection.open(content_type, version, epoch_seq, body)
        except DtlsDecodeError:
            return  # forged or corrupted record: drop silently
        window.mark(seq)
        if content_type == CONTENT_HANDSHAKE:
            self._receive_handshake(plaintext, epoch, now)
        elif content_type == CONTENT_CHANGE_CIPHER_SPEC:
            self._on_change_cipher_spec(plaintext, now)
        elif content_type == CONTENT_ALERT and epoch == max(self._read_protections):
            # Alerts from an older epoch (a clear one, once keys exist) could be forged by anyone.
            self._receive_alert(plaintext)
        elif (
            content_type == CONTENT_APPLICATION_DATA
            and epoch > 0
            and not self._established
            and len(self._early_data) < MAX_PENDING_RECORDS
        ):
            # Data overtook the peer's Finished; deliver it once the handshake completes.
            self._early_data.append(plaintext)
        # Anything else (unknown types, stale-epoch data) is ignored.

    def _receive_alert(self, plaintext: bytes) -> None:
        if len(plaintext) != 2:
            return
        alert = AlertReceived(plaintext[0], plaintext[1])
        self._events.append(alert)
        if alert.closes_connection:
            self._closed = True
            self._timer = None

    def _receive_handshake(self, plaintext: bytes, epoch: int, now: float) -> None:
        for fragment in parse_fragments(plaintext):
            if (
                self._established
                and epoch == self._app_read_epoch
                and fragment.msg_type in (CLIENT_HELLO, HELLO_REQUEST)
            ):
                # The first handshake's hellos travel in epoch 0, so this is a renegotiation
                # (openconnect's DTLS rekey, tried only if the server announced
                # X-DTLS-Rekey-Method: ssl). Not implemented: refuse politely; data keeps flowing.
                self._renegotiation_refused = True
                continue
            if fragment.message_seq < self._reassembler.next_seq:
                self._retransmit_requested = True
                continue
            self._reassembler.add(fragment, epoch)
        self._process_ready_messages(now)

    def _process_ready_messages(self, now: float) -> None:
        while (ready := self._reassembler.pop_ready()) is not None:
            message, epoch = ready
            if message.msg_type == CHANGE_CIPHER_SPEC_MARKER:
                continue
            self._on_handshake_message(message, epoch, now)
            if self._closed:
                return

    # ----------------------------------------------------------------------------- 0x0100 quirks

    @property
    def _bad_version(self) -> bool:
        return self._version == DTLS1_BAD_VER

    def _add_to_transcript(self, message: HandshakeMessage) -> None:
        # 0x0100 hashes bodies only; DTLS 1.2 hashes whole messages with their 12-byte headers.
        self._transcript += message.body if self._bad_version else message.encode()

    def _change_cipher_spec_body(self) -> bytes:
        if not self._bad_version:
            return b"\x01"
        # 0x0100: the CCS is 01 + a 2-byte message_seq, and it consumes that sequence number.
        return b"\x01" + self._next_handshake_seq().to_bytes(2, "big")

    def _on_change_cipher_spec(self, plaintext: bytes, now: float) -> None:
        """A DTLS 1.2 CCS carries nothing we need (epochs are explicit in every record); a 0x0100
        CCS carries a handshake message_seq that we must account for."""
        if self._bad_version and len(plaintext) == 3 and plaintext[0] == 1:
            seq = int.from_bytes(plaintext[1:3], "big")
            if seq < self._reassembler.next_seq:
                self._retransmit_requested = True
            else:
                self._reassembler.add_change_cipher_spec(seq)
                self._process_ready_messages(now)

    def _on_handshake_message(self, message: HandshakeMessage, epoch: int, now: float) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------------------- keys

    def _install_read_epoch(self, epoch: int, protection: RecordProtection, now: float) -> None:
        self._read_protections[epoch] = protection
        self._replay[epoch] = ReplayWindow()
        pending, self._pending = self._pending, []
        for content_type, version, epoch_seq, body in pending:
            self._receive_record(content_type, version, epoch_seq, body, now)

    def _install_write_epoch(self, epoch: int, protection: RecordProtection) -> None:
        self._write_protections[epoch] = protection
        self._write_next[epoch] = epoch << 48

    def _become_established(self, epoch: int, *, received_final_flight: bool) -> None:
        """Switch to the hot path. The side that received the final flight drops its own last
        flight: the peer's Finished acknowledged it, and answering the peer's retransmissions
        with it would start an endless ping-pong of resends."""
        if received_final_flight:
            self._flight = []
            self._timer = None
        self._established = True
        self._app_read_epoch = epoch
        self._app_read = self._read_protections[epoch]
        self._app_replay = self._replay[epoch]
        self._app_write = self._write_protections[epoch]
        self._app_sequence = CountingSequence(self._write_next[epoch])

    def _deliver_early_data(self) -> None:
        """Called right after the HandshakeComplete event is queued."""
        early, self._early_data = self._early_data, []
        self._events.extend(ApplicationData(payload) for payload in early)

    # ----------------------------------------------------------------------------- records out

    def _seal(
        self, content_type: int, epoch: int, plaintext: bytes, version: int | None = None
    ) -> bytes:
        if epoch == self._app_read_epoch and self._established:
            epoch_seq = self._take_app_sequence()
        else:
            epoch_seq = self._write_next[epoch]
            self._write_next[epoch] = epoch_seq + 1
        return self._write_protections[epoch].seal(
            content_type, self._version if version is None else version, epoch_seq, plaintext
        )

    def _seal_current(self, content_type: int, plaintext: bytes) -> bytes:
        return self._seal(content_type, max(self._write_protections), plaintext)

    def _next_handshake_seq(self) -> int:
        seq = self._next_send_seq
        self._next_send_seq += 1
        return seq

    def _send_flight(
        self,
        items: list[tuple[int, int, bytes]],
        now: float,
        *,
        expects_reply: bool,
        record_version: int | None = None,
    ) -> None:
        """Store and send a new flight; arm the retransmission timer if a reply is due."""
        version = self._version if record_version is None else record_version
        self._flight = [_FlightItem(*item, version) for item in items]
        self._retransmissions = 0
        self._timeout = INITIAL_RETRANSMIT_TIMEOUT
        self._timer = now + self._timeout if expects_reply else None
        self._transmit_flight()

    def _flight_acknowledged(self) -> None:
        """The peer's next flight began: stop retransmitting ours (it stays stored for resends)."""
        self._timer = None

    def _transmit_flight(self) -> None:
        datagram = b""
        for item in self._flight:
            record = self._seal(item.content_type, item.epoch, item.plaintext, item.version)
            if datagram and len(datagram) + len(record) > self._mtu:
                self._outgoing.append(datagram)
                datagram = b""
            datagram += record
        if datagram:
            self._outgoing.append(datagram)

    def _start_handshake_clock(self, now: float) -> None:
        if self._handshake_deadline is None:
            self._handshake_deadline = now + self._handshake_timeout

    def _fail_timeout(self) -> None:
        self._timer = None
        self._closed = True
        self._events.append(HandshakeFailed("handshake timed out"))

    def _abort(self, alert: int, reason: str) -> None:
        self._outgoing.append(self._seal_current(CONTENT_ALERT, bytes((ALERT_FATAL, alert))))
        self._closed = True
        self._timer = None
        self._events.append(HandshakeFailed(reason))
