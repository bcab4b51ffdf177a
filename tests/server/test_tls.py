"""TlsStream against stdlib-ssl and pyOpenSSL clients over in-memory streams.

Test rules: no sockets except one loopback TCP test (port 0); every test runs under `fail_after`.
Certificates are generated per test session with `cryptography` (EC P-256, fast).
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from trio_ocserv.server.tls import (
    ClientCertMode,
    TlsServerSettings,
    TlsStream,
    TlsVersion,
    install_sni_callback,
    make_server_context,
)

TIMEOUT = 10
EXPORTER_LABEL = b"EXPORTER-openconnect-psk"


@attrs.frozen
class Pki:
    ca_file: Path
    server_cert: Path
    server_key: Path
    other_cert: Path
    other_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    base = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Test CA", ca_key, "Test CA", ca_key, ca=True)
    _write(base / "ca.pem", ca, None)
    made: dict[str, Path] = {}
    for name, san in (("server", "vpn.example"), ("other", "other.example"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name if san is None else san, key, "Test CA", ca_key, ca=False, san=san)
        _write(base / f"{name}.pem", cert, key)
        made[name] = base / f"{name}.pem"
    yield Pki(
        ca_file=base / "ca.pem",
        server_cert=made["server"],
        server_key=made["server"].with_suffix(".key"),
        other_cert=made["other"],
        other_key=made["other"].with_suffix(".key"),
        client_cert=made["client"],
        client_key=made["client"].with_suffix(".key"),
    )


def _server_ctx(pki: Pki, **kw: object) -> SSL.Context:
    return make_server_context(
        TlsServerSettings(
            cert_chain_file=str(pki.server_cert),
            key_file=str(pki.server_key),
            ca_file=str(pki.ca_file),
            **kw,  # type: ignore[arg-type]
        )
    )


def _stdlib_client_ctx(pki: Pki, *, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def _pyopenssl_client_ctx(pki: Pki, *, cert: bool = False) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(str(pki.ca_file))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    if cert:
        ctx.use_certificate_file(str(pki.client_cert))
        ctx.use_privatekey_file(str(pki.client_key))
    return ctx


async def _stdlib_pair(
    pki: Pki,
    server_ctx: SSL.Context,
    make_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = (
        trio.testing.memory_stream_pair
    ),
) -> tuple[TlsStream, trio.SSLStream[trio.abc.Stream]]:
    """Our server and a stdlib client over an in-memory transport, handshake done."""
    server_transport, client_transport = make_pair()
    server = TlsStream(server_transport, server_ctx)
    client = trio.SSLStream(
        client_transport, _stdlib_client_ctx(pki), server_hostname="vpn.example"
    )
    await _handshake_both(server, client)
    return server, client


async def _handshake_both(server: TlsStream, client: trio.abc.Stream) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
async def test_stdlib_client_handshake_and_data_both_ways(
    pki: Pki, version: ssl.TLSVersion, name: str
) -> None:
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki))
        client = trio.SSLStream(
            client_transport,
            _stdlib_client_ctx(pki, version=version),
            server_hostname="vpn.example",
        )
        await _handshake_both(server, client)
        assert server.tls_version == name
        assert server.cipher is not None
        assert "GCM" in server.cipher or "CHACHA" in server.cipher
        assert server.server_name == "vpn.example"
        assert server.peer_certificate() is None

        await client.send_all(b"POST / HTTP/1.1\r\n\r\n")
        assert await server.receive_some() == b"POST / HTTP/1.1\r\n\r\n"
        await server.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
        assert await client.receive_some() == b"HTTP/1.1 200 OK\r\n\r\n"


async def _receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some()
        assert chunk, "stream ended early"
        got += chunk
    return bytes(got)


async def test_large_writes_concurrently_in_both_directions(pki: Pki) -> None:
    blob_up = bytes(range(256)) * 4096  # 1 MiB
    blob_down = bytes(reversed(range(256))) * 3000
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki))
        client = trio.SSLStream(
            client_transport, _stdlib_client_ctx(pki), server_hostname="vpn.example"
        )
        results: dict[str, bytes] = {}

        async def server_reads() -> None:
            results["up"] = await _receive_exactly(server, len(blob_up))

        async def client_reads() -> None:
            results["down"] = await _receive_exactly(client, len(blob_down))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_reads)
            nursery.start_soon(client_reads)
            nursery.start_soon(client.send_all, blob_up)
            nursery.start_soon(server.send_all, blob_down)
        assert results["up"] == blob_up
        assert results["down"] == blob_down


async def test_server_close_sends_close_notify(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        await server.send_all(b"bye")
        await server.aclose(deny=True)
        assert await _receive_exactly(client, 3) == b"bye"
        # A clean close_notify reads as end-of-stream, not as an error.
        assert await client.receive_some() == b""
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"more")


async def test_client_close_notify_reads_as_eof(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            assert await server.receive_some() == b""
        await server.aclose()


async def test_truncated_transport_is_broken_not_eof(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        await client.transport_stream.aclose()  # TCP gone without close_notify
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()


async def test_garbage_instead_of_client_hello_is_broken_resource(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki))
        await client_transport.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()


async def test_eof_before_any_byte_is_broken_resource(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki))
        await client_transport.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()


@pytest.mark.parametrize("max_version", [TlsVersion.TLS1_2, TlsVersion.TLS1_3])
async def test_exporter_is_equal_on_both_sides(pki: Pki, max_version: TlsVersion) -> None:
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki, max_version=max_version))
        client = TlsStream(
            client_transport,
            _pyopenssl_client_ctx(pki),
            server_side=False,
            server_hostname="vpn.example",
        )
        with pytest.raises(trio.ClosedResourceError):
            server.export_keying_material(EXPORTER_LABEL, 32)
        await _handshake_both(server, client)
        expected_version = "TLSv1.2" if max_version is TlsVersion.TLS1_2 else "TLSv1.3"
        assert server.tls_version == client.tls_version == expected_version
        server_psk = server.export_keying_material(EXPORTER_LABEL, 32)
        assert len(server_psk) == 32
        assert client.export_keying_material(EXPORTER_LABEL, 32) == server_psk
        assert server.export_keying_material(b"EXPORTER-other", 32) != server_psk
        # Data still flows after exporting (the exporter does not disturb the record layer).
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"


async def test_required_client_certificate(pki: Pki) -> None:
    ctx = _server_ctx(pki, client_cert=ClientCertMode.REQUIRED)
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, ctx)
        client = TlsStream(
            client_transport, _pyopenssl_client_ctx(pki, cert=True), server_side=False
        )
        await _handshake_both(server, client)
        # TLS 1.3 clients see the server finish before it checks their cert; read to be sure.
        await client.send_all(b"x")
        assert await server.receive_some() == b"x"
        cert = server.peer_certificate()
        assert cert is not None
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "client"
        assert len(server.peer_certificate_chain()) >= 1

    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, ctx)
        client = TlsStream(client_transport, _pyopenssl_client_ctx(pki), server_side=False)

        async def client_side() -> None:
            # The rejection reaches the client as an alert: either at handshake or first read.
            with pytest.raises(trio.BrokenResourceError):
                await client.do_handshake()
                await client.receive_some()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            with pytest.raises(trio.BrokenResourceError):
                await server.do_handshake()


async def test_optional_client_certificate_may_be_absent(pki: Pki) -> None:
    ctx = _server_ctx(pki, client_cert=ClientCertMode.OPTIONAL)
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, ctx)
        client = TlsStream(client_transport, _pyopenssl_client_ctx(pki), server_side=False)
        await _handshake_both(server, client)
        await client.send_all(b"x")
        assert await server.receive_some() == b"x"
        assert server.peer_certificate() is None


def test_client_cert_mode_without_ca_is_rejected(pki: Pki) -> None:
    with pytest.raises(ValueError, match="CA file"):
        make_server_context(
            TlsServerSettings(
                cert_chain_file=str(pki.server_cert),
                key_file=str(pki.server_key),
                client_cert=ClientCertMode.REQUIRED,
            )
        )


async def test_sni_callback_swaps_context(pki: Pki) -> None:
    default_ctx = _server_ctx(pki)
    other_ctx = make_server_context(
        TlsServerSettings(cert_chain_file=str(pki.other_cert), key_file=str(pki.other_key))
    )
    seen: list[str | None] = []

    def choose(name: str | None) -> SSL.Context | None:
        seen.append(name)
        return other_ctx if name == "other.example" else None

    install_sni_callback(default_ctx, choose)
    with trio.fail_after(TIMEOUT):
        for host in ("other.example", "vpn.example"):
            server_transport, client_transport = trio.testing.memory_stream_pair()
            server = TlsStream(server_transport, default_ctx)
            # stdlib verifies the host name, so success proves the right certificate was served.
            client = trio.SSLStream(client_transport, _stdlib_client_ctx(pki), server_hostname=host)
            await _handshake_both(server, client)
            assert server.server_name == host
    assert seen == ["other.example", "vpn.example"]


async def test_cipher_and_version_limits(pki: Pki) -> None:
    ctx = _server_ctx(pki, max_version=TlsVersion.TLS1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    with trio.fail_after(TIMEOUT):
        server, _client = await _stdlib_pair(pki, ctx)
        assert server.tls_version == "TLSv1.2"
        assert server.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"


async def test_reader_is_not_stuck_behind_a_blocked_writer(pki: Pki) -> None:
    # The tunnel reads and writes at once; a peer that does not read must not stop our reads.
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.lockstep_stream_pair()
        # TLS 1.2: a TLS 1.3 server's post-handshake tickets would need a reading client here.
        server = TlsStream(server_transport, _server_ctx(pki, max_version=TlsVersion.TLS1_2))
        client = trio.SSLStream(
            client_transport, _stdlib_client_ctx(pki), server_hostname="vpn.example"
        )
        await _handshake_both(server, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"x" * 200_000)  # the client never reads this
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(client.send_all, b"ping")
            assert await server.receive_some() == b"ping"
            nursery.cancel_scope.cancel()


async def test_concurrent_receives_are_refused(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, _client = await _stdlib_pair(pki, _server_ctx(pki))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            nursery.cancel_scope.cancel()


async def test_over_loopback_tcp(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with listeners[0]:
            client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
            server_tcp = await listeners[0].accept()
            server = TlsStream(server_tcp, _server_ctx(pki))
            client = trio.SSLStream(
                client_tcp, _stdlib_client_ctx(pki), server_hostname="vpn.example"
            )
            await _handshake_both(server, client)
            await client.send_all(b"hello over tcp")
            assert await _receive_exactly(server, 14) == b"hello over tcp"
            await server.aclose()
            assert await client.receive_some() == b""
            await client.aclose()


@attrs.define
class CountingTransport(trio.abc.Stream):
    """Wraps a transport stream and records every `send_all` call's bytes."""

    inner: trio.abc.Stream
    writes: list[bytes] = attrs.Factory(list)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _record_types(ciphertext: bytes) -> list[int]:
    """Content types of the TLS records in `ciphertext` (5-byte header: type, version, length)."""
    types: list[int] = []
    offset = 0
    while offset < len(ciphertext):
        length = int.from_bytes(ciphertext[offset + 3 : offset + 5], "big")
        types.append(ciphertext[offset])
        offset += 5 + length
    assert offset == len(ciphertext), "the write ended inside a record"
    return types


