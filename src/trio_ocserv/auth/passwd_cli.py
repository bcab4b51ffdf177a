"""`trio-ocserv passwd`: ocpasswd's command line on our password file code.

Same options, defaults, prompts and exit codes as ocpasswd 1.1.6 (`-c FILE`, `-g GROUPS`, `-d`,
`-l`, `-u`, `-v`, `-h`; default file /etc/ocserv/ocpasswd; one password line from stdin when it is
not a terminal, a prompt and a confirmation when it is). Deliberate differences, all safer:

- new hashes are SHA-512-crypt (`$6$`); ocpasswd 1.1.6 writes SHA-256-crypt (`$5$`), which
  `--hash sha256` reproduces;
- an empty password (including end of input) is refused; ocpasswd hashes "" on EOF or at a tty;
- comments, blank lines and the file's mode are kept; ocpasswd drops them and resets it to 0600;
- unknown options fail with exit code 1; `-d/-l/-u` of a missing user warn on stderr (exit 0).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from trio_ocserv import __version__
from trio_ocserv.auth.passwd_file import (
    DEFAULT_PASSWD_PATH,
    NO_GROUPS_FIELD,
    CryptHasher,
    PasswdFileError,
    load_passwd_file,
    write_passwd_file_atomically,
)

PROG = "trio-ocserv passwd"
ENTER_PROMPT = "Enter password: "
REENTER_PROMPT = "Re-enter password: "


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports instead of calling sys.exit, so passwd_main can return a code."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _build_parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description="Manage an ocpasswd-compatible password file (username:groups:crypt-hash).",
        add_help=False,
    )
    parser.add_argument(
        "-c",
        "--passwd",
        metavar="FILE",
        default=DEFAULT_PASSWD_PATH,
        help=f"password file (default {DEFAULT_PASSWD_PATH})",
    )
    parser.add_argument(
        "-g",
        "--groupname",
        "--group",
        metavar="GROUPS",
        dest="groups",
        help="the user's groups, comma separated (default: none, written as *)",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-d", "--delete", action="store_true", help="delete the user")
    action.add_argument("-l", "--lock", action="store_true", help="lock the user")
    action.add_argument("-u", "--unlock", action="store_true", help="unlock the user")
    parser.add_argument(
        "--hash",
        choices=["sha512", "sha256"],
        default="sha512",
        help="hash for new passwords: sha512 ($6$, default) or sha256 ($5$)",
    )
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    parser.add_argument("username", nargs="?")
    return parser


def passwd_main(
    argv: list[str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    prompt_secret: Callable[[str], str] = getpass.getpass,
) -> int:
    """Run the command; returns the exit status (0 success, 1 failure or bad syntax)."""
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        stderr.write(f"{PROG}: {exc}\n{parser.format_usage()}")
        return 1
    if args.help:
        stdout.write(parser.format_help())
        return 0
    if args.version:
        stdout.write(f"{PROG} (trio-ocserv {__version__}, ocpasswd-compatible)\n")
        return 0
    if not args.username:
        stderr.write(f"{PROG}: a username is required\n{parser.format_usage()}")
        return 1
    try:
        if args.delete or args.lock or args.unlock:
            return _edit_existing_user(args, stderr)
        return _set_password(args, stdin, stderr, prompt_secret)
    except PasswdFileError as exc:
        stderr.write(f"{PROG}: {exc}\n")
        return 1


def _edit_existing_user(args: argparse.Namespace, stderr: TextIO) -> int:
    path: str = args.passwd
    username: str = args.username
    try:
        passwd = load_passwd_file(path)
    except PasswdFileError:
        stderr.write(f"Cannot open '{path}' for reading.\n")
        return 1
    if not passwd.has_user_line(username):
        stderr.write(f"{PROG}: user '{username}' is not in {path}; nothing to do\n")
        return 0
    if args.delete:
        edited = passwd.without_user(username)
    elif args.lock:
        edited = passwd.with_user_locked(username)
    else:
        edited = passwd.with_user_unlocked(username)
    if edited.lines != passwd.lines:
        write_passwd_file_atomically(path, edited.render())
    return 0


def _set_password(
    args: argparse.Namespace,
    stdin: TextIO,
    stderr: TextIO,
    prompt_secret: Callable[[str], str],
) -> int:
    path: str = args.passwd
    password = _read_new_password(stdin, stderr, prompt_secret)
    if password is None:
        return 1
    # a missing file is created, as ocpasswd does; an unreadable one is an error, never replaced
    passwd = load_passwd_file(path, missing_ok=True)
    groups_field = args.groups if args.groups else NO_GROUPS_FIELD
    password_hash = CryptHasher(args.hash).hash(password)
    edited = passwd.with_user(args.username, groups_field, password_hash)
    write_passwd_file_atomically(path, edited.render())
    return 0


def _read_new_password(
    stdin: TextIO, stderr: TextIO, prompt_secret: Callable[[str], str]
) -> str | None:
    """A terminal gets ocpasswd's two prompts; other input gives one line (its newline dropped)."""
    try:
        if stdin.isatty():
            password = prompt_secret(ENTER_PROMPT)
            if password and prompt_secret(REENTER_PROMPT) != password:
                stderr.write("Passwords do not match\n")
                return None
        else:
            password = stdin.readline().removesuffix("\n").removesuffix("\r")
    except (EOFError, KeyboardInterrupt):
        password = ""
    except UnicodeDecodeError:
        stderr.write(f"{PROG}: the password is not valid UTF-8\n")
        return None
    if not password:
        stderr.write("Please specify a password\n")
        return None
    return password
