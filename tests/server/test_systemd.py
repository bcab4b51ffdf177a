"""sd_notify to a real datagram socket, and socket activation with real descriptors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_ocserv.server import systemd


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: a unix datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    with sock:
        yield sock


def test_notify_sends_one_datagram(manager: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": manager.getsockname()}
    assert systemd.notify("READY=1\nSTATUS=serving", env)
    assert manager.recv(4096) == b"READY=1\nSTATUS=serving"
    assert systemd.notify("STOPPING=1", env)
    assert manager.recv(4096) == b"STOPPING=1"


def test_notify_to_the_abstract_namespace() -> None:
    name = f"trio-ocserv-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert systemd.notify("RELOADING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"RELOADING=1"


def test_notify_without_a_manager_does_nothing(tmp_path: Path) -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def _free_fds(count: int) -> int:
    """The first of `count` consecutive descriptor numbers nothing uses."""
    first = 200
    while True:
        numbers = range(first, first + count)
        if not any(_is_open(fd) for fd in numbers):
            return first
        first += count


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def passed_fds() -> Iterator[tuple[int, int, int]]:
    """A TCP listener, a UDP socket and a TCP listener at three consecutive descriptors, as
    systemd passes them; (first fd, TCP port, UDP port)."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp6 = socket.create_server(("127.0.0.1", 0))
    first = _free_fds(3)
    for offset, sock in enumerate((tcp, udp, tcp6)):
        os.dup2(sock.fileno(), first + offset)
    ports = tcp.getsockname()[1], udp.getsockname()[1]
    for sock in (tcp, udp, tcp6):
        sock.close()
    try:
        yield first, *ports
    finally:
        for fd in range(first, first + 3):
            if _is_open(fd):
                os.close(fd)


def test_activated_sockets_sorts_passed_sockets(passed_fds: tuple[int, int, int]) -> None:
    first, tcp_port, udp_port = passed_fds
    env = {"LISTEN_FDS": "3", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b:c"}
    found = systemd.activated_sockets(env, first_fd=first)
    assert env == {}  # not inherited by the scripts we run
    assert [s.getsockname()[1] for s in found.udp] == [udp_port]
    assert len(found.tcp) == 2 and found.tcp[0].getsockname()[1] == tcp_port
    assert found.tcp[0].fileno() == first
    assert not os.get_inheritable(first)
    assert found


def test_sockets_for_another_process_are_left_alone(passed_fds: tuple[int, int, int]) -> None:
    first = passed_fds[0]
    env = {"LISTEN_FDS": "3", "LISTEN_PID": str(os.getpid() + 1)}
    assert not systemd.activated_sockets(env, first_fd=first)
    assert env == {}
    assert not systemd.activated_sockets({}, first_fd=first)


@pytest.mark.parametrize("count", ["x", "-1", ""])
def test_a_bad_count_is_an_error(count: str) -> None:
    env = {"LISTEN_FDS": count, "LISTEN_PID": str(os.getpid())}
    with pytest.raises(systemd.SocketActivationError):
        systemd.activated_sockets(env)


def test_a_descriptor_that_is_no_socket_is_an_error(tmp_path: Path) -> None:
    first = _free_fds(1)
    fd = os.open(tmp_path / "file", os.O_CREAT | os.O_RDWR)
    os.dup2(fd, first)
    os.close(fd)
    try:
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
        with pytest.raises(systemd.SocketActivationError):
            systemd.activated_sockets(env, first_fd=first)
    finally:
        os.close(first)


def test_descriptor_three_in_a_fresh_process() -> None:
    """The real layout: the service manager's socket at fd 3 of a new process."""
    listener = socket.create_server(("127.0.0.1", 0))
    script = (
        "import os\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "from trio_ocserv.server import systemd\n"
        "found = systemd.activated_sockets()\n"
        "print(found.tcp[0].fileno(), found.tcp[0].getsockname()[1], len(found.udp))\n"
    )
    with listener:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "LISTEN_FDS": "1"},
            pass_fds=(3,),  # kept open after the dup2 below
            preexec_fn=lambda: os.dup2(listener.fileno(), 3),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert result.stdout.split() == ["3", str(listener.getsockname()[1]), "0"]
