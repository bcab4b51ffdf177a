"""Sans-IO protocol code: bytes in, events and bytes out. No sockets, clocks or threads here."""
