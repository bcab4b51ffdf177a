"""Our own DTLS engine: records, PRF, suites, PSK-NEGOTIATE and legacy resumption handshakes."""
