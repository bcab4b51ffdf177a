"""TLS for the control channel: a `trio.abc.Stream` over pyOpenSSL with memory BIOs.

This module owns the TLS layer between a transport stream (TCP, or anything a test hands in) and the
HTTP/CSTP code above it, and the `SSL.Context` factory built from plain settings. It does not know
HTTP, cookies or config files.

Why pyOpenSSL and not stdlib `ssl`: DTLS PSK-NEGOTIATE derives its key from the RFC 5705/8446
exporter of this connection (protocol.md 7.3.1), which stdlib `ssl` does not expose.

Known limit: OpenSSL has no public call to send an arbitrary alert, so the fatal access_denied (49)
alert ocserv sends after an HTTP rejection (protocol.md 2.2) cannot be produced;
`aclose(deny=True)` sends close_notify instead; openconnect treats both as the end of the session.

Known limit of per-host (SNI) contexts: OpenSSL has chosen the protocol version before the SNI
callback runs and keeps the TLS 1.3 suites and options of the context the connection was created
with; switching context changes the certificate, the CA list/CRL store, the TLS 1.2 cipher list
and (we copy it) the client-certificate mode [checked with OpenSSL 3.0].

Hot path: CSTP puts one packet in each TLS record, so per-record Python work is what the tunnel
costs. pyOpenSSL's `recv`/`send`/`bio_read` allocate a buffer and check helpers on every call;
the data path calls `SSL_read`, `SSL_write` and `BIO_get_mem_data` itself, through the same
cryptography bindings pyOpenSSL uses and on its connection's `_ssl`/`_from_ssl` handles
(private attributes, checked with pyOpenSSL 26.4). Only success and "need more ciphertext" are
handled there; anything else is repeated through pyOpenSSL (OpenSSL reports a failed connection
again on the next call), so errors keep pyOpenSSL's exceptions.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

__all__ = [
    "ClientCertMode",
    "TlsServerSettings",
    "TlsStream",
    "TlsVersion",
    "install_sni_callback",
    "load_crls",
    "make_server_context",
]

# One TLS record carries at most 16 KiB of plaintext; writing in record-sized chunks keeps the
# outgoing memory BIO small and lets backpressure from the transport reach the writer.
_PLAINTEXT_CHUNK = 16384
_TRANSPORT_READ_SIZE = 65536
# Plaintext one receive_some returns at most: a batch of records, copied out once.
_PLAINTEXT_BATCH = 65536

_T = TypeVar("_T")

_ffi: Any = Binding.ffi
_lib: Any = Binding().lib
_SSL_ERROR_WANT_READ: int = _lib.SSL_ERROR_WANT_READ


class _ReadScratch(threading.local):
    """Where SSL_read decrypts a batch before it is copied into the bytes we return; one per
    thread (the copy happens before any await), not one per connection: idle tunnels are many."""

    def __init__(self) -> None:
        self.buffer = bytearray(_PLAINTEXT_BATCH)
        self.view = memoryview(self.buffer)
        self.pointer: Any = _ffi.from_buffer(self.buffer)


_scratch = _ReadScratch()


class TlsVersion(enum.Enum):
    """Protocol versions the control channel may be limited to."""

    TLS1_2 = SSL.TLS1_2_VERSION
    TLS1_3 = SSL.TLS1_3_VERSION


class ClientCertMode(enum.Enum):
    """Whether the server sends a CertificateRequest, and whether an empty answer fails."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@attrs.frozen
class TlsServerSettings:
    """Plain inputs for `make_server_context`; `server.tls_config` maps ocserv.conf onto these."""

    cert_chain_file: str
    key_file: str
    ca_file: str | None = None
    client_cert: ClientCertMode = ClientCertMode.NONE
    min_version: TlsVersion = TlsVersion.TLS1_2
    max_version: TlsVersion | None = None
    # OpenSSL cipher string for TLS <= 1.2 and the TLS 1.3 suite list; None keeps OpenSSL defaults.
    ciphers: str | None = None
    tls13_ciphersuites: str | None = None
    server_preference: bool = True
    # Further (chain file, key file) pairs of other key types (e.g. RSA beside ECDSA): OpenSSL
    # keeps one certificate per key type and picks the one the client's signature algorithms allow.
    extra_cert_pairs: tuple[tuple[str, str], ...] = ()
    # PEM (one or more CRLs) or DER; checked for the client certificate when client_cert is on.
    crl_file: str | None = None
    dh_params_file: str | None = None
    extra_options: int = 0  # more SSL.OP_* bits, e.g. OP_NO_TICKET


# X509_V_ERR_UNABLE_TO_GET_CRL: a chain whose issuer has no CRL loaded; GnuTLS (and so ocserv)
# accepts such a chain, OpenSSL with CRL checking would not.
_UNABLE_TO_GET_CRL = 3