@pytest.mark.parametrize("max_version", [TlsVersion.TLS1_2, TlsVersion.TLS1_3])
async def test_send_records_is_one_record_per_item_in_one_transport_write(
    pki: Pki, max_version: TlsVersion
) -> None:
    # Items of every buffer type and varied sizes, including an empty one (no record for it).
    records: list[bytes | bytearray | memoryview] = [bytes([n]) * (1 + 97 * n) for n in range(40)]
    records += [bytearray(b"bytearray frame"), memoryview(b"xxmemoryview frame")[2:]]
    expected = [bytes(r) for r in records]
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        counting = CountingTransport(server_transport)
        server = TlsStream(counting, _server_ctx(pki, max_version=max_version))
        client = TlsStream(client_transport, _pyopenssl_client_ctx(pki), server_side=False)
        await _handshake_both(server, client)
        # TLS 1.3 tickets follow the handshake: let the client take them before counting.
        await client.send_all(b"sync")
        assert await server.receive_some() == b"sync"
        counting.writes.clear()

        await server.send_records(records)
        assert len(counting.writes) == 1
        # One application-data record per item (the empty one included), in one write...
        assert _record_types(counting.writes[0]) == [23] * len(records)
        # ...carrying exactly the items, in order (our reader may coalesce buffered records).
        joined = b"".join(expected)
        assert await _receive_exactly(client, len(joined)) == joined


