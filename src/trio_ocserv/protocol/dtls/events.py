"""Events the DTLS engines hand to their driver through `next_event()`.

Rules: events are frozen, slotted value objects; they never hold engine state. `ApplicationData` is
the hot-path event, so it carries only the payload bytes.
"""

from __future__ import annotations

import attrs


@attrs.frozen(slots=True)
class HandshakeComplete:
    """The handshake finished; application data may flow both ways from now on."""

    cipher_suite: int
    suite_name: str
    version: int
    #: "psk" or "legacy", so the tunnel can log the DTLS mode like openconnect does.
    mode: str


@attrs.frozen(slots=True)
class ApplicationData:
    """One decrypted application-data record (AnyConnect: 1 type byte + payload)."""

    payload: bytes


@attrs.frozen(slots=True)
class AlertReceived:
    """The peer sent an alert; `fatal` alerts and close_notify end the connection."""

    level: int
    description: int

    @property
    def closes_connection(self) -> bool:
        return self.level == 2 or self.description == 0


@attrs.frozen(slots=True)
class HandshakeFailed:
    """The handshake cannot complete (bad Finished, no common suite, retransmissions exhausted)."""

    reason: str


Event = HandshakeComplete | ApplicationData | AlertReceived | HandshakeFailed