def _accept_verified(
    _conn: SSL.Connection, _cert: object, errnum: int, _depth: int, ok: int
) -> bool:
    # OpenSSL has already checked the chain against ca_file (and the CRL); keep its verdict.
    return bool(ok) or errnum == _UNABLE_TO_GET_CRL


def load_crls(path: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (several blocks allowed) or the one in a DER file."""
    with open(path, "rb") as file:
        data = file.read()
    marker = b"-----BEGIN X509 CRL-----"
    try:
        if marker not in data:
            return [x509.load_der_x509_crl(data)]
        return [x509.load_pem_x509_crl(marker + block) for block in data.split(marker)[1:]]
    except ValueError as exc:
        raise ValueError(f"{path}: not a CRL ({exc})") from exc


def make_server_context(settings: TlsServerSettings) -> SSL.Context:
    """Build a server `SSL.Context` from plain settings (files are read here, once)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(settings.min_version.value)
    if settings.max_version is not None:
        ctx.set_max_proto_version(settings.max_version.value)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | settings.extra_options
    if settings.server_preference:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_options(options)
    # Idle connections give their record buffers back (about 34 KiB each with OpenSSL 3):
    # most tunnels are idle most of the time, so this is most of a session's TLS memory.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.ciphers is not None:
        ctx.set_cipher_list(settings.ciphers.encode("ascii"))
    if settings.tls13_ciphersuites is not None:
        ctx.set_tls13_ciphersuites(settings.tls13_ciphersuites.encode("ascii"))
    for chain_file, key_file in (
        (settings.cert_chain_file, settings.key_file),
        *settings.extra_cert_pairs,
    ):
        ctx.use_certificate_chain_file(chain_file)
        ctx.use_privatekey_file(key_file)
        ctx.check_privatekey()
    if settings.dh_params_file is not None:
        ctx.load_tmp_dh(settings.dh_params_file)
    if settings.client_cert is not ClientCertMode.NONE:
        if settings.ca_file is None:
            raise ValueError("client certificate verification needs a CA file")
        ctx.load_verify_locations(settings.ca_file)
        ctx.load_client_ca(settings.ca_file.encode())
        if settings.crl_file is not None:
            store = ctx.get_cert_store()
            assert store is not None  # a fresh context always has one
            for crl in load_crls(settings.crl_file):
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        mode = SSL.VERIFY_PEER
        if settings.client_cert is ClientCertMode.REQUIRED:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _accept_verified)
    return ctx


def install_sni_callback(
    context: SSL.Context, choose: Callable[[str | None], SSL.Context | None]
) -> None:
    """Let `choose(server_name)` swap in a per-vhost context during the handshake.

    `choose` gets the SNI host name (None when the client sent none, e.g. for an IP literal) and
    returns the context to use, or None to keep `context`.
    """

    def on_servername(conn: SSL.Connection) -> None:
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace") if raw is not None else None
        chosen = choose(name)
        if chosen is not None:
            conn.set_context(chosen)
            # OpenSSL copied the verify mode from the first context when the connection was
            # made; the client-certificate mode must follow the chosen host (see the module
            # docstring for what else stays the first context's).
            mode = chosen.get_verify_mode()
            conn.set_verify(mode, _accept_verified if mode else None)

    context.set_tlsext_servername_callback(on_servername)


