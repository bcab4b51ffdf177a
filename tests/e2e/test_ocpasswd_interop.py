"""Interop of `trio-ocserv passwd` and our password file code with the real ocpasswd (1.1.6).

Rules: runs the installed `ocpasswd` on files under tmp_path only; every process is waited for by
PID with a timeout (the pty one is killed by PID if it hangs). No network.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_root_tools
from trio_ocserv.auth.passwd_file import PasswdMatch, load_passwd_file

pytestmark = pytest.mark.e2e


def ours(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_ocserv", "passwd", *args],
        input=password,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ocpasswd(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ocpasswd", *args],
        input=password,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ocpasswd_on_a_terminal(*args: str, password: str) -> tuple[int, bytes]:
    """Run ocpasswd with a pty as its terminal, answering each password prompt."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        ["ocpasswd", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    transcript = b""
    answered = 0
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.2)
            if readable:
                try:
                    chunk = os.read(master, 1024)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                transcript += chunk
                if transcript.count(b"password: ") > answered:
                    os.write(master, password.encode() + b"\n")
                    answered += 1
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), transcript
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(master)


def test_file_written_by_us_is_edited_by_ocpasswd(tmp_path: Path) -> None:
    require_root_tools("ocpasswd")
    path = str(tmp_path / "ocpasswd")
    assert ours("-c", path, "-g", "g1,g2", "alice", password="alice-pw\n").returncode == 0
    assert ours("-c", path, "--hash", "sha256", "bob", password="bob-pw\n").returncode == 0

    locked = ocpasswd("-c", path, "-l", "alice")
    assert locked.returncode == 0, locked.stderr
    passwd = load_passwd_file(path)
    alice = passwd.get("alice")
    assert alice is not None and alice.locked
    assert passwd.verify("alice", "alice-pw") is None
    assert passwd.problems == ()

    assert ocpasswd("-c", path, "-u", "alice").returncode == 0
    passwd = load_passwd_file(path)
    assert passwd.verify("alice", "alice-pw") == PasswdMatch("alice", ("g1", "g2"))

    assert ocpasswd("-c", path, "-d", "alice").returncode == 0
    passwd = load_passwd_file(path)
    assert passwd.problems == ()
    assert [entry.username for entry in passwd.entries] == ["bob"]
    assert passwd.verify("bob", "bob-pw") == PasswdMatch("bob", ())


def test_lock_by_us_and_by_ocpasswd_are_byte_identical(tmp_path: Path) -> None:
    require_root_tools("ocpasswd")
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    assert ours("-c", str(theirs), "-g", "ops", "carol", password="pw\n").returncode == 0
    mine.write_bytes(theirs.read_bytes())
    assert ocpasswd("-c", str(theirs), "-l", "carol").returncode == 0
    assert ours("-c", str(mine), "-l", "carol").returncode == 0
    assert mine.read_bytes() == theirs.read_bytes()
    assert ocpasswd("-c", str(theirs), "-u", "carol").returncode == 0
    assert ours("-c", str(mine), "-u", "carol").returncode == 0
    assert mine.read_bytes() == theirs.read_bytes()


def test_file_written_by_ocpasswd_from_a_pipe_verifies(tmp_path: Path) -> None:
    require_root_tools("ocpasswd")
    path = str(tmp_path / "ocpasswd")
    assert ocpasswd("-c", path, "-g", "admins,ops", "dave", password="dave pw:1\n").returncode == 0
    assert ocpasswd("-c", path, "erin", password="erin-pw\n").returncode == 0
    passwd = load_passwd_file(path)
    assert passwd.problems == ()
    assert passwd.verify("dave", "dave pw:1") == PasswdMatch("dave", ("admins", "ops"))
    assert passwd.verify("dave", "dave pw:2") is None
    assert passwd.verify("erin", "erin-pw") == PasswdMatch("erin", ())
    assert passwd.verify("erin", "dave pw:1") is None

    # and our CLI edits ocpasswd's file without disturbing the other user
    assert ours("-c", path, "-g", "ops", "dave", password="new-pw\n").returncode == 0
    passwd = load_passwd_file(path)
    assert passwd.verify("dave", "new-pw") == PasswdMatch("dave", ("ops",))
    assert passwd.verify("erin", "erin-pw") == PasswdMatch("erin", ())


def test_file_written_by_ocpasswd_on_a_terminal_verifies(tmp_path: Path) -> None:
    require_root_tools("ocpasswd")
    path = str(tmp_path / "ocpasswd")
    code, transcript = ocpasswd_on_a_terminal("-c", path, "-g", "g1", "frank", password="tty-pw")
    assert code == 0, transcript
    assert b"Enter password: " in transcript and b"Re-enter password: " in transcript
    passwd = load_passwd_file(path)
    assert passwd.verify("frank", "tty-pw") == PasswdMatch("frank", ("g1",))
    assert passwd.verify("frank", "tty-pw ") is None
