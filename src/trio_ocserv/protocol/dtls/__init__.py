"""Our own DTLS engine: records, PRF, cipher suites, PSK-NEGOTIATE and legacy resumption handshakes."""