class TlsStream(trio.abc.Stream):
    """TLS over a transport stream, driven through pyOpenSSL memory BIOs.

    One task may send while another receives (the CSTP tunnel does). Ciphertext leaves the
    outgoing BIO only while `_send_lock` is held, so records reach the transport in the order
    OpenSSL produced them; only one task reads the transport at a time, others wait for its data.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: SSL.Context,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._conn = SSL.Connection(context, None)
        # The raw handles for the hot path (see the module docstring).
        self._ssl: Any = self._conn._ssl
        self._outgoing_bio: Any = self._conn._from_ssl
        if server_side:
            self._conn.set_accept_state()
        else:
            if server_hostname is not None:
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
            self._conn.set_connect_state()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._data_arrived = trio.Event()
        self._handshake_lock = trio.Lock()
        self._handshake_done = False
        self._closed = False
        self._sending = False
        self._receiving = False
        self._transport_eof = False

    # -- introspection -------------------------------------------------------------------------

    @property
    def connection(self) -> SSL.Connection:
        """The underlying pyOpenSSL connection (for callbacks that need more than we expose)."""
        return self._conn

    @property
    def tls_version(self) -> str:
        """Negotiated version name, e.g. ``TLSv1.3`` (empty before the handshake)."""
        return self._conn.get_protocol_version_name() if self._handshake_done else ""

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite name in OpenSSL spelling, e.g. ``TLS_AES_256_GCM_SHA384``."""
        return self._conn.get_cipher_name()

    @property
    def server_name(self) -> str | None:
        """The SNI host name the client sent, if any."""
        raw = self._conn.get_servername()
        return raw.decode("ascii", "replace") if raw is not None else None

    def peer_certificate(self) -> x509.Certificate | None:
        """The verified client (or server, on a client stream) certificate, if one was sent."""
        return self._conn.get_peer_certificate(as_cryptography=True)

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        return self._conn.get_peer_cert_chain(as_cryptography=True) or []

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """RFC 5705 / RFC 8446 7.5 exporter; `context=None` means "no context"."""
        if not self._handshake_done:
            raise trio.ClosedResourceError("exporter needs a finished handshake")
        return self._conn.export_keying_material(label, length, context)

    def raw_handles(self) -> tuple[Any, Any, Any]:
        """The connection's SSL handle and its incoming and outgoing memory BIOs (cffi
        pointers), for a data path that drives the record layer itself (server/cstp_fastpath).
        While it does, this stream must not be used."""
        return self._ssl, self._conn._into_ssl, self._outgoing_bio

    # -- the I/O engine ------------------------------------------------------------------------

    def _pending_ciphertext(self) -> bytes:
        """All ciphertext OpenSSL queued, in one read of exactly its size (b"" if none)."""
        pending = _lib.BIO_get_mem_data(self._outgoing_bio, _ffi.NULL)
        return self._conn.bio_read(pending) if pending > 0 else b""

    async def _flush(self, *, wait: bool = True) -> bool:
        """Send what OpenSSL queued; True if anything was sent. With `wait=False`, leave it to a
        task already sending: that task drains the BIO until empty, so a reader never waits
        behind a slow writer.

        Not a checkpoint by itself (the transport's send is): every scheduler round trip costs
        the tunnel per batch, so locks are taken without one when free and callers add a
        checkpoint only where nothing else was awaited."""
        lock = self._send_lock
        if lock.locked():
            if not wait:
                return False
            await lock.acquire()
        elif not wait and _lib.BIO_get_mem_data(self._outgoing_bio, _ffi.NULL) <= 0:
            return False
        else:
            lock.acquire_nowait()
        try:
            sent = False
            while data := self._pending_ciphertext():
                await self.transport_stream.send_all(data)
                sent = True
            return sent
        finally:
            lock.release()

    async def _read_transport(self) -> None:
        if self._receive_lock.locked():
            # Another task is already reading; its bytes land in the same BIO, so just wait.
            arrived = self._data_arrived
            await arrived.wait()
            return
        # Free (checked above): take it without a scheduler round trip; the read is a checkpoint.
        self._receive_lock.acquire_nowait()
        try:
            data = await self.transport_stream.receive_some(_TRANSPORT_READ_SIZE)
            if data:
                self._conn.bio_write(data)
            else:
                self._transport_eof = True
                self._conn.bio_shutdown()
        finally:
            # Wake waiters even on error or cancellation so they retry (and read themselves).
            self._data_arrived.set()
            self._data_arrived = trio.Event()
            self._receive_lock.release()

    async def _drive(
        self, operation: Callable[[], _T], *, reading: bool = False, flush: bool = True
    ) -> _T:
        """Run one OpenSSL call until it completes, moving ciphertext as it asks.

        `flush=False` leaves the produced ciphertext in the BIO for the caller to send in a batch
        (what OpenSSL needs from the peer first is still flushed). A checkpoint when it
        returns normally: once, whether or not it had to wait for the transport."""
        waited = False
        while True:
            try:
                result = operation()
            except SSL.WantReadError:
                await self._flush(wait=not reading)
                if self._transport_eof:
                    raise trio.BrokenResourceError("transport closed mid-TLS") from None
                await self._read_transport()
                waited = True
                continue
            except SSL.ZeroReturnError:
                raise
            except SSL.Error as exc:
                raise await self._broken(exc, reading=reading) from exc
            if flush and await self._flush(wait=not reading):
                waited = True
            if not waited:
                await trio.lowlevel.checkpoint()
            return result

    async def _broken(self, exc: SSL.Error, *, reading: bool) -> trio.BrokenResourceError:
        # Alerts OpenSSL queued for the peer (e.g. handshake_failure) still go out.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush(wait=not reading)
        return trio.BrokenResourceError(f"TLS error: {exc!r}")

    async def _write_plaintext(self, data: bytes | bytearray | memoryview) -> None:
        """SSL_write all of `data` into the outgoing BIO without sending it (the caller flushes).

        Fast path: with memory BIOs SSL_write completes synchronously; only a write that needs
        the peer first (WantRead) goes through `_drive`. Slices are memoryviews: no copies."""
        view = memoryview(data)
        while view:
            try:
                try:
                    written = self._conn.send(view)
                except SSL.WantReadError:
                    written = await self._drive(
                        functools.partial(self._conn.send, view), flush=False
                    )
            except SSL.ZeroReturnError:
                raise trio.BrokenResourceError("peer closed the TLS session") from None
            except SSL.Error as exc:
                raise await self._broken(exc, reading=False) from exc
            view = view[written:]

    # -- trio.abc.Stream -----------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake (idempotent; send/receive call it implicitly)."""
        if self._closed:
            raise trio.ClosedResourceError
        if self._handshake_done:
            return  # the per-read fast path: no lock, no checkpoint
        async with self._handshake_lock:
            if not self._handshake_done:
                await self._drive(self._conn.do_handshake)
                self._handshake_done = True

    @contextlib.contextmanager
    def _sender(self) -> Iterator[None]:
        """One sending task at a time (send_all and send_records exclude each other)."""
        if self._closed:
            raise trio.ClosedResourceError
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sender():
            await self.do_handshake()
            view = memoryview(data)
            # Record-sized steps: the transport's backpressure reaches the writer per record.
            for start in range(0, len(view), _PLAINTEXT_CHUNK):
                await self._write_plaintext(view[start : start + _PLAINTEXT_CHUNK])
                await self._flush()
            if not view:
                await trio.lowlevel.checkpoint()

    async def send_records(self, records: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send each item as its own TLS record, all of them in one transport `send_all`.

        CSTP needs one frame per record (openconnect reads one frame per record); batching the
        ciphertext saves a syscall per frame. An item over 16 KiB spans several records. Same
        locking and ordering as `send_all` (they exclude each other)."""
        with self._sender():
            await self.do_handshake()
            ssl, write = self._ssl, _lib.SSL_write
            for record in records:
                # Fast path for bytes (cffi passes them without a copy). pyOpenSSL enables
                # partial writes (an item over 16 KiB may return after one record): the rest,
                # or a failed write retried with the same buffer as OpenSSL requires, goes
                # through pyOpenSSL, which raises what a failure means.
                rest: bytes | bytearray | memoryview = record
                if type(record) is bytes:
                    length = len(record)
                    written = write(ssl, record, length) if length else 0
                    if written == length:
                        continue
                    if written > 0:
                        rest = memoryview(record)[written:]
                await self._write_plaintext(rest)
            if not await self._flush():
                await trio.lowlevel.checkpoint()  # nothing to send (no items, or all empty)

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        async with self._send_lock:
            await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            await self.do_handshake()
            size = _PLAINTEXT_BATCH if max_bytes is None else max_bytes
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
            try:
                return await self._drive(lambda: self._read_records(size), reading=True)
            except SSL.ZeroReturnError:
                # The peer's close_notify: a clean end of stream.
                return b""
        finally:
            self._receiving = False

    def _read_records(self, size: int) -> bytes:
        """The plaintext of every record OpenSSL can decrypt now, up to `size` bytes; raises
        WantReadError when it needs more ciphertext first.

        openconnect sends one CSTP frame per record: one SSL_read per record straight into the
        scratch buffer and one copy out per batch, instead of an allocation per record."""
        scratch = _scratch
        size = min(size, _PLAINTEXT_BATCH)
        ssl, read, pointer = self._ssl, _lib.SSL_read, scratch.pointer
        got = read(ssl, pointer, size)
        if got <= 0:
            if _lib.SSL_get_error(ssl, got) == _SSL_ERROR_WANT_READ:
                raise SSL.WantReadError
            # close_notify or an error: OpenSSL reports it again, pyOpenSSL raises it.
            return self._conn.recv(size)
        total = got
        while total < size:
            got = read(ssl, pointer + total, size - total)
            if got <= 0:
                if _lib.SSL_get_error(ssl, got) != _SSL_ERROR_WANT_READ:
                    # close_notify or an error: the next read reports it again. The error
                    # queue is per thread, shared with every other connection: leave it empty.
                    _lib.ERR_clear_error()
                break
            total += got
        return scratch.view[:total].tobytes()

    async def aclose(self, *, deny: bool = False) -> None:
        """Send close_notify (best effort) and close the transport.

        `deny=True` is where ocserv would send a fatal access_denied alert; see the module
        docstring for why close_notify is sent instead.
        """
        del deny
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshake_done and not self._transport_eof:
                with contextlib.suppress(SSL.Error):
                    self._conn.shutdown()
                with trio.move_on_after(1):
                    await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()
