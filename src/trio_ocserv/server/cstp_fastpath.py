"""The optional C data path of established CSTP tunnels, and the Trio task that owns its thread.

`trio_ocserv._cstp_fastpath` (built from `_cstp_fastpath.c` when a compiler is there) runs one
thread per server process that never takes the GIL. Once a tunnel is up, the thread owns its TLS
connection's record layer: it reads the socket, decrypts, writes data frames to the tun, and,
while the tunnel hands it the tun, reads the tun and sends each packet as a CSTP frame. Data
never wakes the interpreter; a ping reply the kernel produced while the request was written
leaves from the same thread pass. Why: a Trio wake-up and the Python per-record work were most
of CSTP's added latency (protocol.md §6 has one frame per TLS record, so per-packet costs are
per-record costs).

Python keeps everything else: the thread hands over DPD requests, DISCONNECT and the end of the
connection at once, and each tunnel's counters (and so liveness) at most every 100 ms. Python's
own frames (DPD, DISCONNECT) go through `CstpPath.send`, under the thread's mutex, since OpenSSL
connections are not to be used by two threads at once. When the tunnel ends, `detach()` gives the
connection back to the `TlsStream` (any ciphertext the thread could not send yet is still in the
outgoing BIO and leaves first).

OpenSSL: pyOpenSSL's connections live in the OpenSSL that `cryptography` bundles, which need not
be the system's libssl, so the C module links none: it is handed the addresses of that OpenSSL's
functions (`configure`). Without the module, with TRIO_OCSERV_PURE_PYTHON=1, for compressed
tunnels, or over a transport that is not a plain TCP socket stream, the tunnel's Python path is
used.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType
from typing import Any, Protocol

import trio
from cryptography.hazmat.bindings.openssl.binding import Binding

from trio_ocserv.server.tls import TlsStream

log = logging.getLogger(__name__)


class CstpPath(Protocol):
    """The C object's interface (see `_cstp_fastpath.c`)."""

    tun_watch: bool

    @property
    def attached(self) -> bool: ...

    @property
    def owner(self) -> Any: ...

    def send(self, frame: bytes, /) -> bool: ...

    def detach(self) -> None: ...

    def take_counts(self) -> tuple[int, int, int, int, int]: ...


class CstpPathOwner(Protocol):
    """What the plane tells a tunnel (server/tunnel.py)."""

    def cstp_counts(self, path: CstpPath) -> None: ...

    def cstp_event(self, path: CstpPath, kind: int, code: int, payload: bytes) -> None: ...

    def cstp_plane_gone(self) -> None: ...


def _address(pointer: Any) -> int:
    return int(Binding.ffi.cast("uintptr_t", pointer))


def _load() -> ModuleType | None:
    if os.environ.get("TRIO_OCSERV_PURE_PYTHON"):
        return None
    try:
        module = importlib.import_module("trio_ocserv._cstp_fastpath")
    except ImportError:
        return None
    lib = Binding().lib
    module.configure(*(
        _address(getattr(lib, name))
        for name in (
            "SSL_read", "SSL_write", "SSL_get_error", "BIO_write", "BIO_read", "BIO_get_mem_data",
            "ERR_clear_error",
        )
    ))
    return module


_module = _load()

# What `CstpPlane.take()` reports: (path, kind, code, payload). FRAME: a frame of type `code`;
# END: the thread stopped serving the connection, `code` says why; TUN_RETURNED: a tun error.
EVENT_FRAME, EVENT_END, EVENT_TUN_RETURNED = 1, 2, 3
END_EOF, END_CLOSE_NOTIFY, END_TLS_ERROR, END_PROTOCOL_ERROR, END_SOCKET_ERROR, END_TUN_GONE = (
    range(1, 7)
)
if _module is not None:
    assert (_module.EVENT_FRAME, _module.EVENT_END, _module.EVENT_TUN_RETURNED) == (1, 2, 3)
    assert (_module.END_EOF, _module.END_TUN_GONE) == (END_EOF, END_TUN_GONE)


def available() -> bool:
    """The C module is built and not disabled."""
    return _module is not None


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    """The TCP socket under a plain socket stream (None for anything else: a PROXY-protocol
    wrapper with bytes left, a test's memory stream)."""
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream.socket.fileno()
        inner: trio.abc.Stream | None = getattr(stream, "transport", None)
        if inner is None or getattr(stream, "_prefix", None):
            return None
        stream = inner


class CstpDataPlane:
    """The C thread for CSTP tunnels; `serve()` runs it in the server's nursery."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self._plane: Any = None

    @classmethod
    def create(cls) -> CstpDataPlane | None:
        return cls(_module) if _module is not None else None

    def take_over(
        self, owner: CstpPathOwner, stream: trio.abc.Stream, tun_fd: int, max_payload: int
    ) -> CstpPath | None:
        """Hand `stream`'s established connection to the thread; None when it cannot be."""
        plane = self._plane
        if plane is None or not isinstance(stream, TlsStream):
            return None
        fd = _socket_fd(stream.transport_stream)
        if fd is None:
            return None
        ssl, incoming, outgoing = stream.raw_handles()
        path: CstpPath = self._module.CstpPath(
            owner, _address(ssl), _address(incoming), _address(outgoing), fd, tun_fd, max_payload
        )
        try:
            plane.attach(path)
        except OSError as exc:
            log.warning("CSTP data path: cannot watch the socket (%s); using Python", exc)
            return None
        return path

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        plane = self._module.CstpPlane()
        thread = threading.Thread(target=plane.run, name="trio-ocserv-cstp", daemon=True)
        thread.start()
        self._plane = plane
        log.info("CSTP data path: C thread")
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(plane.wake_fd)
                events, touched = plane.take()
                for path in touched:
                    path.owner.cstp_counts(path)
                for path, kind, code, payload in events:
                    path.owner.cstp_event(path, kind, code, payload)
        finally:
            self._plane = None
            plane.stop()
            thread.join()  # the thread sees the stop eventfd at once
            trio.lowlevel.notify_closing(plane.wake_fd)
            for owner in plane.close():
                owner.cstp_plane_gone()
