"""The C data path (`_dtls_fastpath`) against the pure-Python record layer it stands in for.

Rules: loopback UDP (port 0) and MemoryTun only; no root. The Python record protection and
replay window are the reference: the C side must seal byte-identical records, accept and refuse
the same ones, and share one window with the engine after `take_over`.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import require_fastpath
from trio_ocserv.net.tun import MemoryTun
from trio_ocserv.protocol.dtls.client import DtlsPskClient
from trio_ocserv.protocol.dtls.events import ApplicationData
from trio_ocserv.protocol.dtls.record import RECORD_HEADER, SaltedAeadProtection
from trio_ocserv.protocol.dtls.replay import ReplayWindow
from trio_ocserv.protocol.dtls.server import (
    DtlsServer,
    LegacyServerParameters,
    PskServerParameters,
)
from trio_ocserv.protocol.dtls.suites import DEFAULT_PSK_PREFERENCE
from trio_ocserv.server.dtls_fastpath import address_key, handshake_answer, take_over

APP = 23
VERSION = 0xFEFD
EPOCH = 1
PACKET = bytes.fromhex("4500001c00010000400100000a0000020a000001") + b"\x08\x00" + bytes(6)


@pytest.fixture
def fp() -> ModuleType:
    return require_fastpath()


def protection(key: bytes, salt: bytes) -> SaltedAeadProtection:
    return SaltedAeadProtection(AESGCM(key), salt, key)


KEYS = {"aes128": (bytes(range(16)), b"\x01\x02\x03\x04"), "aes256": (bytes(range(32)), b"saLT")}


def make_path(fp: ModuleType, size: str = "aes256", owner: object = None) -> Any:
    key, salt = KEYS[size]
    # The client's write key is the server's read key: one key for both keeps the tests short.
    return fp.GcmDataPath(key, salt, key, salt, EPOCH, VERSION, owner)


@given(
    size=st.sampled_from(sorted(KEYS)),
    content_type=st.sampled_from([21, 23]),
    seq=st.integers(0, (1 << 48) - 2),
    payload=st.binary(max_size=2000),
)
@settings(max_examples=60, deadline=None)
def test_seal_is_byte_identical_to_the_python_record_layer(
    size: str, content_type: int, seq: int, payload: bytes
) -> None:
    fp = require_fastpath()
    path = make_path(fp, size)
    epoch_seq = EPOCH << 48 | seq
    expected = protection(*KEYS[size]).seal(content_type, VERSION, epoch_seq, payload)
    assert path.seal(content_type, epoch_seq, payload) == expected


def test_open_datagram_accepts_once_and_refuses_the_rest(fp: ModuleType) -> None:
    path = make_path(fp)
    python = protection(*KEYS["aes256"])
    record = python.seal(APP, VERSION, EPOCH << 48 | 5, b"\x00" + PACKET)
    assert path.open_datagram(record) == b"\x00" + PACKET
    assert path.open_datagram(record) == b""  # a replay
    tampered = bytearray(python.seal(APP, VERSION, EPOCH << 48 | 6, b"\x00" + PACKET))
    tampered[-1] ^= 1
    assert path.open_datagram(bytes(tampered)) == b""  # forged: dropped
    assert path.check(6)  # ...without touching the window
    other_epoch = python.seal(APP, VERSION, 2 << 48 | 7, b"x")
    assert path.open_datagram(other_epoch) is None
    alert = python.seal(21, VERSION, EPOCH << 48 | 8, b"\x01\x00")
    assert path.open_datagram(alert) is None
    assert path.open_datagram(record + b"trailing") is None  # not exactly one record
    assert path.open_datagram(b"\x17\xfe\xfd") is None


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=200))
@settings(max_examples=80, deadline=None)
def test_replay_window_behaves_like_the_python_one(ops: list[tuple[bool, int]]) -> None:
    fp = require_fastpath()
    path, reference = make_path(fp), ReplayWindow()
    for mark, seq in ops:
        fresh = reference.check(seq)
        assert path.check(seq) == fresh
        if mark and fresh:  # the engine marks only what passed the check
            path.mark(seq)
            reference.mark(seq)
    assert path.replay_state() == reference.state()


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def attach(path: Any, tun: MemoryTun, server: socket.socket, peer: tuple[str, int]) -> bytes:
    family, key = address_key(peer)
    path.attach(tun.fileno(), server.fileno(), family, key)
    return key


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2)[0], "no datagram arrived"


def test_receive_udp_sorts_datagrams(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket]
) -> None:
    server, client = udp
    owner = object()
    path = make_path(fp, owner=owner)
    python = protection(*KEYS["aes256"])
    with MemoryTun() as tun:
        key = attach(path, tun, server, client.getsockname())
        routes = {key: path}
        data = python.seal(APP, VERSION, EPOCH << 48 | 1, b"\x00" + PACKET)
        dpd = python.seal(APP, VERSION, EPOCH << 48 | 2, b"\x03probe")
        handshake = b"\x16\xfe\xfd" + bytes(30)
        for datagram in (data, data, dpd, handshake, b"short"):
            client.sendto(datagram, server.getsockname())
        wait_readable(server)
        datagrams, payloads, touched, more = fp.receive_udp(server.fileno(), routes, 64)
        assert tun.written_nowait() == [PACKET]  # the replayed copy was dropped
        assert payloads == [(path, b"\x03probe")]
        assert datagrams == [(handshake, client.getsockname(), None)]  # b"short" is under a header
        assert touched == [path] and path.owner is owner and more is False
        assert path.take_counts() == (1, len(PACKET), 0, 0, 0, 2)  # data + DPD records
        assert path.take_counts() == (0, 0, 0, 0, 0, 0)


def test_receive_udp_forwards_the_tun_of_a_forwarding_path_at_once(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket]
) -> None:
    """What the kernel queued on the tun while a batch was written (here: injected) leaves
    in the same call, numbered from the path's sequence, while `forwarding` is set."""
    server, client = udp
    path = make_path(fp)
    python = protection(*KEYS["aes256"])
    with MemoryTun() as tun:
        key = attach(path, tun, server, client.getsockname())
        path.set_write_sequence(EPOCH << 48 | 7)
        for forwarding, seq in ((False, 1), (True, 2)):
            path.forwarding = forwarding
            tun.inject(PACKET)
            record = python.seal(APP, VERSION, EPOCH << 48 | seq, b"\x00" + PACKET)
            client.sendto(record, server.getsockname())
            wait_readable(server)
            fp.receive_udp(server.fileno(), {key: path}, 64)
            assert tun.written_nowait() == [PACKET]
        # Not forwarding, the first reply waited; forwarding, both left (in order).
        for expected in (EPOCH << 48 | 7, EPOCH << 48 | 8):
            record = client.recv(65536)
            assert RECORD_HEADER.unpack_from(record)[2] == expected
        assert path.take_counts() == (2, 2 * len(PACKET), 2, 2 * len(PACKET), 0, 2)
        assert path.take_sequence() == EPOCH << 48 | 9


