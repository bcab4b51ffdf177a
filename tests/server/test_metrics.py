"""The metrics endpoint's HTTP handling and exposition (the figures themselves are checked
against `ctl show status` in test_app.py)."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from trio.testing import memory_stream_pair

from trio_ocserv.config import ConfigError, parse_config_text
from trio_ocserv.server.metrics import MetricsServer, parse_listen_address, render


class _Fixed:
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        return [CounterMetricFamily("trio_ocserv_things", "Things", value=3)]


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return registry


async def _exchange(request: bytes) -> bytes:
    server = MetricsServer(_registry(), "127.0.0.1", 0)
    client, served = memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._serve_client, served)
        await client.send_all(request)
        await client.send_eof()
        reply = b""
        with trio.fail_after(5):
            while chunk := await client.receive_some(65536):
                reply += chunk
    return reply


def test_render_negotiates_openmetrics() -> None:
    text, content_type = render(_registry(), "text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"trio_ocserv_things_total 3.0\n" in text
    text, content_type = render(_registry(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith(b"# EOF\n")


def test_parse_listen_address() -> None:
    assert parse_listen_address("127.0.0.1:9616") == ("127.0.0.1", 9616)
    assert parse_listen_address("[::1]:9616") == ("::1", 9616)


async def test_get_metrics_and_other_paths_and_methods() -> None:
    reply = await _exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"trio_ocserv_things_total 3.0\n")
    assert (await _exchange(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 404 "
    )
    assert (await _exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 405 "
    )
    assert (await _exchange(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).endswith(b"\r\n\r\n")


async def test_over_loopback() -> None:
    async with trio.open_nursery() as nursery:
        server = MetricsServer(_registry(), "127.0.0.1", 0)
        port = await nursery.start(server.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and b"trio_ocserv_things_total" in data
        nursery.cancel_scope.cancel()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600) | st.builds(lambda b: b"GET /metrics HTTP/1.1\r\n" + b, st.binary()))
def test_any_input_is_answered_or_dropped(request: bytes) -> None:
    async def check() -> None:
        reply = await _exchange(request)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")

    trio.run(check)


def test_metrics_listen_key_parses_without_warning() -> None:
    base = 'auth = "plain[passwd=/x]"\n'
    config = parse_config_text(base + "metrics-listen = [::1]:9616\n", "x.conf")
    assert (config.settings.metrics_listen, config.warnings) == ("[::1]:9616", ())
    assert parse_config_text(base, "x.conf").settings.metrics_listen is None
    for bad in ("9616", "::1:9616", "a b:1", "host:0", "[1.2.3.4]:1"):
        with pytest.raises(ConfigError, match="metrics-listen"):
            parse_config_text(base + f"metrics-listen = {bad}\n", "x.conf")
