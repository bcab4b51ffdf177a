"""systemd integration without a dependency: readiness notification and socket activation.

`notify()` sends an sd_notify message (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`) as
one datagram to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace); nothing happens when the variable is unset, as outside systemd.

`activated_sockets()` takes the sockets systemd passed (`$LISTEN_FDS` descriptors from fd 3 on,
meant for us when `$LISTEN_PID` is our PID) and sorts them into TCP listeners and UDP sockets;
the server uses them instead of binding its own. The variables are then removed from the
environment so that scripts we start do not believe the sockets are theirs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping

import attrs

__all__ = ["ActivatedSockets", "SocketActivationError", "activated_sockets", "notify"]

# The first passed descriptor (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


class SocketActivationError(ValueError):
    """`$LISTEN_FDS` names descriptors we cannot use."""


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` to the service manager; False when there is none (or it is gone)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


@attrs.frozen
class ActivatedSockets:
    """The sockets systemd passed, by kind; empty when the server was not socket-activated."""

    tcp: tuple[socket.socket, ...] = ()
    udp: tuple[socket.socket, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tcp or self.udp)


def activated_sockets(
    environ: MutableMapping[str, str] | None = None,
    pid: int | None = None,
    first_fd: int = LISTEN_FDS_START,
) -> ActivatedSockets:
    """The sockets of `$LISTEN_FDS` when `$LISTEN_PID` is us; removes both variables.
    (`first_fd` is for tests, whose process may already use descriptor 3.)"""
    env = os.environ if environ is None else environ
    count_text = env.pop("LISTEN_FDS", None)
    pid_text = env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    if count_text is None or pid_text is None:
        return ActivatedSockets()
    if not pid_text.isdigit() or int(pid_text) != (os.getpid() if pid is None else pid):
        return ActivatedSockets()  # meant for another process (e.g. our parent)
    if not count_text.isdigit():
        raise SocketActivationError(f"LISTEN_FDS={count_text!r} is not a number")
    tcp: list[socket.socket] = []
    udp: list[socket.socket] = []
    for fd in range(first_fd, first_fd + int(count_text)):
        sock = _adopt(fd)
        if sock.type == socket.SOCK_STREAM:
            tcp.append(sock)
        elif sock.type == socket.SOCK_DGRAM:
            udp.append(sock)
        else:
            sock.detach()
            raise SocketActivationError(f"passed descriptor {fd} is neither TCP nor UDP")
    return ActivatedSockets(tuple(tcp), tuple(udp))


def _adopt(fd: int) -> socket.socket:
    """A socket object owning descriptor `fd` (close-on-exec, as ours always are)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise SocketActivationError(f"passed descriptor {fd} is not a socket: {exc}") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise SocketActivationError(f"passed descriptor {fd} is not an IP socket")
    with contextlib.suppress(OSError):
        os.set_inheritable(fd, False)
    return sock
