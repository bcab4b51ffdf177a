"""Log destinations and levels, and the one-line login/logout records."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from trio_ocserv.server.logs import SessionLog, configure_logging, python_level
from trio_ocserv.server.tunnel import TunnelCounters, TunnelEnd


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_levels() -> None:
    assert [python_level(n) for n in (0, 1, 2, 3, 9)] == [logging.INFO] * 3 + [logging.DEBUG] * 2


def test_syslog_when_the_socket_exists(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(2)
        handler = configure_logging(1, to_stderr=False, syslog_socket=str(tmp_path / "log"))
        assert isinstance(handler, logging.handlers.SysLogHandler)
        logging.getLogger("trio_ocserv").info("hello")
        logging.getLogger("trio_ocserv").debug("not at level 1")
        # <30>: facility daemon (3) * 8 + priority info (6)
        assert syslog.recv(4096).startswith(b"<30>trio-ocserv[")


def test_stderr_when_asked_or_without_syslog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for handler in (
        configure_logging(3, to_stderr=True, syslog_socket=str(tmp_path / "log")),
        configure_logging(3, to_stderr=False, syslog_socket=str(tmp_path / "none")),
    ):
        assert type(handler) is logging.StreamHandler
    (tmp_path / "stale").touch()  # a file nobody listens on
    handler = configure_logging(3, to_stderr=False, syslog_socket=str(tmp_path / "stale"))
    assert type(handler) is logging.StreamHandler


def _handle(username: str) -> SimpleNamespace:
    counters = TunnelCounters(bytes_in=100, bytes_out=200)
    session = SimpleNamespace(
        username=username, group="staff", real_address="198.51.100.7", lease_id=1,
        tunnel_started=10.0, cookie="SECRET-COOKIE",
    )  # fmt: skip
    tunnel = SimpleNamespace(counters=counters)
    return SimpleNamespace(session=session, tunnel=tunnel, device="vpns0")


def test_one_line_per_login_and_logout(caplog: pytest.LogCaptureFixture) -> None:
    address = SimpleNamespace(address="192.168.77.2")
    pool = SimpleNamespace(lease=lambda lease_id: SimpleNamespace(ipv4=address, ipv6=None))
    state = SimpleNamespace(pool=pool, clock=lambda: 70.0)
    log = SessionLog(state)  # type: ignore[arg-type]
    handle = _handle("bob")
    with caplog.at_level(logging.INFO, logger="trio_ocserv.sessions"):
        log.tunnel_up(3, handle)  # type: ignore[arg-type]
        log.tunnel_down(3, handle, TunnelEnd.SERVER_DISCONNECT)  # type: ignore[arg-type]
    login, logout = caplog.messages
    assert login == (
        "login: user='bob' group='staff' real-ip=198.51.100.7 vpn-ip=192.168.77.2 device=vpns0 id=3"
    )
    assert logout == (
        "logout: user='bob' real-ip=198.51.100.7 vpn-ip=192.168.77.2 "
        "reason='disconnected by the server' duration=60s rx=100 tx=200 id=3"
    )
    assert "SECRET" not in login + logout
