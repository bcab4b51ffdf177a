"""crypt(3) through the system's libxcrypt (what ocserv and ocpasswd use), via ctypes.

Why not only libpass: its SHA-crypt code is pure Python here (no C backend), about 7 ms of CPU per
5000-round hash while holding the GIL, so a burst of logins would stall every tunnel of the event
loop. libxcrypt computes the same hashes in C, and ctypes releases the GIL during the call.

`crypt_rn` is the reentrant form: one 32 KiB `struct crypt_data` per call, so worker threads never
share state. Verification compares the recomputed hash in constant time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
import secrets
from typing import Final

import attrs

_CRYPT_DATA_SIZE: Final = 32768  # sizeof(struct crypt_data) in libxcrypt
_SALT_ALPHABET: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PREFIX: Final = {"sha512": "$6$", "sha256": "$5$"}


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        function = lib.crypt_rn
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    function.restype = ctypes.c_char_p
    return lib


_LIB: Final = _load()


def available() -> bool:
    return _LIB is not None


def crypt(password: str, setting: str) -> str | None:
    """crypt(3) of `password` with the method and salt of `setting`; None when libcrypt refuses
    (unknown method, malformed setting, a NUL in the password)."""
    if _LIB is None or "\0" in password or "\0" in setting:
        return None
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    result: bytes | None = _LIB.crypt_rn(
        password.encode(), setting.encode("ascii", "replace"), data, len(data)
    )
    if result is None or result.startswith(b"*"):
        return None
    return result.decode("ascii", "replace")


@attrs.define(slots=True)
class LibcryptHasher:
    """Writes `$6$` (or `$5$`) with the default 5000 rounds, as ocpasswd does; verifies every
    method libxcrypt knows (`$y$`, `$6$`, `$5$`, `$2b$`, `$1$`, DES ...)."""

    scheme: str = "sha512"

    def hash(self, password: str) -> str:
        salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))
        result = crypt(password, _PREFIX[self.scheme] + salt)
        if result is None:
            raise ValueError("cannot hash this password")
        return result

    def verify(self, password: str, password_hash: str) -> bool:
        result = crypt(password, password_hash)
        # compare_digest needs ASCII strings; crypt output and stored hashes are ASCII.
        return result is not None and hmac.compare_digest(
            result.encode("ascii", "replace"), password_hash.encode("ascii", "replace")
        )
