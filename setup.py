"""The optional C modules; everything else is in pyproject.toml.

`_dtls_fastpath` (AES-GCM DTLS records between a UDP socket and tun devices, and the login
handshake answers of `_dtls_handshake_answer.c`, via OpenSSL's libcrypto) and `_cstp_fastpath` (CSTP
frames between a TLS connection and a tun device, through the OpenSSL that pyOpenSSL uses) are
optional: without a compiler (or libssl-dev) the build skips them and the server uses its
pure-Python data path. `_netlink` (an rtnetlink round trip without the GIL, for configuring tuns)
falls back to Python's socket module the same way.
"""

from setuptools import Extension, setup


def optional_c_module(
    name: str, libraries: tuple[str, ...] = (), parts: tuple[str, ...] = ()
) -> Extension:
    return Extension(
        f"trio_ocserv.{name}",
        sources=[f"src/trio_ocserv/{source}.c" for source in (name, *parts)],
        depends=[f"src/trio_ocserv/{part}.h" for part in parts],
        libraries=list(libraries),
        extra_compile_args=[
            "-O2", "-Wall", "-Wextra",
            "-Wno-missing-field-initializers", "-Wno-unused-parameter",
        ],
        optional=True,
    )


setup(
    ext_modules=[
        optional_c_module(
            "_dtls_fastpath", ("crypto", "pthread"), parts=("_dtls_handshake_answer",)
        ),
        optional_c_module("_cstp_fastpath", ("pthread",)),
        optional_c_module("_netlink"),
    ]
)
