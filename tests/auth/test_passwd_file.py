"""Tests for auth/passwd_file.py: parsing, verifying, editing, atomic writes and the reload cache.

Rules: files only under pytest's tmp_path; no network; hypothesis examples kept modest.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv.auth.passwd_file import (
    DUMMY_HASH,
    CryptHasher,
    PasswdFile,
    PasswdFileCache,
    PasswdFileError,
    PasswdMatch,
    load_passwd_file,
    parse_groups,
    write_passwd_file_atomically,
)

# Hashes made by the real ocpasswd 1.1.6 (`$5$`) and by openssl (`$1$`); the passwords are in the
# names. Made by other tools, so these are real known answers, not our own output read back.
OCPASSWD_SHA256_PW1 = "$5$sQKmctrpPgGhlp5G$4KtOG96gR6NgM8C6oCDpMxzBsyTFaIgrTqiX6Hu3c25"
OCPASSWD_SHA256_EMPTY = "$5$mYv1wQFWl4lsQAVI$vGDAXYhGJwyKNkEiE8NBiOR3M9YGB9UDNYySOfRToV/"
MD5_CRYPT_PASSWORD = (
    "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"  # openssl passwd -1 -salt saltsalt password
)


@attrs.define
class CountingHasher:
    """Wraps the real hasher and records every verify, to prove dummy work is done."""

    inner: CryptHasher = attrs.field(factory=CryptHasher)
    verified_hashes: list[str] = attrs.field(factory=list)

    def hash(self, password: str) -> str:
        return self.inner.hash(password)

    def verify(self, password: str, password_hash: str) -> bool:
        self.verified_hashes.append(password_hash)
        return self.inner.verify(password, password_hash)


# --- hashing -------------------------------------------------------------------------------


def test_sha512_is_the_default_and_round_trips() -> None:
    hasher = CryptHasher()
    first, second = hasher.hash("correct horse"), hasher.hash("correct horse")
    assert first.startswith("$6$")
    assert first != second  # a fresh salt each time
    assert hasher.verify("correct horse", first)
    assert not hasher.verify("correct hors", first)


def test_sha256_scheme_writes_dollar_5() -> None:
    hasher = CryptHasher("sha256")
    password_hash = hasher.hash("pw")
    assert password_hash.startswith("$5$")
    assert "rounds=" not in password_hash  # crypt's default cost, same shape as ocpasswd's
    assert hasher.verify("pw", password_hash)


@pytest.mark.parametrize(
    ("password_hash", "right", "wrong"),
    [
        (OCPASSWD_SHA256_PW1, "pw1", "pw2"),
        (MD5_CRYPT_PASSWORD, "password", "Password"),
        (DUMMY_HASH, None, ""),
    ],
)
def test_verifies_existing_crypt_formats(password_hash: str, right: str | None, wrong: str) -> None:
    hasher = CryptHasher()
    if right is not None:
        assert hasher.verify(right, password_hash)
    assert not hasher.verify(wrong, password_hash)


@pytest.mark.parametrize("bad_hash", ["", "$6$bad", "$5$", "!", "plaintext", "$2b$12$short"])
def test_malformed_hashes_never_verify_and_never_raise(bad_hash: str) -> None:
    assert not CryptHasher().verify("anything", bad_hash)


def test_password_with_nul_does_not_raise() -> None:
    assert not CryptHasher().verify("a\x00b", OCPASSWD_SHA256_PW1)


# --- parsing -------------------------------------------------------------------------------


def test_parse_entries_groups_and_lock_marker() -> None:
    text = (
        f"alice:*:{OCPASSWD_SHA256_PW1}\n"
        f"bob:g1,g2:{OCPASSWD_SHA256_PW1}\n"
        f"carol: admins , x ,*:!{OCPASSWD_SHA256_PW1}\n"
    )
    passwd = PasswdFile.parse(text, "users")
    assert [e.username for e in passwd.entries] == ["alice", "bob", "carol"]
    alice, bob, carol = passwd.entries
    assert alice.groups == ()
    assert bob.groups == ("g1", "g2")
    assert carol.groups == ("admins",)
    assert (alice.locked, carol.locked) == (False, True)
    assert carol.line_number == 3
    assert passwd.problems == ()


def test_parse_groups_ignores_one_character_names() -> None:
    assert parse_groups("*") == ()
    assert parse_groups("x") == ()
    assert parse_groups("ab,c,de") == ("ab", "de")


def test_bad_lines_are_reported_with_file_and_line_and_skipped() -> None:
    text = (
        "# a comment\n"
        "\n"
        "garbage\n"
        f":*:{OCPASSWD_SHA256_PW1}\n"
        "dave:*:\n"
        "erin:*:!\n"
        f"frank:*:{OCPASSWD_SHA256_PW1}\n"
        "frank:*:$5$other\n"
        "x:y\n"
    )
    passwd = PasswdFile.parse(text, "/etc/ocserv/ocpasswd")
    assert [e.username for e in passwd.entries] == ["frank"]
    assert [str(p) for p in passwd.problems] == [
        "/etc/ocserv/ocpasswd:3: expected username:groups:hash",
        "/etc/ocserv/ocpasswd:4: empty username",
        "/etc/ocserv/ocpasswd:5: user 'dave': empty password hash",
        "/etc/ocserv/ocpasswd:6: user 'erin': empty password hash",
        "/etc/ocserv/ocpasswd:8: duplicate user 'frank' (the first line wins)",
        "/etc/ocserv/ocpasswd:9: expected username:groups:hash",
    ]


def test_crlf_and_missing_final_newline_are_accepted() -> None:
    passwd = PasswdFile.parse(f"alice:*:{OCPASSWD_SHA256_PW1}\r\nbob:*:{OCPASSWD_SHA256_PW1}")
    assert [e.password_hash for e in passwd.entries] == [OCPASSWD_SHA256_PW1] * 2


def test_undecodable_bytes_are_a_problem_and_survive_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    raw = b"caf\xe9:*:" + OCPASSWD_SHA256_PW1.encode() + b"\n"
    path.write_bytes(raw + f"bob:*:{OCPASSWD_SHA256_PW1}\n".encode())
    passwd = load_passwd_file(str(path))
    assert [e.username for e in passwd.entries] == ["bob"]
    assert [p.line_number for p in passwd.problems] == [1]
    write_passwd_file_atomically(str(path), passwd.without_user("bob").render())
    assert path.read_bytes() == raw


def test_repr_does_not_show_hashes() -> None:
    passwd = PasswdFile.parse(f"alice:*:{OCPASSWD_SHA256_PW1}\n")
    assert OCPASSWD_SHA256_PW1 not in repr(passwd)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_arbitrary_text_parses_without_raising(text: str) -> None:
    passwd = PasswdFile.parse(text, "fuzz")
    meaningful = [
        n
        for n, line in enumerate(passwd.lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # every meaningful line is accounted for exactly once: an entry or a reported problem
    accounted = sorted(
        [e.line_number for e in passwd.entries] + [p.line_number for p in passwd.problems]
    )
    assert accounted == meaningful
    for entry in passwd.entries:
        assert entry.username and ":" not in entry.username


@settings(max_examples=60, deadline=None)
@given(st.binary())
def test_arbitrary_file_bytes_load_without_raising(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "passwd"
    path.write_bytes(data)
    passwd = load_passwd_file(str(path))
    assert passwd.verify("no such user", "x", CountingHasher()) is None
    assert all(str(problem).startswith(f"{path}:") for problem in passwd.problems)


# --- verifying -----------------------------------------------------------------------------


def test_verify_returns_the_users_groups() -> None:
    passwd = PasswdFile.parse(f"bob:g1,g2:{OCPASSWD_SHA256_PW1}\n")
    assert passwd.verify("bob", "pw1") == PasswdMatch("bob", ("g1", "g2"))
    assert passwd.verify("bob", "pw2") is None
    assert passwd.verify("BOB", "pw1") is None


def test_unknown_user_still_costs_one_hash_against_the_dummy() -> None:
    hasher = CountingHasher()
    passwd = PasswdFile.parse(f"bob:*:{OCPASSWD_SHA256_PW1}\n")
    assert passwd.verify("mallory", "pw1", hasher) is None
    assert hasher.verified_hashes == [DUMMY_HASH]
    assert passwd.verify("bob", "pw1", hasher) is not None
    assert hasher.verified_hashes == [DUMMY_HASH, OCPASSWD_SHA256_PW1]


def test_locked_user_never_verifies_but_costs_the_same() -> None:
    hasher = CountingHasher()
    passwd = PasswdFile.parse(f"bob:*:!{OCPASSWD_SHA256_PW1}\n")
    assert passwd.verify("bob", "pw1", hasher) is None
    assert hasher.verified_hashes == [DUMMY_HASH]


def test_empty_password_verifies_only_when_hashed_that_way() -> None:
    # ocpasswd 1.1.6 hashes "" when stdin hits EOF; such a user logs in with an empty password
    passwd = PasswdFile.parse(f"eve:*:{OCPASSWD_SHA256_EMPTY}\n")
    assert passwd.verify("eve", "") == PasswdMatch("eve", ())
    assert passwd.verify("eve", "x") is None


# --- editing -------------------------------------------------------------------------------


def test_add_replace_keeps_order_and_resets_groups() -> None:
    passwd = PasswdFile.parse("# users\nalice:*:H1\nbob:g1:H2\n")
    added = passwd.with_user("carol", "g3,g4", "H3")
    assert added.render() == "# users\nalice:*:H1\nbob:g1:H2\ncarol:g3,g4:H3\n"
    replaced = added.with_user("alice", "*", "H4")
    assert replaced.render() == "# users\nalice:*:H4\nbob:g1:H2\ncarol:g3,g4:H3\n"
    # as ocpasswd: re-adding without groups writes "*", it does not keep the old ones
    regrouped = replaced.with_user("bob", "*", "H5")
    assert regrouped.get("bob") is not None
    assert regrouped.render().splitlines()[2] == "bob:*:H5"


def test_replacing_a_duplicated_user_leaves_one_line() -> None:
    passwd = PasswdFile.parse("bob:*:H1\nalice:*:H2\nbob:*:H3\n")
    assert passwd.with_user("bob", "*", "H9").render() == "bob:*:H9\nalice:*:H2\n"


def test_delete_removes_every_line_of_the_user_only() -> None:
    passwd = PasswdFile.parse("bob:*:H1\nalice:*:H2\nbob:*:H3\nbobby:*:H4\n")
    assert passwd.without_user("bob").render() == "alice:*:H2\nbobby:*:H4\n"
    assert passwd.without_user("nobody").render() == passwd.render()


def test_lock_and_unlock_match_ocpasswd_exactly() -> None:
    passwd = PasswdFile.parse("alice:*:H1\nfoo:bar:baz:qux\n")
    locked = passwd.with_user_locked("alice").with_user_locked("foo")
    # ocpasswd puts "!" right after the second colon, even when the rest holds more colons
    assert locked.render() == "alice:*:!H1\nfoo:bar:!baz:qux\n"
    assert locked.with_user_locked("alice").render() == locked.render()  # idempotent
    unlocked = locked.with_user_unlocked("alice")
    assert unlocked.render() == "alice:*:H1\nfoo:bar:!baz:qux\n"
    assert unlocked.with_user_unlocked("alice").render() == unlocked.render()


@pytest.mark.parametrize("username", ["", "a:b", "a\nb", "#root", "  "])
def test_invalid_usernames_are_refused(username: str) -> None:
    with pytest.raises(PasswdFileError):
        PasswdFile.parse("").with_user(username, "*", "H")


@pytest.mark.parametrize("groups", ["", "a:b", "a\nb"])
def test_invalid_group_fields_are_refused(groups: str) -> None:
    with pytest.raises(PasswdFileError):
        PasswdFile.parse("").with_user("alice", groups, "H")


@settings(max_examples=60, deadline=None)
@given(
    username=st.text(
        st.characters(blacklist_characters=":\n\r#", blacklist_categories=["Cs"]), min_size=1
    ).filter(lambda s: s.strip() != ""),
    groups=st.lists(st.text("abcdefgh", min_size=2, max_size=5), max_size=3),
    locked=st.booleans(),
)
def test_edits_round_trip_through_text(username: str, groups: list[str], locked: bool) -> None:
    groups_field = ",".join(groups) or "*"
    passwd = PasswdFile.parse("other:*:H0\n").with_user(username, groups_field, "$6$s$h")
    if locked:
        passwd = passwd.with_user_locked(username)
    reparsed = PasswdFile.parse(passwd.render())
    entry = reparsed.get(username)
    assert entry is not None
    assert (entry.groups, entry.locked) == (tuple(groups), locked)
    assert reparsed.without_user(username).render() == "other:*:H0\n"


# --- atomic writes -------------------------------------------------------------------------


def test_new_file_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    write_passwd_file_atomically(str(path), "alice:*:H\n")
    assert path.read_text() == "alice:*:H\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_existing_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("old:*:H\n")
    path.chmod(0o640)
    write_passwd_file_atomically(str(path), "new:*:H\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_text() == "new:*:H\n"


def test_crash_before_rename_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("old:*:H\n")
    path.chmod(0o644)
    seen_temp: list[str] = []

    def crash(src: str, dst: str) -> None:
        seen_temp.append(Path(src).read_text())  # the new content was fully written first
        raise OSError(5, "simulated crash")

    with pytest.raises(PasswdFileError, match="simulated crash"):
        write_passwd_file_atomically(str(path), "new:*:H\n", replace=crash)
    assert seen_temp == ["new:*:H\n"]
    assert path.read_text() == "old:*:H\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["ocpasswd"]


def test_interrupt_before_rename_is_not_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("old:*:H\n")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_passwd_file_atomically(str(path), "new:*:H\n", replace=interrupted)
    assert sorted(os.listdir(tmp_path)) == ["ocpasswd"]


def test_unwritable_directory_is_our_error(tmp_path: Path) -> None:
    with pytest.raises(PasswdFileError):
        write_passwd_file_atomically(str(tmp_path / "missing-dir" / "ocpasswd"), "a:*:H\n")


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    # big enough that a non-atomic write would be observable part-way
    versions = [
        "".join(f"user{i}-{v}:g{v % 3}x:$6$salt$" + "h" * 80 + "\n" for i in range(300))
        for v in range(4)
    ]
    write_passwd_file_atomically(str(path), versions[0])
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            seen.append(text[:12])
            if text not in versions:
                bad.append(text[:40])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(200):
            write_passwd_file_atomically(str(path), versions[n % len(versions)])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert bad == []
    assert len(seen) > 0


# --- the reload cache ----------------------------------------------------------------------


def test_cache_reloads_only_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    write_passwd_file_atomically(str(path), f"alice:*:{OCPASSWD_SHA256_PW1}\n")
    cache = PasswdFileCache(str(path))
    assert cache.reload_if_changed() is True
    first = cache.current
    assert cache.reload_if_changed() is False
    assert cache.current is first
    write_passwd_file_atomically(str(path), f"alice:admins:{OCPASSWD_SHA256_PW1}\n")
    assert cache.reload_if_changed() is True
    assert cache.current.verify("alice", "pw1") == PasswdMatch("alice", ("admins",))


def test_cache_notices_an_in_place_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("alice:*:H1\n")
    cache = PasswdFileCache(str(path))
    assert cache.current.get("alice") is not None
    with path.open("a") as stream:  # same inode, new size
        stream.write("bob:*:H2\n")
    assert cache.reload_if_changed() is True
    assert cache.current.get("bob") is not None


def test_cache_logs_problems_with_line_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text("alice:*:H1\nnonsense\n")
    PasswdFileCache(str(path)).reload_if_changed()
    assert f"{path}:2: expected username:groups:hash" in caplog.text


def test_cache_forgets_a_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "ocpasswd"
    path.write_text(f"alice:*:{OCPASSWD_SHA256_PW1}\n")
    cache = PasswdFileCache(str(path))
    assert cache.current.verify("alice", "pw1") is not None
    path.unlink()
    with pytest.raises(PasswdFileError):
        cache.reload_if_changed()
    with pytest.raises(PasswdFileError):
        _ = cache.current


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PasswdFileError, match="cannot read"):
        load_passwd_file(str(tmp_path / "nope"))
    assert load_passwd_file(str(tmp_path / "nope"), missing_ok=True).entries == ()


@settings(max_examples=60, deadline=None)
@given(username=st.text(max_size=20), password=st.text(max_size=40))
def test_verify_with_arbitrary_peer_input_never_raises(username: str, password: str) -> None:
    passwd = PasswdFile.parse(f"bob:*:{OCPASSWD_SHA256_PW1}\nbad:*:$6$broken\n")
    result = passwd.verify(username, password)
    assert result is None or (username, password) == ("bob", "pw1")
