"""The optional C modules; everything else is in pyproject.toml.

`_dtls_fastpath` (AES-GCM DTLS records between a UDP socket and tun devices, via OpenSSL's
libcrypto) and `_cstp_fastpath` (CSTP frames between a TLS connection and a tun device, through
the OpenSSL that pyOpenSSL uses) are optional: without a compiler (or libssl-dev) the build skips
them and the server uses its pure-Python data path. `_netlink` (an rtnetlink round trip without
the GIL, for configuring tuns) falls back to Python's socket module the same way.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trio_ocserv._dtls_fastpath",
            sources=["src/trio_ocserv/_dtls_fastpath.c"],
            libraries=["crypto", "pthread"],
            extra_compile_args=[
                "-O2", "-Wall", "-Wextra",
                "-Wno-missing-field-initializers", "-Wno-unused-parameter",
            ],
            optional=True,
        ),
        Extension(
            "trio_ocserv._cstp_fastpath",
            sources=["src/trio_ocserv/_cstp_fastpath.c"],
            libraries=["pthread"],
            extra_compile_args=[
                "-O2", "-Wall", "-Wextra",
                "-Wno-missing-field-initializers", "-Wno-unused-parameter",
            ],
            optional=True,
        ),
        Extension(
            "trio_ocserv._netlink",
            sources=["src/trio_ocserv/_netlink.c"],
            extra_compile_args=[
                "-O2", "-Wall", "-Wextra",
                "-Wno-missing-field-initializers", "-Wno-unused-parameter",
            ],
            optional=True,
        ),
    ]
)
