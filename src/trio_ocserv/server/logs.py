"""Where the server's log goes and what it says about sessions.

`configure_logging()`: ocserv's levels (`log-level`, overridden by `-d`) mapped onto Python's;
`--log-stderr` (or no /dev/log, as in a container) logs to stderr, otherwise syslog (facility
daemon) through /dev/log, where the handler maps Python levels to syslog priorities.

`SessionLog` is a tunnel observer writing one line when a tunnel comes up and one when it ends:
user, group, real (client) IP, VPN IP, device, and on logout the reason, duration and bytes.
It never sees a password, cookie or key: it reads the tunnel handle only.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

from trio_ocserv.server.state import ServerState, TunnelHandle

__all__ = ["SessionLog", "configure_logging", "python_level"]

SYSLOG_SOCKET = "/dev/log"
_FORMAT = "trio-ocserv[%(process)d]: %(message)s"
_STDERR_FORMAT = "%(asctime)s " + _FORMAT

# ocserv's log-level / -d: 0 default (= basic), 1 basic, 2 info, 3 debug, 4 http, 8 sensitive,
# 9 TLS.
_DEBUG = 3


def python_level(ocserv_level: int) -> int:
    """Python's level for an ocserv level: basic and info -> INFO (logins, logouts, refusals are
    INFO lines), debug and above -> DEBUG."""
    return logging.DEBUG if ocserv_level >= _DEBUG else logging.INFO


def configure_logging(
    ocserv_level: int, *, to_stderr: bool, syslog_socket: str = SYSLOG_SOCKET
) -> logging.Handler:
    """Install the server's one handler on the root logger; returns it."""
    handler: logging.Handler | None = None
    if not to_stderr and _syslog_listening(syslog_socket):
        handler = logging.handlers.SysLogHandler(
            address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(logging.Formatter(_FORMAT))
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(python_level(ocserv_level))
    return handler


def _syslog_listening(path: str) -> bool:
    """Something receives on `path` (SysLogHandler would otherwise drop every line silently)."""
    if not os.path.exists(path):
        return False
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
            except OSError:
                continue
            return True
    return False


class SessionLog:
    """One line per login (tunnel up) and logout (tunnel down); a `TunnelObserver`."""

    def __init__(self, state: ServerState, logger: logging.Logger | None = None) -> None:
        self.state = state
        self.log = logger or logging.getLogger("trio_ocserv.sessions")

    def _vpn_ip(self, handle: TunnelHandle) -> str:
        lease = self.state.pool.lease(handle.session.lease_id)
        if lease is None:
            return "-"
        addresses = [str(a.address) for a in (lease.ipv4, lease.ipv6) if a is not None]
        return ",".join(addresses) or "-"

    def tunnel_up(self, tunnel_id: int, handle: TunnelHandle) -> None:
        session = handle.session
        self.log.info(
            "login: user=%r group=%r real-ip=%s vpn-ip=%s device=%s id=%d",
            session.username, session.group or "", session.real_address, self._vpn_ip(handle),
            handle.device, tunnel_id,
        )  # fmt: skip

    def tunnel_down(self, tunnel_id: int, handle: TunnelHandle, end: object) -> None:
        session, counters = handle.session, handle.tunnel.counters
        started = session.tunnel_started
        duration = self.state.clock() - started if started is not None else 0.0
        self.log.info(
            "logout: user=%r real-ip=%s vpn-ip=%s reason=%r duration=%ds rx=%d tx=%d id=%d",
            session.username, session.real_address, self._vpn_ip(handle),
            str(getattr(end, "text", end)), max(0, round(duration)),
            counters.bytes_in, counters.bytes_out, tunnel_id,
        )  # fmt: skip