def test_receive_udp_stops_at_the_limit(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket]
) -> None:
    server, client = udp
    for i in range(5):
        client.sendto(b"\x16\xfe\xfd" + bytes([i]) * 20, server.getsockname())
    wait_readable(server)
    first = fp.receive_udp(server.fileno(), {}, 3)
    rest = fp.receive_udp(server.fileno(), {}, 64)
    assert (len(first[0]), first[3]) == (3, True)
    assert (len(rest[0]), rest[3]) == (2, False)


def test_a_detached_path_leaves_everything_to_python(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket]
) -> None:
    server, client = udp
    path = make_path(fp)
    with MemoryTun() as tun:
        key = attach(path, tun, server, client.getsockname())
        path.detach()
        data = protection(*KEYS["aes256"]).seal(APP, VERSION, EPOCH << 48 | 1, b"\x00" + PACKET)
        client.sendto(data, server.getsockname())
        wait_readable(server)
        datagrams, _, touched, _ = fp.receive_udp(server.fileno(), {key: path}, 64)
        assert datagrams == [(data, client.getsockname(), None)] and touched == []
        assert tun.written_nowait() == []
        assert path.forward_tun(10) == -1  # detached: the caller takes its own path


def test_forward_tun_numbers_records_from_the_paths_sequence(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket]
) -> None:
    server, client = udp
    path = make_path(fp, "aes128")
    python = protection(*KEYS["aes128"])
    packets = [PACKET[:-1] + bytes([i % 256]) for i in range(150)]
    with MemoryTun() as tun:
        attach(path, tun, server, client.getsockname())
        first = EPOCH << 48 | 41
        path.set_write_sequence(first)
        assert path.forward_tun(10) == 0  # an empty tun
        for packet in packets:
            tun.inject(packet)
        assert path.forward_tun(100) == 100
        assert path.forward_tun(100) == 50
        assert path.take_counts() == (0, 0, 150, 150 * len(PACKET), 0, 0)
        assert path.take_sequence() == first + 150
        for i, packet in enumerate(packets):
            record = client.recv(65536)
            _, version, epoch_seq, length = RECORD_HEADER.unpack_from(record)
            assert (version, epoch_seq, length + 13) == (VERSION, first + i, len(record))
            assert python.open(APP, version, epoch_seq, record[13:]) == b"\x00" + packet
        tun._close_peer()  # the device went away: end of file on the server side
        with pytest.raises(EOFError):
            path.forward_tun(10)


