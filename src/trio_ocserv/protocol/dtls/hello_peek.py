"""Cheap ClientHello inspection for the UDP demultiplexer (protocol.md §7.7 step 2).

Rules: `peek_client_hello_session_id` looks at one datagram without building any engine state and
never raises; anything that is not a plausible first ClientHello fragment gives None. It prefers the
deprecated openconnect App-ID extension (48018) when asked to, then falls back to the session_id.
"""

from __future__ import annotations

from .handshake_messages import CLIENT_HELLO, EXT_OPENCONNECT_APP_ID, HANDSHAKE_HEADER_LENGTH
from .record import CONTENT_HANDSHAKE, DTLS_VERSIONS, RECORD_HEADER_LENGTH

_BODY_START = RECORD_HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH
#: Offset of the session_id length byte: record 13 + handshake 12 + version 2 + random 32.
_SESSION_ID_OFFSET = _BODY_START + 2 + 32
_ZERO_RANDOM = bytes(32)


def is_client_hello(datagram: bytes) -> bool:
    """True if the datagram starts with a handshake record carrying a ClientHello fragment."""
    return (
        len(datagram) > _BODY_START
        and datagram[0] == CONTENT_HANDSHAKE
        and int.from_bytes(datagram[1:3], "big") in DTLS_VERSIONS
        and datagram[RECORD_HEADER_LENGTH] == CLIENT_HELLO
    )


def peek_client_hello_session_id(
    datagram: bytes, *, check_app_id_extension: bool = True
) -> bytes | None:
    """The App-ID / session id a ClientHello names, or None if there is none to find."""
    if not is_client_hello(datagram) or len(datagram) <= _SESSION_ID_OFFSET:
        return None
    record_end = RECORD_HEADER_LENGTH + int.from_bytes(datagram[11:13], "big")
    fragment_length = int.from_bytes(datagram[22:25], "big")
    fragment_end = min(record_end, _BODY_START + fragment_length, len(datagram))
    # Broken GnuTLS 3.6.3-3.6.12 clients send an all-zero random: ocserv drops those.
    if datagram[_BODY_START + 2 : _SESSION_ID_OFFSET] == _ZERO_RANDOM:
        return None
    length = datagram[_SESSION_ID_OFFSET]
    id_end = _SESSION_ID_OFFSET + 1 + length
    if length == 0 or length > 32 or id_end > fragment_end:
        return None
    session_id = datagram[_SESSION_ID_OFFSET + 1 : id_end]
    if check_app_id_extension:
        app_id = _find_app_id_extension(datagram, id_end, fragment_end)
        if app_id is not None:
            return app_id
    return session_id


def _find_app_id_extension(datagram: bytes, pos: int, end: int) -> bytes | None:
    """Walk cookie, suites, compression and extensions with bounds checks; None when absent/bad."""
    if pos >= end:
        return None
    pos += 1 + datagram[pos]  # cookie
    if pos + 2 > end:
        return None
    pos += 2 + int.from_bytes(datagram[pos : pos + 2], "big")  # cipher suites
    if pos >= end:
        return None
    pos += 1 + datagram[pos]  # compression methods
    if pos + 2 > end:
        return None
    extensions_end = min(end, pos + 2 + int.from_bytes(datagram[pos : pos + 2], "big"))
    pos += 2
    while pos + 4 <= extensions_end:
        ext_type = int.from_bytes(datagram[pos : pos + 2], "big")
        ext_length = int.from_bytes(datagram[pos + 2 : pos + 4], "big")
        data_start = pos + 4
        pos = data_start + ext_length
        if pos > extensions_end:
            return None
        if ext_type == EXT_OPENCONNECT_APP_ID and ext_length >= 1:
            id_length = datagram[data_start]
            if 0 < id_length <= ext_length - 1:
                return datagram[data_start + 1 : data_start + 1 + id_length]
            return None
    return None