async def test_send_records_large_item_spans_records_and_keeps_order(pki: Pki) -> None:
    big = bytes(range(256)) * 100  # 25600 bytes: more than one 16 KiB record
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        await server.send_records([b"first", big, b"last"])
        await server.send_all(b"after")
        total = 5 + len(big) + 4 + 5
        assert await _receive_exactly(client, total) == b"first" + big + b"last" + b"after"


async def test_send_records_excludes_a_concurrent_send_and_refuses_after_close(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, _client = await _stdlib_pair(
            pki, _server_ctx(pki, max_version=TlsVersion.TLS1_2), trio.testing.lockstep_stream_pair
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_records, [b"x" * 1400] * 8)  # the client never reads
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.send_records([b"y"])
            with pytest.raises(trio.BusyResourceError):
                await server.send_all(b"y")
            nursery.cancel_scope.cancel()
        # (the cancelled write left the lockstep transport unusable: close a fresh stream)
        closed = TlsStream(trio.testing.memory_stream_pair()[0], _server_ctx(pki))
        await closed.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await closed.send_records([b"z"])


async def test_send_all_accepts_bytearray_and_memoryview(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        await server.send_all(bytearray(b"abc"))
        await server.send_all(memoryview(b"--def--")[2:5])
        assert await _receive_exactly(client, 6) == b"abcdef"


async def test_send_records_to_a_gone_peer_is_broken_resource(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client = await _stdlib_pair(pki, _server_ctx(pki))
        await client.transport_stream.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await server.send_records([b"frame"] * 3)


async def test_receive_some_returns_every_buffered_record_at_once(pki: Pki) -> None:
    # openconnect writes one CSTP frame per record; one read must not cost one await per frame.
    frames = [bytes([n]) * 1400 for n in range(30)]
    with trio.fail_after(TIMEOUT):
        server_transport, client_transport = trio.testing.memory_stream_pair()
        server = TlsStream(server_transport, _server_ctx(pki))
        client = TlsStream(client_transport, _pyopenssl_client_ctx(pki), server_side=False)
        await _handshake_both(server, client)
        await client.send_records(frames)
        assert await server.receive_some() == b"".join(frames)
        await client.send_records(frames)
        assert await server.receive_some(2000) == frames[0] + frames[1][:600]
        assert await server.receive_some(800) == frames[1][600:]


async def _pyopenssl_pair_with_tap(
    pki: Pki,
) -> tuple[TlsStream, TlsStream, trio.abc.SendStream, trio.abc.ReceiveStream]:
    """Our server and our pyOpenSSL client, handshake done; from then on the client's
    ciphertext is held in a tap (read it, then send it on, changed or not, to the server)."""
    server_transport, client_transport = trio.testing.memory_stream_pair()
    server = TlsStream(server_transport, _server_ctx(pki))
    client = TlsStream(client_transport, _pyopenssl_client_ctx(pki), server_side=False)
    await _handshake_both(server, client)
    tap_in, tap_out = trio.testing.memory_stream_one_way_pair()
    # (the client reads nothing more; its own transport stays open to carry what the tap held)
    client.transport_stream = trio.StapledStream(
        tap_in, trio.testing.memory_stream_one_way_pair()[1]
    )
    return server, client, client_transport, tap_out


async def test_records_then_close_notify_in_one_read_give_data_then_eof(pki: Pki) -> None:
    with trio.fail_after(TIMEOUT):
        server, client, to_server, tap = await _pyopenssl_pair_with_tap(pki)
        await client.send_records([b"one" * 100, b"two" * 100])
        await client.aclose()  # close_notify lands behind the records, in the same read
        await to_server.send_all(await tap.receive_some())
        assert await server.receive_some() == b"one" * 100 + b"two" * 100
        assert await server.receive_some() == b""


async def test_corrupt_record_breaks_after_the_good_ones_and_leaves_others_alone(
    pki: Pki,
) -> None:
    with trio.fail_after(TIMEOUT):
        server, client, to_server, tap = await _pyopenssl_pair_with_tap(pki)
        other_transport, other_client_transport = trio.testing.memory_stream_pair()
        other = TlsStream(other_transport, _server_ctx(pki))
        other_client = TlsStream(
            other_client_transport, _pyopenssl_client_ctx(pki), server_side=False
        )
        await _handshake_both(other, other_client)

        await client.send_records([b"good" * 50, b"fine" * 50, b"lost" * 50])
        wire = bytearray(await tap.receive_some())
        wire[-1] ^= 0x01  # the last record's authentication tag
        await to_server.send_all(wire)
        assert await server.receive_some() == b"good" * 50 + b"fine" * 50

        # OpenSSL's error queue is per thread: the failure seen above must not make another
        # connection's "need more data" look like an error.
        async def send_later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            await other_client.send_all(b"still fine")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_later)
            assert await other.receive_some() == b"still fine"
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()


async def test_receive_some_above_one_batch_loses_nothing(pki: Pki) -> None:
    frames = [bytes([n]) * 10_000 for n in range(20)]  # 200 kB: more than one read returns
    with trio.fail_after(TIMEOUT):
        server, client, to_server, tap = await _pyopenssl_pair_with_tap(pki)
        await client.send_records(frames)
        await to_server.send_all(await tap.receive_some())
        got = bytearray()
        while len(got) < 200_000:
            chunk = await server.receive_some(1_000_000)
            assert chunk
            got += chunk
        assert got == b"".join(frames)
