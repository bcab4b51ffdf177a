"""Tests for auth/passwd_cli.py: `trio-ocserv passwd` run in-process, and once as a subprocess.

Rules: files only under tmp_path; stdin is a fake (non-tty unless a test says otherwise).
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
from pathlib import Path

import attrs

from trio_ocserv.auth.passwd_cli import ENTER_PROMPT, REENTER_PROMPT, passwd_main
from trio_ocserv.auth.passwd_file import PasswdMatch, load_passwd_file


class TtyInput(io.StringIO):
    """A stdin that claims to be a terminal; the prompts go through `prompt_secret`."""

    def isatty(self) -> bool:
        return True


@attrs.define
class ScriptedPrompt:
    answers: list[str]
    prompts: list[str] = attrs.field(factory=list)

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)


@attrs.frozen
class Run:
    code: int
    stdout: str
    stderr: str


def run(argv: list[str], stdin_text: str = "", prompt: ScriptedPrompt | None = None) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin = TtyInput() if prompt is not None else io.StringIO(stdin_text)
    code = passwd_main(
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        prompt_secret=prompt if prompt is not None else ScriptedPrompt([]),
    )
    return Run(code, stdout.getvalue(), stderr.getvalue())


def test_add_user_from_piped_stdin_creates_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    result = run(["-c", str(path), "alice"], "s3cret\n")
    assert result == Run(0, "", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = path.read_text()
    assert line.startswith("alice:*:$6$") and line.endswith("\n")
    assert load_passwd_file(str(path)).verify("alice", "s3cret") == PasswdMatch("alice", ())
    assert load_passwd_file(str(path)).verify("alice", "s3cret\n") is None


def test_groups_long_options_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    assert (
        run([f"--passwd={path}", "--groupname", "g1,g2", "--hash", "sha256", "bob"], "pw\n").code
        == 0
    )
    entry = load_passwd_file(str(path)).get("bob")
    assert entry is not None
    assert (entry.groups_field, entry.password_hash[:3]) == ("g1,g2", "$5$")


def test_readding_a_user_replaces_hash_and_resets_groups(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("# managed by hand\nbob:g1,g2:$5$old$hash\ncarol:*:$5$c$h\n")
    path.chmod(0o640)
    assert run(["-c", str(path), "bob"], "new\n").code == 0
    passwd = load_passwd_file(str(path))
    assert passwd.lines[0] == "# managed by hand"
    assert [e.username for e in passwd.entries] == ["bob", "carol"]
    assert passwd.verify("bob", "new") == PasswdMatch("bob", ())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_delete_lock_unlock(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    run(["-c", str(path), "-g", "admins", "alice"], "pw-a\n")
    run(["-c", str(path), "bob"], "pw-b\n")
    assert run(["-c", str(path), "-l", "alice"]).code == 0
    assert load_passwd_file(str(path)).verify("alice", "pw-a") is None
    assert path.read_text().split("\n")[0].startswith("alice:admins:!$6$")
    assert run(["-c", str(path), "--unlock", "alice"]).code == 0
    assert load_passwd_file(str(path)).verify("alice", "pw-a") == PasswdMatch("alice", ("admins",))
    assert run(["-c", str(path), "-d", "alice"]).code == 0
    passwd = load_passwd_file(str(path))
    assert [e.username for e in passwd.entries] == ["bob"]


def test_editing_a_missing_user_warns_and_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("bob:*:$5$x$y\n")
    result = run(["-c", str(path), "-l", "nobody"])
    assert result.code == 0
    assert "nobody" in result.stderr
    assert path.read_text() == "bob:*:$5$x$y\n"


def test_editing_a_missing_file_fails_like_ocpasswd(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    result = run(["-c", str(path), "-d", "bob"])
    assert result == Run(1, "", f"Cannot open '{path}' for reading.\n")
    assert not path.exists()


def test_empty_password_and_eof_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    for stdin_text in ["\n", ""]:
        result = run(["-c", str(path), "alice"], stdin_text)
        assert result == Run(1, "", "Please specify a password\n")
    assert not path.exists()


def test_tty_prompts_twice_like_ocpasswd(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    prompt = ScriptedPrompt(["tty-pw", "tty-pw"])
    assert run(["-c", str(path), "alice"], prompt=prompt).code == 0
    assert (
        prompt.prompts
        == [ENTER_PROMPT, REENTER_PROMPT]
        == ["Enter password: ", "Re-enter password: "]
    )
    assert load_passwd_file(str(path)).verify("alice", "tty-pw") is not None


def test_tty_mismatch_fails_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    result = run(["-c", str(path), "alice"], prompt=ScriptedPrompt(["one", "two"]))
    assert result == Run(1, "", "Passwords do not match\n")
    assert not path.exists()


def test_unreadable_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.mkdir()  # reading a directory fails with something other than "not found"
    result = run(["-c", str(path), "alice"], "pw\n")
    assert result.code == 1
    assert result.stderr.startswith("trio-ocserv passwd: cannot read")
    assert path.is_dir()


def test_usage_errors_exit_1() -> None:
    for argv in [[], ["-l", "-u", "bob"], ["--bogus", "bob"], ["a", "b"], ["-c"]]:
        result = run(argv)
        assert result.code == 1, argv
        assert "usage: trio-ocserv passwd" in result.stderr


def test_invalid_username_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    result = run(["-c", str(path), "a:b"], "pw\n")
    assert result.code == 1
    assert "invalid username" in result.stderr
    assert not path.exists()


def test_help_and_version() -> None:
    help_run = run(["-h"])
    assert help_run.code == 0
    for option in [
        "--passwd",
        "--groupname",
        "--delete",
        "--lock",
        "--unlock",
        "/etc/ocserv/ocpasswd",
    ]:
        assert option in help_run.stdout
    version_run = run(["-v"])
    assert version_run.code == 0
    assert "ocpasswd-compatible" in version_run.stdout


def test_subprocess_through_the_main_cli(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    completed = subprocess.run(
        [sys.executable, "-m", "trio_ocserv", "passwd", "-c", str(path), "-g", "ops", "dora"],
        input="from-a-pipe\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")
    assert load_passwd_file(str(path)).verify("dora", "from-a-pipe") == PasswdMatch(
        "dora", ("ops",)
    )
