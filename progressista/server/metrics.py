"""Counters the server keeps, and their Prometheus exposition at ``GET /metrics``.

Hot paths bump plain integers; a collector turns them into Prometheus families only when scraped,
so ingest never pays for a metrics library call. The registry belongs to one application.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..schema import STATES
from .hub import Hub
from .table import TaskTable
from .throttle import ThrottleStats

__all__ = ["ConnectionStats", "IngestStats", "exposition"]


@dataclass
class IngestStats:
    """What ``POST /progress`` has seen since the server started."""

    requests: int = 0
    events_accepted: int = 0
    events_ignored: int = 0
    rejected: Counter[int] = field(default_factory=Counter)


@dataclass
class ConnectionStats:
    """What happened to the server's connections since it started."""

    open: int = 0
    #: Closed because their request did not arrive within --read-timeout.
    read_timeouts: int = 0
    #: Closed without a request under way to make room for a new one (--max-connections).
    evicted: int = 0
    #: New connections closed at once: the limit was reached and every connection was busy.
    refused: int = 0
    #: Requests aiohttp's parser refused (answered 400).
    malformed: int = 0
    #: accept() failures: out of file descriptors (EMFILE) and the like.
    accept_errors: int = 0


class _ServerCollector(Collector):
    def __init__(
        self,
        stats: IngestStats,
        hub: Hub,
        table: TaskTable,
        connections: ConnectionStats,
        tokens: ThrottleStats,
    ) -> None:
        self._stats = stats
        self._hub = hub
        self._table = table
        self._connections = connections
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield CounterMetricFamily(
            "progressista_ingest_requests",
            "POST /progress requests received",
            value=stats.requests,
        )
        events = CounterMetricFamily(
            "progressista_events", "Events received, by outcome", labels=["outcome"]
        )
        events.add_metric(["accepted"], stats.events_accepted)
        events.add_metric(["ignored"], stats.events_ignored)
        yield events
        rejected = CounterMetricFamily(
            "progressista_ingest_rejected",
            "Rejected POST /progress requests, by HTTP status",
            labels=["status"],
        )
        for status, count in sorted(stats.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        by_state = self._table.counts()  # kept per state: no walk over the tasks
        tasks = GaugeMetricFamily("progressista_tasks", "Tasks stored, by state", labels=["state"])
        for state in STATES:
            tasks.add_metric([state], by_state[state])
        yield tasks
        hub = self._hub
        yield GaugeMetricFamily(
            "progressista_viewers", "Connected WebSocket viewers", value=hub.viewer_count
        )
        yield CounterMetricFamily(
            "progressista_ws_messages", "WebSocket messages sent", value=hub.messages_sent
        )
        yield CounterMetricFamily(
            "progressista_ws_sent_bytes", "WebSocket payload bytes sent", value=hub.bytes_sent
        )
        buffered, behind = hub.backlogs()
        yield GaugeMetricFamily(
            "progressista_ws_buffered_bytes",
            "Bytes waiting in viewers' socket buffers",
            value=buffered,
        )
        yield GaugeMetricFamily(
            "progressista_viewers_behind",
            "Viewers skipped until their socket drains (they catch up then)",
            value=behind,
        )
        yield GaugeMetricFamily(
            "progressista_windows",
            "Distinct filtered or windowed views being kept for viewers",
            value=hub.window_count,
        )
        yield CounterMetricFamily(
            "progressista_viewers_dropped",
            "Viewers disconnected for not reading",
            value=hub.viewers_dropped,
        )
        connections = self._connections
        yield GaugeMetricFamily(
            "progressista_connections", "Open HTTP connections", value=connections.open
        )
        closed = CounterMetricFamily(
            "progressista_connections_closed",
            "Connections the server closed: read_timeout (the request was too slow), evicted "
            "(idle, to make room), refused (at --max-connections, every connection busy)",
            labels=["reason"],
        )
        closed.add_metric(["read_timeout"], connections.read_timeouts)
        closed.add_metric(["evicted"], connections.evicted)
        closed.add_metric(["refused"], connections.refused)
        yield closed
        yield CounterMetricFamily(
            "progressista_malformed_requests",
            "Requests the HTTP parser refused (answered 400)",
            value=connections.malformed,
        )
        yield CounterMetricFamily(
            "progressista_accept_errors",
            "Failed accept() calls (out of file descriptors)",
            value=connections.accept_errors,
        )
        yield CounterMetricFamily(
            "progressista_token_failures",
            "Requests and sign-ins with a wrong token",
            value=self._tokens.failures,
        )
        yield CounterMetricFamily(
            "progressista_token_throttled",
            "Requests and sign-ins refused with 429: too many wrong tokens from their address",
            value=self._tokens.refused,
        )


def exposition(
    stats: IngestStats,
    hub: Hub,
    table: TaskTable,
    connections: ConnectionStats,
    tokens: ThrottleStats,
) -> bytes:
    """The Prometheus text format of everything above."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(stats, hub, table, connections, tokens))
    return generate_latest(registry)
