"""The ocpasswd password file: parsing, verifying, editing and atomic rewriting.

Format (one user a line, as ocpasswd writes it)::

    username:group1,group2:crypt-hash

- The groups field is `*` when the user has none; groups of one character (`*`, `x`) are ignored,
  as ocpasswd's manual says.
- A locked user's hash is prefixed with `!` (what `ocpasswd -l` does); a locked user never verifies.
- Blank lines and `#` comments are skipped; any other malformed line is reported as FILE:LINE and
  skipped, never fatal. The first line for a user wins (ocserv scans top to bottom).

This module owns no sockets, threads or clocks. Hashing is deliberately slow: callers on the event
loop run `verify` in `trio.to_thread`. File I/O is limited to `load_passwd_file`,
`write_passwd_file_atomically` and `PasswdFileCache`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from typing import Final, Literal, Protocol

import attrs
from passlib.context import CryptContext

from trio_ocserv.auth import libcrypt

logger = logging.getLogger(__name__)

DEFAULT_PASSWD_PATH: Final = "/etc/ocserv/ocpasswd"
NO_GROUPS_FIELD: Final = "*"
LOCK_PREFIX: Final = "!"
NEW_FILE_MODE: Final = 0o600

# ocpasswd relies on crypt(3)'s default cost (5000 rounds, no "rounds=" in the string). We keep it:
# every login pays this cost in a worker thread, and a higher one would make login floods cheap DoS.
CRYPT_ROUNDS: Final = 5000

# A fixed SHA-512-crypt hash of a random secret nobody knows. Unknown and locked users are checked
# against it so a failed login costs the same whether the user exists or not; the result is unused.
DUMMY_HASH: Final = (
    "$6$hyCdQXac8DbMkVGg$WdxVYbCqlbHJH8Jsjq5qYt6RlkNtkbcfEyFUxYXTDRt9H243RWGcdggOd"
    "hmFGuY0t2.zqamoEAVvbrAL5rvYB0"
)

HashScheme = Literal["sha512", "sha256"]


class PasswdFileError(Exception):
    """The password file cannot be read or written, or an edit request is invalid."""


# ---------------------------------------------------------------------------------------------
# hashing


class PasswordHasher(Protocol):
    """What the file needs from a hashing backend; tests inject counting or fake ones."""

    def hash(self, password: str) -> str: ...

    def verify(self, password: str, password_hash: str) -> bool: ...


@attrs.define(slots=True)
class CryptHasher:
    """crypt(3)-compatible hashes: writes `$6$` (or `$5$`), verifies `$6$ $5$ $1$` and traditional
    DES. The system's libxcrypt does the work when it is there (C speed, no GIL held: see
    `auth.libcrypt`); libpass otherwise. Comparisons are constant time either way."""

    scheme: HashScheme = "sha512"
    native: bool = attrs.field(default=libcrypt.available())
    _context: CryptContext = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._context = CryptContext(
            schemes=["sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"],
            default=f"{self.scheme}_crypt",
            sha512_crypt__rounds=CRYPT_ROUNDS,
            sha256_crypt__rounds=CRYPT_ROUNDS,
        )

    def hash(self, password: str) -> str:
        if "\0" in password:
            raise PasswdFileError("cannot hash this password: it contains a NUL character")
        if self.native:
            return libcrypt.LibcryptHasher(self.scheme).hash(password)
        try:
            return str(self._context.hash(password))
        except (ValueError, TypeError) as exc:
            raise PasswdFileError(f"cannot hash this password: {exc}") from exc

    def verify(self, password: str, password_hash: str) -> bool:
        if self.native:
            return libcrypt.LibcryptHasher(self.scheme).verify(password, password_hash)
        try:
            return bool(self._context.verify(password, password_hash))
        except (ValueError, TypeError):
            # malformed hash, NUL in the password, oversized password: all mean "no"
            return False


DEFAULT_HASHER: Final = CryptHasher()


# ---------------------------------------------------------------------------------------------
# the parsed file


@attrs.frozen
class PasswdProblem:
    """A line we skipped, with where it is: rendered as `FILE:LINE: message`."""

    path: str
    line_number: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.message}"


@attrs.frozen
class PasswdEntry:
    """One user line. `password_hash` keeps the `!` of a locked user."""

    username: str
    groups_field: str
    password_hash: str = attrs.field(repr=False)  # keep hashes out of logs and tracebacks
    line_number: int

    @property
    def groups(self) -> tuple[str, ...]:
        return parse_groups(self.groups_field)

    @property
    def locked(self) -> bool:
        return self.password_hash.startswith(LOCK_PREFIX)


@attrs.frozen
class PasswdMatch:
    """A successful verification: who, and the groups the file gives them."""

    username: str
    groups: tuple[str, ...]


def parse_groups(groups_field: str) -> tuple[str, ...]:
    """`g1, g2` -> ("g1", "g2"); one-character groups such as `*` and `x` mean none."""
    names = (name.strip() for name in groups_field.split(","))
    return tuple(name for name in names if len(name) > 1)


def _line_problem(line: str) -> str | None:
    """Why a non-comment line is not a usable entry, or None when it is."""
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in line):
        return "line is not valid UTF-8"
    fields = line.split(":", 2)
    if len(fields) != 3:
        return "expected username:groups:hash"
    username, _, password_hash = fields
    if not username:
        return "empty username"
    if not password_hash.removeprefix(LOCK_PREFIX):
        return f"user {username!r}: empty password hash"
    return None


def _is_skippable(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _split_lines(text: str) -> list[str]:
    # only "\n" separates records (ocpasswd and ocserv use getline); a trailing "\r" is stripped
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


@attrs.frozen
class PasswdFile:
    """An immutable parsed password file. Editing returns a new file; `render()` gives the text.

    `lines` keeps every original line (comments and bad lines too) so edits are minimal."""

    path: str
    lines: tuple[str, ...] = attrs.field(repr=False)
    entries: tuple[PasswdEntry, ...]
    problems: tuple[PasswdProblem, ...]

    @classmethod
    def parse(cls, text: str, path: str = "<passwd>") -> PasswdFile:
        lines = _split_lines(text)
        entries: list[PasswdEntry] = []
        problems: list[PasswdProblem] = []
        seen: set[str] = set()
        for number, line in enumerate(lines, start=1):
            if _is_skippable(line):
                continue
            message = _line_problem(line)
            if message is None:
                username, groups_field, password_hash = line.split(":", 2)
                if username in seen:
                    message = f"duplicate user {username!r} (the first line wins)"
                else:
                    seen.add(username)
                    entries.append(PasswdEntry(username, groups_field, password_hash, number))
                    continue
            problems.append(PasswdProblem(path, number, message))
        return cls(path, tuple(lines), tuple(entries), tuple(problems))

    def render(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)

    def get(self, username: str) -> PasswdEntry | None:
        for entry in self.entries:
            if entry.username == username:
                return entry
        return None

    def verify(
        self, username: str, password: str, hasher: PasswordHasher | None = None
    ) -> PasswdMatch | None:
        """Check a password; exactly one hash computation whatever the outcome, so timing does not
        reveal whether the user exists or is locked."""
        hasher = hasher if hasher is not None else DEFAULT_HASHER
        entry = self.get(username)
        if entry is None or entry.locked:
            hasher.verify(password, DUMMY_HASH)
            return None
        if not hasher.verify(password, entry.password_hash):
            return None
        return PasswdMatch(entry.username, entry.groups)

    # --- editing (pure: text in, new PasswdFile out) -----------------------------------------

    def _user_line_indexes(self, username: str) -> list[int]:
        # edits match on the first field of any line, so even malformed lines of that user are
        # replaced, as ocpasswd does
        return [i for i, line in enumerate(self.lines) if line.split(":", 1)[0] == username]

    def _with_lines(self, lines: Iterable[str]) -> PasswdFile:
        return PasswdFile.parse("".join(f"{line}\n" for line in lines), self.path)

    def with_user(self, username: str, groups_field: str, password_hash: str) -> PasswdFile:
        """Add the user, or replace their groups and hash (ocpasswd: a re-add without -g resets
        the groups to `*`). Later duplicate lines of the user are dropped."""
        check_username(username)
        check_groups_field(groups_field)
        new_line = f"{username}:{groups_field}:{password_hash}"
        indexes = self._user_line_indexes(username)
        lines = list(self.lines)
        if not indexes:
            lines.append(new_line)
            return self._with_lines(lines)
        lines[indexes[0]] = new_line
        drop = set(indexes[1:])
        return self._with_lines(line for i, line in enumerate(lines) if i not in drop)

    def without_user(self, username: str) -> PasswdFile:
        drop = set(self._user_line_indexes(username))
        return self._with_lines(line for i, line in enumerate(self.lines) if i not in drop)

    def _with_hash_edited(self, username: str, edit: Callable[[str], str]) -> PasswdFile:
        lines = list(self.lines)
        for i in self._user_line_indexes(username):
            fields = lines[i].split(":", 2)
            if len(fields) == 3:
                fields[2] = edit(fields[2])
                lines[i] = ":".join(fields)
        return self._with_lines(lines)

    def with_user_locked(self, username: str) -> PasswdFile:
        """Prefix the hash with `!` (once: locking a locked user changes nothing)."""
        return self._with_hash_edited(
            username, lambda h: h if h.startswith(LOCK_PREFIX) else LOCK_PREFIX + h
        )

    def with_user_unlocked(self, username: str) -> PasswdFile:
        return self._with_hash_edited(username, lambda h: h.removeprefix(LOCK_PREFIX))

    def has_user_line(self, username: str) -> bool:
        return bool(self._user_line_indexes(username))


def check_username(username: str) -> None:
    if not username or any(ch in username for ch in ":\n\r") or _is_skippable(username):
        raise PasswdFileError(f"invalid username {username!r}")


def check_groups_field(groups_field: str) -> None:
    if not groups_field or any(ch in groups_field for ch in ":\n\r"):
        raise PasswdFileError(f"invalid group list {groups_field!r}")


# ---------------------------------------------------------------------------------------------
# file I/O

# Undecodable bytes survive a read/edit/write cycle untouched (and such lines never verify).
_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogateescape"


def load_passwd_file(path: str, *, missing_ok: bool = False) -> PasswdFile:
    """Read and parse `path`; with `missing_ok` a file that does not exist reads as empty."""
    try:
        with open(path, encoding=_ENCODING, errors=_ERRORS, newline="") as stream:
            return PasswdFile.parse(stream.read(), path)
    except FileNotFoundError as exc:
        if missing_ok:
            return PasswdFile.parse("", path)
        raise PasswdFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise PasswdFileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def write_passwd_file_atomically(
    path: str,
    text: str,
    *,
    replace: Callable[[str, str], None] = os.replace,
) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    A concurrent reader sees either the old or the new file, never a mix; a crash before the
    rename leaves the old file intact. An existing file keeps its mode and owner; a new one is 0600.
    `replace` is injectable so tests can simulate a crash at the rename.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        existing: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise PasswdFileError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    try:
        fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except OSError as exc:
        raise PasswdFileError(f"cannot create a file in {directory}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding=_ENCODING, errors=_ERRORS, newline="") as stream:
            mode = NEW_FILE_MODE if existing is None else stat.S_IMODE(existing.st_mode)
            os.fchmod(stream.fileno(), mode)
            if existing is not None and (existing.st_uid, existing.st_gid) != (
                os.geteuid(),
                os.getegid(),
            ):
                # only root may give the file away; elsewhere the new owner is us, as for ocpasswd
                with contextlib.suppress(PermissionError):
                    os.fchown(stream.fileno(), existing.st_uid, existing.st_gid)
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        replace(temp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(exc, OSError):
            raise PasswdFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # makes the rename itself durable; some filesystems refuse O_RDONLY fsync on directories
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@attrs.frozen
class _FileSignature:
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _FileSignature:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@attrs.define
class PasswdFileCache:
    """The current parse of a password file, re-read when its inode, size or mtime changes.

    Not thread-safe by itself: the server calls `reload_if_changed()` from the event loop and
    hands the returned immutable `PasswdFile` to a worker thread for `verify`.
    """

    path: str
    _current: PasswdFile | None = attrs.field(default=None, init=False)
    _signature: _FileSignature | None = attrs.field(default=None, init=False)

    @property
    def current(self) -> PasswdFile:
        if self._current is None:
            self.reload_if_changed()
        assert self._current is not None
        return self._current

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when it was (re)loaded. Problems are logged.

        Raises PasswdFileError when the file is gone or unreadable, and forgets the old content:
        a deleted password file must not keep authenticating users."""
        try:
            signature = _FileSignature.of(os.stat(self.path))
        except OSError as exc:
            self._current, self._signature = None, None
            raise PasswdFileError(f"cannot stat {self.path}: {exc.strerror or exc}") from exc
        if signature == self._signature and self._current is not None:
            return False
        try:
            with open(self.path, encoding=_ENCODING, errors=_ERRORS, newline="") as stream:
                # the signature of what we actually read, in case it was replaced after the stat
                signature = _FileSignature.of(os.fstat(stream.fileno()))
                text = stream.read()
        except OSError as exc:
            self._current, self._signature = None, None
            raise PasswdFileError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        self._current = PasswdFile.parse(text, self.path)
        self._signature = signature
        for problem in self._current.problems:
            logger.warning("%s", problem)
        return True