def test_take_over_shares_one_replay_window_with_the_engine(fp: ModuleType) -> None:
    psk, app_id = bytes(range(32)), bytes(32 * [7])
    client = DtlsPskClient(psk, app_id)
    server = DtlsServer(PskServerParameters(psk))
    client.start(0.0)
    for _ in range(10):
        for datagram in client.datagrams_to_send():
            server.receive_datagram(datagram, 0.0)
        for datagram in server.datagrams_to_send():
            client.receive_datagram(datagram, 0.0)
    assert client.established and server.established
    first = client.send_application_data(b"\x00" + PACKET)
    assert server.open_application_datagram(first) == b"\x00" + PACKET
    path = take_over(server, owner=None)
    assert path is not None
    assert path.open_datagram(first) == b""  # the engine's window came along
    second = client.send_application_data(b"\x00second")
    assert path.open_datagram(second) == b"\x00second"
    assert server.open_application_datagram(second) == b""  # and the engine sees C's marks
    # One numbering for both: the engine's records come after those the C side took.
    start = path.take_sequence()
    assert path.take_sequence() == start + 1
    record = server.send_application_data(b"\x04")
    assert RECORD_HEADER.unpack_from(record)[2] == start + 2
    client.receive_datagram(path.seal(APP, start, b"\x00from-c"), 0.0)
    client.receive_datagram(record, 0.0)
    payloads = []
    while (event := client.next_event()) is not None:
        if isinstance(event, ApplicationData):
            payloads.append(event.payload)
    assert payloads == [b"\x00from-c", b"\x04"]


def test_address_keys_match_what_the_c_side_sees(fp: ModuleType) -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.socket(family, socket.SOCK_DGRAM)
        client = socket.socket(family, socket.SOCK_DGRAM)
        with server, client:
            server.bind((host, 0))
            client.bind((host, 0))
            path = make_path(fp)
            with MemoryTun() as tun:
                key = attach(path, tun, server, client.getsockname())
                record = protection(*KEYS["aes256"]).seal(
                    APP, VERSION, EPOCH << 48 | 1, b"\x00" + PACKET
                )
                client.sendto(record, server.getsockname())
                wait_readable(server)
                assert fp.receive_udp(server.fileno(), {key: path}, 64)[2] == [path]
                assert tun.written_nowait() == [PACKET]


