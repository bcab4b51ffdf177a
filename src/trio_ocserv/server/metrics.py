"""The optional Prometheus/OpenMetrics endpoint (`metrics-listen = HOST:PORT`, a trio-ocserv key).

Owns three things:
- `TrafficTotals`, a tunnel observer that keeps the figures of tunnels that ended (bytes and
  packets per direction, in total and per user), so counters never go back when a tunnel ends;
- `ServerCollector`, a prometheus-client collector that reads the live state at scrape time
  (sessions by channel, cookies, logins, bans, traffic = ended + live tunnels, the same sums
  `ctl show status` reports: rx is client -> server);
- `MetricsServer`, a small HTTP/1.1 server on a Trio socket answering `GET /metrics` (one request
  per connection), instead of prometheus-client's own thread server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import attrs
import h11
import trio
from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import CollectorRegistry

from trio_ocserv.server.state import ServerState, TunnelHandle
from trio_ocserv.server.tunnel import live_counters

__all__ = [
    "MetricsServer",
    "ServerCollector",
    "TrafficTotals",
    "make_registry",
    "parse_listen_address",
    "render",
]

log = logging.getLogger("trio_ocserv")

_PREFIX = "trio_ocserv"
_REQUEST_TIMEOUT = 5.0
_RECEIVE_SIZE = 4096
_MAX_REQUEST_HEAD = 8192


@attrs.define
class Traffic:
    bytes_in: int = 0  # client -> server (ctl's rx)
    bytes_out: int = 0  # server -> client (ctl's tx)
    packets_in: int = 0
    packets_out: int = 0

    def add(self, counters: object) -> None:
        self.bytes_in += int(getattr(counters, "bytes_in", 0))
        self.bytes_out += int(getattr(counters, "bytes_out", 0))
        self.packets_in += int(getattr(counters, "packets_in", 0))
        self.packets_out += int(getattr(counters, "packets_out", 0))


@attrs.define(eq=False)
class TrafficTotals:
    """What tunnels that already ended moved; a `TunnelObserver`."""

    ended: Traffic = attrs.Factory(Traffic)
    by_user: dict[str, Traffic] = attrs.Factory(dict)
    tunnels_ended: int = 0

    def tunnel_up(self, tunnel_id: int, handle: TunnelHandle) -> None:
        pass

    def tunnel_down(self, tunnel_id: int, handle: TunnelHandle, end: object) -> None:
        counters = handle.tunnel.counters
        self.tunnels_ended += 1
        self.ended.add(counters)
        self.by_user.setdefault(str(handle.session.username), Traffic()).add(counters)


class ServerCollector:
    """Reads the server's state at scrape time (a prometheus-client custom collector)."""

    def __init__(self, state: ServerState, totals: TrafficTotals) -> None:
        self.state = state
        self.totals = totals

    def describe(self) -> list[Metric]:
        return []  # names are known only when collected; the registry must not call collect()

    def collect(self) -> Iterator[Metric]:
        state, totals = self.state, self.totals
        handles = list(state.tunnels.values())
        now = state.clock()

        sessions = GaugeMetricFamily(
            f"{_PREFIX}_sessions", "Live tunnels, by the channel carrying their data",
            labels=["channel"],
        )  # fmt: skip
        on_dtls = sum(1 for h in handles if _dtls_up(h))
        sessions.add_metric(["dtls"], on_dtls)
        sessions.add_metric(["cstp"], len(handles) - on_dtls)
        yield sessions
        yield GaugeMetricFamily(
            f"{_PREFIX}_cookies", "Sessions (cookies) held, in use or not",
            value=len(state.sessions),
        )  # fmt: skip
        yield CounterMetricFamily(
            f"{_PREFIX}_sessions_handled", "Tunnels that ended", value=totals.tunnels_ended
        )
        logins = CounterMetricFamily(
            f"{_PREFIX}_logins", "Login attempts by result (failed: each wrong answer)",
            labels=["result"],
        )  # fmt: skip
        logins.add_metric(["ok"], state.login_counts.succeeded)
        logins.add_metric(["failed"], state.login_counts.failed)
        yield logins
        yield GaugeMetricFamily(
            f"{_PREFIX}_banned_ips", "Addresses banned now", value=len(state.bans.bans(now))
        )
        yield GaugeMetricFamily(
            f"{_PREFIX}_ban_score_ips", "Addresses with a ban score now",
            value=len(state.bans.points(now)),
        )  # fmt: skip

        traffic = Traffic(**attrs.asdict(totals.ended))
        by_user = {user: Traffic(**attrs.asdict(t)) for user, t in totals.by_user.items()}
        for handle in handles:
            counters = live_counters(handle.tunnel)
            traffic.add(counters)
            by_user.setdefault(str(handle.session.username), Traffic()).add(counters)
        yield _by_direction("bytes", "IP packet bytes", traffic.bytes_in, traffic.bytes_out)
        yield _by_direction("packets", "IP packets", traffic.packets_in, traffic.packets_out)
        user_bytes = CounterMetricFamily(
            f"{_PREFIX}_user_bytes", "IP packet bytes by user and direction",
            labels=["user", "direction"],
        )  # fmt: skip
        for user, figures in sorted(by_user.items()):
            user_bytes.add_metric([user, "rx"], figures.bytes_in)
            user_bytes.add_metric([user, "tx"], figures.bytes_out)
        yield user_bytes


def _dtls_up(handle: TunnelHandle) -> bool:
    dtls = handle.tunnel.dtls
    return dtls is not None and bool(dtls.path_up)


def _by_direction(name: str, documentation: str, rx: int, tx: int) -> CounterMetricFamily:
    family = CounterMetricFamily(
        f"{_PREFIX}_{name}", f"{documentation} (rx: from clients, tx: to clients)",
        labels=["direction"],
    )  # fmt: skip
    family.add_metric(["rx"], rx)
    family.add_metric(["tx"], tx)
    return family


def make_registry(state: ServerState, totals: TrafficTotals) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(state, totals))
    return registry


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition text and its content type: OpenMetrics when the scraper asks for it."""
    if "application/openmetrics-text" in accept:
        text = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        return bytes(text), openmetrics.CONTENT_TYPE_LATEST
    return exposition.generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` / `[V6]:PORT` (checked by the config parser) as a host and a port."""
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


@attrs.define(eq=False)
class MetricsServer:
    registry: CollectorRegistry
    host: str
    port: int  # 0: any (tests)
    bound_port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.bound_port = int(listeners[0].socket.getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self.host, self.bound_port)
        async with trio.open_nursery() as nursery:
            task_status.started(self.bound_port)
            await trio.serve_listeners(self._serve_client, listeners, handler_nursery=nursery)

    async def _serve_client(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                with trio.fail_after(_REQUEST_TIMEOUT):
                    await self._answer(stream)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except h11.ProtocolError:
                pass  # not HTTP; nothing to answer

    async def _answer(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_HEAD)
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(_RECEIVE_SIZE))
                connection.receive_data(data)
                if not data and connection.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                break
            return
        status, content_type, body = self._response(event)
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        data = connection.send(h11.Response(status_code=status, headers=headers))
        data = (data or b"") + (connection.send(h11.Data(data=body)) or b"")
        data += connection.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)

    def _response(self, request: h11.Request) -> tuple[int, str, bytes]:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path not in (b"/metrics", b"/"):
            return 404, "text/plain; charset=utf-8", b"not found\n"
        accept = b", ".join(value for name, value in request.headers if name == b"accept")
        body, content_type = render(self.registry, accept.decode("latin-1"))
        return 200, content_type, b"" if request.method == b"HEAD" else body
