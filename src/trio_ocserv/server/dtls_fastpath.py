"""The optional C data path for established AES-GCM DTLS epochs, and when it may be used.

`trio_ocserv._dtls_fastpath` (built from `_dtls_fastpath.c` when a compiler and libssl-dev are
there) moves the per-packet loop out of Python: one `receive_udp` call reads a batch of datagrams
with recvmmsg, opens the records of established sessions and writes their IP packets to the tun
devices; `GcmDataPath.forward_tun` reads a tun until EAGAIN, seals and sends with sendmmsg. The
DTLS engine stays in charge of everything else: it shares its replay window and its record
numbering with the C object, so both paths can be used on one epoch at any time. After a receive
batch the C side also forwards the session's tun at once (`forwarding`), so a ping reply or a TCP
ACK the kernel made while the packet was written leaves before any Python runs.

By default the receive loop runs on a thread of its own (`UdpReceiver`, started and joined by
`UdpEndpoint.serve`), which never takes the GIL: data records never wake the interpreter, and
the two cores share the work. Python takes what the thread hands over (handshakes, DPD and
DISCONNECT payloads, and every 20 ms at most the sessions that received data, for liveness and
counters) from a queue signalled through an eventfd. TRIO_OCSERV_DTLS_THREAD=0 keeps the loop
in the Trio task instead (`receive_udp`, one batch per wake).

The thread also answers a login's DTLS handshake (`handshake_answer`, `_dtls_handshake_answer.c`):
the client waits on our ServerHello flight (and, with PSK, on our Finished), and those leave
from the thread without a Python wake-up. The engine still sees each datagram and checks it
would have sent the same bytes (server/dtls_channel.py).

Without the module, or with TRIO_OCSERV_PURE_PYTHON=1 in the environment, the pure-Python path
does the same work (slower); CBC, CCM and ChaCha20 suites and compressed DTLS always use it.
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
from types import ModuleType
from typing import Any, Protocol

from trio_ocserv.protocol.dtls.endpoint import CountingSequence, DtlsEndpoint
from trio_ocserv.protocol.dtls.record import SaltedAeadProtection
from trio_ocserv.protocol.dtls.replay import ReplayWindow
from trio_ocserv.protocol.dtls.server import LegacyServerParameters, PskServerParameters

Address = tuple[str, int] | tuple[str, int, int, int]


class GcmDataPath(Protocol):
    """The C object's interface (see `_dtls_fastpath.c`)."""

    @property
    def owner(self) -> Any: ...

    def check(self, seq: int) -> bool: ...

    def mark(self, seq: int) -> None: ...

    def set_replay_state(self, highest: int, bitmap: int, /) -> None: ...

    def open_datagram(self, data: bytes, /) -> bytes | None: ...

    def seal(self, content_type: int, epoch_seq: int, plaintext: bytes, /) -> bytes: ...

    def attach(self, tun_fd: int, udp_fd: int, family: int, address_key: bytes, /) -> None: ...

    def detach(self) -> None: ...

    forwarding: bool

    @property
    def watched(self) -> bool: ...

    def take_counts(self) -> tuple[int, int, int, int, int, int]: ...

    def forward_tun(self, limit: int, /) -> int: ...

    def take_sequence(self) -> int: ...

    def set_write_sequence(self, epoch_seq: int, /) -> None: ...


def _load() -> ModuleType | None:
    if os.environ.get("TRIO_OCSERV_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module("trio_ocserv._dtls_fastpath")
    except ImportError:
        return None


fastpath: ModuleType | None = _load()


def receive_thread_enabled() -> bool:
    """The C receive thread (UdpReceiver) unless TRIO_OCSERV_DTLS_THREAD=0: then the C path
    runs in the Trio task, one recvmmsg batch per wake."""
    return os.environ.get("TRIO_OCSERV_DTLS_THREAD", "1") != "0"


def address_key(address: Address) -> tuple[int, bytes]:
    """(family, key) for an address tuple, as the C side builds keys from a sockaddr: port in
    network order, the address, and for IPv6 the scope id (big-endian)."""
    host, port = address[0], address[1]
    port_bytes = port.to_bytes(2, "big")
    if ":" in host:
        scope = address[3] if len(address) == 4 else 0
        return socket.AF_INET6, port_bytes + socket.inet_pton(socket.AF_INET6, host) + (
            scope.to_bytes(4, "big")
        )
    return socket.AF_INET, port_bytes + socket.inet_pton(socket.AF_INET, host)


def take_over(engine: DtlsEndpoint, owner: object) -> GcmDataPath | None:
    """A C data path for `engine`'s established epoch (sharing its replay window from now on),
    or None when the module is missing or the suite is not AES-GCM."""
    if fastpath is None:
        return None
    epoch = engine.app_epoch()
    if epoch is None:
        return None
    read, write = epoch.read, epoch.write
    if not (
        isinstance(read, SaltedAeadProtection)
        and isinstance(write, SaltedAeadProtection)
        and read.is_gcm
        and write.is_gcm
        and isinstance(epoch.replay, ReplayWindow)
        and isinstance(epoch.sequence, CountingSequence)
    ):
        return None
    path: GcmDataPath = fastpath.GcmDataPath(
        read.key, read.salt, write.key, write.salt, epoch.epoch, epoch.version, owner
    )
    path.set_replay_state(*epoch.replay.state())
    path.set_write_sequence(epoch.sequence.next_sequence)
    engine.share_replay_window(path)
    engine.share_write_sequence(path)
    return path


def handshake_answer(
    parameters: PskServerParameters | LegacyServerParameters, randoms: bytes
) -> Any | None:
    """The receive thread's answers for a session's first handshake (a HandshakeAnswer for
    UdpReceiver.expect_hello), or None without the module. `randoms`: the 64 bytes the engine
    will draw first (server random, then the PSK session id)."""
    if fastpath is None:
        return None
    if isinstance(parameters, PskServerParameters):
        if parameters.app_id is not None:
            return None  # the engine's own App-ID check: not mirrored in C
        codes = parameters.suite_preference
        preference = struct.pack(f"!{len(codes)}H", *codes)
        return fastpath.psk_handshake_answer(parameters.psk, randoms, preference)
    if parameters.suite not in _LEGACY_GCM_SUITES:
        return None  # CBC suites on 0x0100: the engine answers
    return fastpath.legacy_handshake_answer(
        parameters.master_secret, parameters.session_id, parameters.suite, randoms[:32]
    )


#: TLS_RSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_GCM_SHA256 (DTLS 1.2)
_LEGACY_GCM_SUITES = (0x009D, 0x009C)
