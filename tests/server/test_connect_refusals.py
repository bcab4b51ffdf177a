"""CONNECT refusals come back as HTTP answers with a reason, never as a dropped connection.

In-process server (`trio_ocserv.testing.harness`), loopback only, no root.
"""

from __future__ import annotations

import errno

import pytest
import trio

from trio_ocserv.net.link import TunAddressing
from trio_ocserv.net.tun import Tun
from trio_ocserv.testing.client import ConnectRejected
from trio_ocserv.testing.harness import running_server


async def test_no_tun_device_is_a_503_with_a_reason() -> None:
    with trio.fail_after(20):
        async with running_server(dtls=False) as server:

            async def out_of_fds(addressing: TunAddressing) -> Tun:
                raise OSError(errno.EMFILE, "Too many open files")

            server.tuns.open_tun = out_of_fds  # type: ignore[method-assign]
            with pytest.raises(ConnectRejected, match=r"503 .*no tun device"):
                await server.connect("bob")
            # The session's address went back to the pool: once tuns work, bob gets in.
            del server.tuns.open_tun
            tunnel = await server.connect("bob")
            assert str(tunnel.config.address).startswith("192.168.77.")
            await tunnel.disconnect()
