"""The libxcrypt backend agrees with libpass, hash for hash, both ways."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from trio_ocserv.auth import libcrypt
from trio_ocserv.auth.passwd_file import CryptHasher

pytestmark = pytest.mark.skipif(not libcrypt.available(), reason="needs the system libcrypt")


@pytest.mark.parametrize("scheme", ["sha512", "sha256"])
def test_our_hashes_verify_with_libpass_and_back(scheme: str) -> None:
    ours = libcrypt.LibcryptHasher(scheme).hash("correct horse")
    assert ours.startswith({"sha512": "$6$", "sha256": "$5$"}[scheme])
    verifier = {"sha512": sha512_crypt, "sha256": sha256_crypt}[scheme]
    assert verifier.verify("correct horse", ours)
    assert not verifier.verify("wrong horse", ours)
    theirs = verifier.using(rounds=5000).hash("correct horse")
    assert libcrypt.LibcryptHasher().verify("correct horse", theirs)
    assert not libcrypt.LibcryptHasher().verify("wrong horse", theirs)


def test_md5_and_garbage() -> None:
    hasher = libcrypt.LibcryptHasher()
    assert hasher.verify("pw", md5_crypt.hash("pw"))
    for bad in ("", "*", "!$6$abc$def", "$6$", "$9$x$y", "garbage"):
        assert not hasher.verify("pw", bad)
    assert not hasher.verify("p\0w", hasher.hash("pw"))


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s))
def test_both_backends_agree(password: str) -> None:
    native, portable = CryptHasher(native=True), CryptHasher(native=False)
    assert portable.verify(password, native.hash(password))
    assert native.verify(password, portable.hash(password))
