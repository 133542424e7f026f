"""Counters the server keeps, and their Prometheus exposition at ``GET /metrics``.

Hot paths bump plain integers; a collector turns them into Prometheus families only when scraped,
so ingest never pays for a metrics library call. The registry belongs to one application.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..schema import STATES
from .hub import Hub
from .task import Task

__all__ = ["IngestStats", "exposition"]


@dataclass
class IngestStats:
    """What ``POST /progress`` has seen since the server started."""

    requests: int = 0
    events_accepted: int = 0
    events_ignored: int = 0
    rejected: Counter[int] = field(default_factory=Counter)


class _ServerCollector(Collector):
    def __init__(self, stats: IngestStats, hub: Hub, tasks: Mapping[str, Task]) -> None:
        self._stats = stats
        self._hub = hub
        self._tasks = tasks

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
        by_state = Counter(task["state"] for task in list(self._tasks.values()))
        tasks = GaugeMetricFamily("progressista_tasks", "Tasks stored, by state", labels=["state"])
        for state in STATES:
            tasks.add_metric([state], by_state.get(state, 0))
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
        backlogs = hub.backlogs()
        yield GaugeMetricFamily(
            "progressista_ws_buffered_bytes",
            "Bytes waiting in viewers' socket buffers",
            value=sum(buffered for buffered, _ in backlogs),
        )
        yield GaugeMetricFamily(
            "progressista_ws_backlog_tasks",
            "Task ids waiting in the backlogs of viewers that fell behind",
            value=sum(waiting for _, waiting in backlogs),
        )
        yield CounterMetricFamily(
            "progressista_viewers_dropped",
            "Viewers disconnected for not reading",
            value=hub.viewers_dropped,
        )


def exposition(stats: IngestStats, hub: Hub, tasks: Mapping[str, Task]) -> bytes:
    """The Prometheus text format of everything above."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServerCollector(stats, hub, tasks))
    return generate_latest(registry)