@given(junk=st.lists(st.binary(min_size=0, max_size=1600), min_size=1, max_size=20))
@settings(max_examples=40, deadline=None)
def test_junk_from_a_routed_peer_never_reaches_the_tun(junk: list[bytes]) -> None:
    fp = require_fastpath()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client, MemoryTun() as tun:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        path = make_path(fp)
        key = attach(path, tun, server, client.getsockname())
        for raw in junk:
            # Make some of it look like this epoch's data records, to reach the decryption.
            datagram = raw
            if len(raw) >= 13 and raw[0] % 2:
                datagram = RECORD_HEADER.pack(APP, VERSION, EPOCH << 48, len(raw) - 13) + raw[13:]
            client.sendto(datagram, server.getsockname())
        wait_readable(server)
        while select.select([server], [], [], 0.05)[0]:
            _, payloads, touched, _ = fp.receive_udp(server.fileno(), {key: path}, 64)
            assert payloads == [] and touched == []
        assert tun.written_nowait() == []
        assert path.take_counts() == (0, 0, 0, 0, 0, 0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_many_calls_leak_nothing(fp: ModuleType, udp: tuple[socket.socket, socket.socket]) -> None:
    """Every object the C side makes (results, replays, forgeries, address tuples) is freed."""
    server, client = udp
    path = make_path(fp)
    python = protection(*KEYS["aes256"])
    good = [python.seal(APP, VERSION, EPOCH << 48 | i, b"\x03" + bytes(100)) for i in range(64)]
    forged = bytearray(good[0])
    forged[-1] ^= 1

    def round_trip(n: int) -> None:
        for i in range(n):
            path.open_datagram(good[i % 64])  # fresh once, then replays
            path.open_datagram(bytes(forged))
            path.seal(APP, EPOCH << 48 | i, b"\x00" + PACKET)
            client.sendto(b"\x16\xfe\xfd" + bytes(20), server.getsockname())
            wait_readable(server)
            fp.receive_udp(server.fileno(), {}, 64)

    with MemoryTun() as tun:
        attach(path, tun, server, client.getsockname())
        round_trip(2000)  # warm up allocator pools
        before = _rss_bytes()
        round_trip(30000)
        assert _rss_bytes() - before < 1 << 20


@pytest.fixture
def receiver(fp: ModuleType, udp: tuple[socket.socket, socket.socket]) -> Iterator[Any]:
    """A UdpReceiver thread on the server socket, stopped and joined afterwards."""
    server, _ = udp
    receiver = fp.UdpReceiver(server.fileno())
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    yield receiver
    receiver.stop()
    thread.join(5)
    assert not thread.is_alive()
    receiver.close()


def take_when_woken(receiver: Any) -> tuple[list[Any], list[Any], list[Any]]:
    assert select.select([receiver.wake_fd], [], [], 2)[0], "the thread did not wake Python"
    result: tuple[list[Any], list[Any], list[Any]] = receiver.take()
    return result


def test_receive_thread_delivers_data_alone_and_hands_over_the_rest(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    server, client = udp
    path = make_path(fp, owner="owner")
    python = protection(*KEYS["aes256"])
    with MemoryTun() as tun:
        key = attach(path, tun, server, client.getsockname())
        receiver.add_route(key, path)
        path.forwarding = True
        tun.inject(PACKET[::-1])  # a reply already waiting: leaves right after the batch
        data = python.seal(APP, VERSION, EPOCH << 48 | 1, b"\x00" + PACKET)
        client.sendto(data, server.getsockname())
        select.select([tun._peer], [], [], 2)
        assert tun.written_nowait() == [PACKET]  # no Python call in between
        reply = client.recv(65536)
        assert python.open(APP, VERSION, RECORD_HEADER.unpack_from(reply)[2], reply[13:]) == (
            b"\x00" + PACKET[::-1]
        )
        # Python hears of it within NOTIFY_MS, with the counters.
        datagrams, payloads, touched = take_when_woken(receiver)
        assert (datagrams, payloads, touched) == ([], [], [path])
        assert path.take_counts() == (1, len(PACKET), 1, len(PACKET), 0, 1)
        # A DPD request and a stranger's datagram are handed over at once.
        dpd = python.seal(APP, VERSION, EPOCH << 48 | 2, b"\x03dpd")
        client.sendto(dpd, server.getsockname())
        datagrams, payloads, touched = take_when_woken(receiver)
        assert payloads == [(path, b"\x03dpd")] and touched == [path]
        client.sendto(b"\x16\xfe\xfd" + bytes(30), server.getsockname())
        datagrams, payloads, touched = take_when_woken(receiver)
        assert datagrams == [(b"\x16\xfe\xfd" + bytes(30), client.getsockname(), None)]
        # Unrouted, the same record is Python's to judge.
        receiver.remove_route(key)
        again = python.seal(APP, VERSION, EPOCH << 48 | 3, b"\x00" + PACKET)
        client.sendto(again, server.getsockname())
        datagrams, payloads, touched = take_when_woken(receiver)
        assert datagrams == [(again, client.getsockname(), None)] and touched == []
        assert tun.written_nowait() == []


def test_receive_thread_and_python_share_one_numbering(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    """The thread forwards after every batch while Python forwards and seals on its own: every
    record still gets its own sequence number, and nothing crashes under the contention."""
    server, client = udp
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    path = make_path(fp)
    python = protection(*KEYS["aes256"])
    with MemoryTun(buffer_bytes=8 << 20) as tun:
        key = attach(path, tun, server, client.getsockname())
        receiver.add_route(key, path)
        path.forwarding = True
        sent = 0
        for i in range(1, 401):
            record = python.seal(APP, VERSION, EPOCH << 48 | i, b"\x00" + PACKET)
            client.sendto(record, server.getsockname())
            tun.inject(PACKET)
            sent += 1
            if i % 7 == 0:
                seq = path.take_sequence()
                client_bound = path.seal(APP, seq, b"\x04")
                server.sendto(client_bound, client.getsockname())
                sent += 1
            if i % 5 == 0:
                assert path.forward_tun(3) >= 0
        seen: set[int] = set()
        records = 0
        while select.select([client], [], [], 0.5)[0]:
            record = client.recv(65536)
            records += 1
            seen.add(RECORD_HEADER.unpack_from(record)[2])
        assert records == len(seen)  # no number used twice
        assert records >= 400 // 7  # the Python-sealed ones at least (UDP may drop others)
        while select.select([tun._peer], [], [], 0.2)[0]:
            tun.written_nowait()


def test_receive_thread_queue_is_bounded(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    server, client = udp
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    junk = b"\x16\xfe\xfd" + bytes(1400)
    for _ in range(4000):  # 5.6 MB of strangers' datagrams, never taken
        client.sendto(junk, server.getsockname())
    deadline = 200
    while receiver.dropped == 0 and deadline:
        select.select([], [], [], 0.01)
        deadline -= 1
    assert receiver.dropped > 0
    datagrams, _, _ = receiver.take()
    assert 0 < len(datagrams) * len(junk) <= 4 << 20


def test_receive_thread_reads_the_tun_only_while_forwarding(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    server, client = udp
    path = make_path(fp)
    python = protection(*KEYS["aes256"])
    with MemoryTun() as tun:
        key = attach(path, tun, server, client.getsockname())
        receiver.add_route(key, path)
        assert not path.watched  # not forwarding: the tun reader task's
        tun.inject(PACKET)
        assert not select.select([client], [], [], 0.1)[0]
        path.forwarding = True
        assert path.watched
        record = client.recv(65536)  # the queued packet left, from the thread alone
        assert python.open(APP, VERSION, RECORD_HEADER.unpack_from(record)[2], record[13:]) == (
            b"\x00" + PACKET
        )
        _, _, touched = take_when_woken(receiver)  # the counters follow within NOTIFY_MS
        assert touched == [path]
        assert path.take_counts() == (0, 0, 1, len(PACKET), 0, 0)  # no record: no liveness
        path.forwarding = False
        assert not path.watched
        tun.inject(PACKET)
        assert not select.select([client], [], [], 0.1)[0]
        assert path.forward_tun(8) == 1  # the tun reader task's again
        path.detach()
        receiver.remove_route(key)


def test_receive_thread_answers_an_expected_psk_handshake_alone(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    """Both server flights of a login's PSK handshake leave from the thread before Python is
    asked anything; Python then gets each datagram with the flight that answered it."""
    server, client = udp
    psk, app_id, randoms = bytes(range(32)), bytes(32 * [7]), bytes(range(64))
    preference = struct.pack(f"!{len(DEFAULT_PSK_PREFERENCE)}H", *DEFAULT_PSK_PREFERENCE)
    dtls = DtlsPskClient(psk, app_id)
    dtls.start(0.0)
    (hello,) = dtls.datagrams_to_send()
    receiver.expect_hello(app_id, fp.psk_handshake_answer(psk, randoms, preference))
    client.sendto(hello, server.getsockname())
    flight = client.recv(65536)  # no take() yet: the thread answered alone
    dtls.receive_datagram(flight, 0.1)
    (key_exchange,) = dtls.datagrams_to_send()
    client.sendto(key_exchange, server.getsockname())
    final = client.recv(65536)
    dtls.receive_datagram(final, 0.2)
    assert dtls.established
    taken: list[Any] = []
    while len(taken) < 2:
        taken += take_when_woken(receiver)[0]
    assert taken == [
        (hello, client.getsockname(), flight),
        (key_exchange, client.getsockname(), final),
    ]
    # One handshake per expectation: a second hello is Python's.
    client.sendto(hello, server.getsockname())
    assert take_when_woken(receiver)[0] == [(hello, client.getsockname(), None)]


def test_receive_thread_leaves_a_forgotten_psk_handshake_to_python(
    fp: ModuleType, udp: tuple[socket.socket, socket.socket], receiver: Any
) -> None:
    server, client = udp
    psk, app_id = bytes(range(32)), bytes(32 * [7])
    preference = struct.pack(f"!{len(DEFAULT_PSK_PREFERENCE)}H", *DEFAULT_PSK_PREFERENCE)
    dtls = DtlsPskClient(psk, app_id)
    dtls.start(0.0)
    (hello,) = dtls.datagrams_to_send()
    answer = fp.psk_handshake_answer(psk, bytes(64), preference)
    receiver.expect_hello(app_id, answer)
    with pytest.raises(ValueError):
        receiver.expect_hello(app_id, answer)  # the receiver took it over
    assert answer.answer_hello(hello) is None  # ...and it is empty now
    other = fp.psk_handshake_answer(psk, bytes(64), preference)
    receiver.expect_hello(bytes(32 * [8]), other)  # another session
    receiver.forget_hello(app_id)
    receiver.forget_hello(app_id)  # twice: harmless
    client.sendto(hello, server.getsockname())
    assert take_when_woken(receiver)[0] == [(hello, client.getsockname(), None)]
    with pytest.raises(ValueError):
        receiver.expect_hello(bytes(33), fp.psk_handshake_answer(psk, bytes(64), preference))


def test_handshake_answer_only_where_the_thread_can_answer_alike(fp: ModuleType) -> None:
    """PSK (without the engine's own App-ID check) and legacy AES-GCM get a thread answer; the
    legacy CBC suites of DTLS 0x0100 are the engine's alone."""
    randoms, master, session = bytes(range(64)), bytes(48), bytes(32 * [3])
    assert handshake_answer(LegacyServerParameters(master, session, 0x002F), randoms) is None
    assert handshake_answer(PskServerParameters(bytes(32), app_id=session), randoms) is None
    legacy = handshake_answer(LegacyServerParameters(master, session, 0x009C), randoms)
    assert isinstance(legacy, fp.HandshakeAnswer)
    answer = handshake_answer(PskServerParameters(bytes(32)), randoms)
    assert answer is not None
    dtls = DtlsPskClient(bytes(32), session)
    dtls.start(0.0)
    (hello,) = dtls.datagrams_to_send()
    engine = DtlsServer(PskServerParameters(bytes(32)), random_bytes=_draws(randoms))
    engine.receive_datagram(hello, 0.0)
    assert engine.datagrams_to_send() == [answer.answer_hello(hello)]


def _draws(randoms: bytes) -> Callable[[int], bytes]:
    """The engine's first two draws: server random, session id."""
    chunks = [randoms[:32], randoms[32:]]
    return lambda n: chunks.pop(0)


def test_expected_hellos_are_freed_when_forgotten_or_replaced(
    fp: ModuleType, receiver: Any
) -> None:
    """Sessions that never send their hello: 40,000 expectations, each forgotten or replaced,
    leave the receiver's memory where it was."""
    preference = struct.pack(f"!{len(DEFAULT_PSK_PREFERENCE)}H", *DEFAULT_PSK_PREFERENCE)

    def churn(n: int) -> None:
        for i in range(n):
            app_id = (i % 500).to_bytes(32, "big")
            receiver.expect_hello(app_id, fp.psk_handshake_answer(bytes(32), bytes(64), preference))
            if i % 2:
                receiver.forget_hello(app_id)

    churn(4000)
    before = _rss_bytes()
    churn(40000)
    assert _rss_bytes() - before < 1 << 20
