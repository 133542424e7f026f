"""Counters the server keeps, and their Prometheus exposition at ``GET /metrics``.

Hot paths bump plain integers; a collector turns them into Prometheus families only when scraped,
so ingest never pays for a metrics library call. The registry belongs to one application.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..schema import STATES
from .hub import Hub
from .job import JOB_STATES
from .table import TaskTable
from .throttle import ThrottleStats
from .turns import next_turn

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
        jobs: int,
        alerts: list[tuple[str, int, int]],
        connections: ConnectionStats,
        tokens: ThrottleStats,
    ) -> None:
        self._stats = stats
        self._hub = hub
        self._table = table
        self._jobs = jobs
        self._alerts = alerts
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
        yield GaugeMetricFamily(
            "progressista_viewers_deflate",
            "Connected viewers that get messages deflated (permessage-deflate)",
            value=hub.deflating_count,
        )
        yield CounterMetricFamily(
            "progressista_ws_messages", "WebSocket messages sent", value=hub.messages_sent
        )
        yield CounterMetricFamily(
            "progressista_ws_sent_bytes",
            "WebSocket bytes written to viewers, frames as on the wire (deflated where negotiated)",
            value=hub.bytes_sent,
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
            "Viewers (and GET /tasks readers) disconnected for not reading",
            value=hub.viewers_dropped,
        )
        yield from self._job_families()
        alerts = CounterMetricFamily(
            "progressista_alerts",
            "Notifications by destination (scheme and position, never its URL) and outcome",
            labels=["destination", "outcome"],
        )
        for label, sent, failed in self._alerts:
            alerts.add_metric([label, "sent"], sent)
            alerts.add_metric([label, "failed"], failed)
        yield alerts
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

    def _job_families(self) -> Iterator[Metric]:
        """Per job run, the most recently updated ``metrics_jobs`` of them. The label is
        ``job_name``: Prometheus gives every scraped series a ``job`` label of its own (and
        would rename ours ``exported_job``)."""
        labels = ["job_name", "run"]
        fraction = GaugeMetricFamily(
            "progressista_job_done_ratio", "Fraction of a job done (0 to 1)", labels=labels
        )
        rate = GaugeMetricFamily(
            "progressista_job_rate_per_second",
            "Combined steady rate of a job's active bars (their units a second)",
            labels=labels,
        )
        eta = GaugeMetricFamily(
            "progressista_job_eta_seconds", "Seconds a job has left, when known", labels=labels
        )
        tasks = GaugeMetricFamily(
            "progressista_job_tasks", "A job's tasks, by state", labels=[*labels, "state"]
        )
        state = GaugeMetricFamily(
            "progressista_job_state", "1 for a job's current state", labels=[*labels, "state"]
        )
        jobs = self._table.jobs.jobs()
        for job in itertools.islice(jobs, self._jobs):
            key = [job.job, str(job.run)]
            if job.fraction is not None:
                fraction.add_metric(key, job.fraction)
            if job.rate is not None:
                rate.add_metric(key, job.rate)
            if job.eta is not None:
                eta.add_metric(key, job.eta)
            for task_state, count in job.tasks.items():
                tasks.add_metric([*key, task_state], count)
            for job_state in JOB_STATES:
                state.add_metric([*key, job_state], 1.0 if job.state == job_state else 0.0)
        yield from (fraction, rate, eta, tasks, state)


class _Collected(Collector):
    """Families already collected, for ``generate_latest`` to format."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def exposition(
    stats: IngestStats,
    hub: Hub,
    table: TaskTable,
    jobs: int,
    alerts: Sequence[tuple[str, int, int]],
    connections: ConnectionStats,
    tokens: ThrottleStats,
) -> bytes:
    """The Prometheus text format of everything above (``jobs``: how many job runs get
    gauges; ``alerts``: per destination, its label and messages sent and failed).

    Every value is read at once; the text is then written a family at a time, yielding to the
    loop between: prometheus_client takes about 10 µs a sample, and 100 job runs make 1,300
    samples, which held the loop 13-16 ms in one piece on a busy machine.
    """
    collector = _ServerCollector(stats, hub, table, jobs, list(alerts), connections, tokens)
    pieces = []
    for family in list(collector.collect()):
        pieces.append(generate_latest(_Collected([family])))
        await next_turn()
    return b"".join(pieces)
