"""pytest plugin: the `ocserv_server` fixture, a factory starting in-process trio-ocserv servers.

Enable it with `pytest_plugins = ["trio_ocserv.testing.plugin"]` in your top-level conftest.py
(pytest-trio must be installed; async tests need `trio_mode = true` or `@pytest.mark.trio`):

```
async def test_login(ocserv_server):
    server = await ocserv_server("max-clients = 4\\n")
    async with server.session("bob") as tunnel:
        assert tunnel.config.address is not None
```
Every server started by the factory stops when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio

from trio_ocserv.auth.registry import MethodFactory
from trio_ocserv.testing.harness import (
    DEFAULT_HARNESS_USERS,
    HarnessServer,
    StartServer,
    running_server,
)

__all__ = ["StartServer", "ocserv_server"]


@pytest.fixture
async def ocserv_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """`await ocserv_server(config_text="", *, users=..., dtls=True, methods=None)` starts one
    server (files under the test's tmp_path) and returns its `HarnessServer`."""
    started = 0

    async def serve(
        config_text: str,
        users: Mapping[str, tuple[str, tuple[str, ...]]],
        dtls: bool,
        methods: MethodFactory | None,
        *,
        task_status: trio.TaskStatus[HarnessServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        nonlocal started
        started += 1
        workdir = tmp_path / f"ocserv-{started}"
        async with running_server(
            config_text, workdir=workdir, users=users, dtls=dtls, methods=methods
        ) as server:
            task_status.started(server)
            await trio.sleep_forever()

    # The servers live in the fixture's own nursery (their tasks must not belong to the test).
    async with trio.open_nursery() as nursery:

        async def start(
            config_text: str = "",
            *,
            users: Mapping[str, tuple[str, tuple[str, ...]]] = DEFAULT_HARNESS_USERS,
            dtls: bool = True,
            methods: MethodFactory | None = None,
        ) -> HarnessServer:
            server: HarnessServer = await nursery.start(serve, config_text, users, dtls, methods)
            return server

        yield start
        nursery.cancel_scope.cancel()
