"""CONNECT refusals come back as HTTP answers with a reason, never as a dropped connection.

In-process server (`trio_ocserv.testing.harness`), loopback only, no root.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from trio_ocserv.net.link import LinkError, TunAddressing
from trio_ocserv.net.tun import Tun
from trio_ocserv.testing.client import ConnectRejected, ServerDisconnected
from trio_ocserv.testing.harness import running_server


async def test_no_tun_device_is_a_503_with_a_reason() -> None:
    with trio.fail_after(20):
        async with running_server(dtls=False) as server:

            async def out_of_fds() -> Tun:
                raise OSError(errno.EMFILE, "Too many open files")

            server.tuns.reserve_tun = out_of_fds  # type: ignore[method-assign]
            with pytest.raises(ConnectRejected, match=r"503 .*no tun device"):
                await server.connect("bob")
            # The session's address went back to the pool: once tuns work, bob gets in.
            del server.tuns.reserve_tun
            tunnel = await server.connect("bob")
            assert str(tunnel.config.address).startswith("192.168.77.")
            await tunnel.disconnect()


async def test_a_tun_that_cannot_be_configured_after_the_answer_ends_with_a_disconnect() -> None:
    """Without connect scripts the answer goes out while the tun is configured: a failure then
    comes too late for a 503, so the client is told with a DISCONNECT, and nothing is kept."""
    with trio.fail_after(20):
        async with running_server(dtls=True) as server:
            configure = server.tuns.configure_tun
            failed: list[Tun] = []

            async def refused(tun: Tun, addressing: TunAddressing) -> None:
                await trio.sleep(0.05)  # the answer is out by then
                failed.append(tun)
                raise LinkError("vpns0: configure: File exists")

            server.tuns.configure_tun = refused  # type: ignore[method-assign]
            async with server.client() as vpn:
                auth = await vpn.authenticate(server.credentials("bob"))
                tunnel = await vpn.connect_tunnel(auth.cookie)
            with pytest.raises(ServerDisconnected):
                await tunnel.receive_packet()
            await tunnel.aclose()
            assert server.state.tunnels == {}
            assert len(failed) == 1 and failed[0].closed
            assert server.state.udp is not None and server.state.udp.by_session_id == {}
            server.tuns.configure_tun = configure  # type: ignore[method-assign]
            tunnel = await server.connect("bob", dtls=True)
            assert str(tunnel.config.address).startswith("192.168.77.")
            await tunnel.disconnect()


@pytest.mark.parametrize("script", [None, "disconnect-script"])
async def test_a_tun_is_offered_for_reuse_only_when_no_script_saw_it(
    script: str | None, tmp_path: Path
) -> None:
    """The provider may keep a device for the next tunnel (devices.py) only if no script saw
    its name: a disconnect script may have left rules on it."""
    closed: list[bool] = []
    config = ""
    if script is not None:
        path = tmp_path / "script.sh"
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
        config = f"{script} = {path}\n"
    with trio.fail_after(20):
        async with running_server(config, dtls=False) as server:
            close = server.tuns.close_tun

            async def recording_close(tun: Tun, *, reuse: bool = False) -> None:
                closed.append(reuse)
                await close(tun, reuse=reuse)

            server.tuns.close_tun = recording_close  # type: ignore[method-assign]
            tunnel = await server.connect("bob")
            await tunnel.disconnect()
            while not closed:
                await trio.sleep(0.01)
    assert closed == [script is None]
