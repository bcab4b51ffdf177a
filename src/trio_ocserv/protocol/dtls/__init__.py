"""Our own DTLS engine: records, PRF, cipher suites, PSK-NEGOTIATE and legacy resumption handshakes.

Sans-IO throughout (see `endpoint.py` for the rules). What the rest of the server uses:

* `select_dtls_mode` (`mode.py`): on CONNECT, which DTLS mode and suite to announce.
* `peek_client_hello_session_id` (`hello_peek.py`): the UDP demultiplexer's look at a datagram.
* `DtlsServer` with `PskServerParameters` or `LegacyServerParameters` (`server.py`): one per
  ClientHello; drive it with `receive_datagram`/`datagrams_to_send`/`next_event`/timers, then
  `send_application_data` on the hot path.
* `DtlsPskClient`, `DtlsLegacyClient` (`client.py`): the same for our test client and load tools.
"""

from .client import DtlsLegacyClient, DtlsPskClient
from .errors import DtlsDecodeError, DtlsError, DtlsLocalError
from .events import AlertReceived, ApplicationData, Event, HandshakeComplete, HandshakeFailed
from .hello_peek import is_client_hello, peek_client_hello_session_id
from .mode import DtlsModeSettings, LegacyMode, NoDtls, PskMode, select_dtls_mode
from .server import DtlsServer, LegacyServerParameters, PskServerParameters

__all__ = [
    "AlertReceived",
    "ApplicationData",
    "DtlsDecodeError",
    "DtlsError",
    "DtlsLegacyClient",
    "DtlsLocalError",
    "DtlsModeSettings",
    "DtlsPskClient",
    "DtlsServer",
    "Event",
    "HandshakeComplete",
    "HandshakeFailed",
    "LegacyMode",
    "LegacyServerParameters",
    "NoDtls",
    "PskMode",
    "PskServerParameters",
    "is_client_hello",
    "peek_client_hello_session_id",
    "select_dtls_mode",
]
