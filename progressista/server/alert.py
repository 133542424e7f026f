"""Alerts: tell people when a job fails, stalls (and recovers) or completes, where they look.

Messages go out through Apprise (``progressista[alerts]``), so one setting reaches Slack, Discord,
Telegram, Teams, e-mail, ntfy, a JSON webhook and the rest, with no service-specific code here.

How an alert travels, so that none is lost and none is sent twice:

1. Every server sees each job change (its table is complete, with Redis too) and turns the ones
   the rules ask for into an :class:`Alert` with an id that names the change (``etl#3:failed``;
   a stall is named by the moment progress stopped), so every server names it the same.
2. It records the alert in the store's ledger: once per id, whoever is first; the ledger keeps
   it pending for each destination that wants it.
3. One sender (the server holding the cleanup lock, with Redis; the only server otherwise) sends
   what is pending, off the request path, and marks each delivery done when the destination took
   it. A destination that refuses is retried with backoff. A sender that dies mid-send leaves
   that one message pending, and its successor sends it again: the only duplicate there can be.

Messages are short and readable on a phone, built when sent, so 500 failed bars of one job make
one message that says 500 failed; each destination gets at most one message every
``ALERT_SPACING`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import msgspec

from ..settings import split_notify_entry
from .job import Job
from .table import TaskTable
from .task import Task

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertLedger",
    "Alerter",
    "Destination",
    "MemoryLedger",
    "MissingApprise",
    "UnknownDestination",
    "parse_destination",
    "send_test",
]

log = logging.getLogger(__name__)

#: What can be asked for with --notify-on.
ALERT_KINDS = ("failed", "stalled", "completed", "task-failed")
#: Seconds an alert waits before it is first sent, so a burst of failures makes one message.
ALERT_SETTLE = 2.0
#: Seconds between two messages to one destination, at least.
ALERT_SPACING = 5.0
#: Backoff between attempts at a destination that refused: doubling, capped.
RETRY_FIRST, RETRY_CAP = 5.0, 600.0
#: Seconds the sender sleeps when there is nothing to send, at most.
IDLE = 1.0


class MissingApprise(RuntimeError):
    """Apprise is not installed; the message says how to install it."""


class UnknownDestination(ValueError):
    """A notification URL Apprise does not understand; the message names which one."""


#: Why a URL was refused, and where the user finds the ones that work.
NOT_UNDERSTOOD = (
    "Apprise does not understand that URL "
    "(see https://github.com/caronc/apprise/wiki for the services and their URLs)"
)


def _apprise() -> Any:
    try:
        with warnings.catch_warnings():
            # Apprise loads its plugins on first use, and they import modules Python has
            # deprecated (imghdr on 3.11): not ours to fix, and no reason to fail where warnings
            # are errors. So load them here, once, with those warnings off.
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            apprise.Apprise().add("json://localhost")
    except ImportError:
        raise MissingApprise(
            "notifications need Apprise: pip install 'progressista[alerts]'"
        ) from None
    return apprise


@dataclass(frozen=True)
class Destination:
    """Where alerts go: an Apprise URL, and which jobs it wants (globs; none: every job)."""

    url: str
    jobs: tuple[str, ...] = ()
    #: How logs and /metrics name it: the scheme and its position, never the URL (secrets).
    label: str = ""

    def wants(self, alert: Alert) -> bool:
        if not self.jobs:
            return True
        return alert.job is not None and any(fnmatch.fnmatchcase(alert.job, g) for g in self.jobs)


def parse_destination(entry: str, index: int) -> Destination:
    """``"slack://…"`` or ``"jobs=etl-*,ml-* slack://…"`` (globs, a space, the URL)."""
    globs, url = split_notify_entry(entry)
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return Destination(url, globs or (), f"{scheme}#{index + 1}")


class Alert(msgspec.Struct, frozen=True):
    """One thing to tell people: what happened to which job (or task), and when."""

    #: Names the change, the same on every server: ``etl#3:failed``, ``etl#3:stalled:<t>``.
    id: str
    kind: str
    job: str | None
    #: The job run's key (``etl#3``), or the failed task's id for ``task-failed``.
    subject: str
    created_at: float


class AlertLedger(Protocol):
    """Where alerts wait until every destination that wants them took them."""

    async def record(self, alert: Alert, destinations: Iterable[int]) -> bool:
        """Keep ``alert`` pending for these destinations; False if it was already recorded."""

    async def pending(self) -> list[tuple[Alert, int]]:
        """Every (alert, destination index) not delivered yet, oldest first."""

    async def delivered(self, alert: Alert, destination: int) -> None: ...


class MemoryLedger:
    """The ledger of a server with the memory store (the only server, the only sender)."""

    #: Alert ids remembered (to record each once); the oldest are forgotten past this.
    REMEMBERED = 100_000

    def __init__(self) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[tuple[str, int], Alert] = {}

    async def record(self, alert: Alert, destinations: Iterable[int]) -> bool:
        if alert.id in self._seen:
            return False
        self._seen[alert.id] = None
        if len(self._seen) > self.REMEMBERED:
            self._seen.popitem(last=False)
        for index in destinations:
            self._pending[(alert.id, index)] = alert
        return True

    async def pending(self) -> list[tuple[Alert, int]]:
        return [(alert, index) for (_, index), alert in self._pending.items()]

    async def delivered(self, alert: Alert, destination: int) -> None:
        self._pending.pop((alert.id, destination), None)


@dataclass
class _Channel:
    """A destination's delivery state: when it may be sent to next, and how it has fared."""

    next_send: float = 0.0
    failures: int = 0
    sent: int = 0
    failed: int = 0


@dataclass
class Alerter:
    """Turns job changes into alerts, records them, and (when this server sends) sends them.

    ``clock`` is wall-clock seconds (task times), injectable like the app's.
    """

    table: TaskTable
    ledger: AlertLedger
    destinations: list[Destination]
    kinds: frozenset[str]
    public_url: str | None
    clock: Callable[[], float] = time.time
    #: Whether this server is the one that sends (the cleanup lock's holder, with Redis).
    sends: Callable[[], bool] = lambda: True
    #: Off until the store has loaded: a job found finished at start-up is not news.
    armed: bool = False
    channels: list[_Channel] = field(default_factory=list)
    _apprise: Any = None
    _queue: list[Alert] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.channels = [_Channel() for _ in self.destinations]
        if self.destinations:
            self._apprise = _apprise()
            for destination in self.destinations:
                # Refused at start-up, not found out at the first failed job: a typo in a URL
                # would otherwise be a warning in a log nobody reads while the alert is lost.
                # (Apprise logs the URL it refuses, secrets and all: not here.)
                with _apprise_silenced():
                    understood = self._apprise.Apprise().add(destination.url)
                if not understood:
                    scheme, _, number = destination.label.rpartition("#")
                    named = "no scheme" if scheme == "?" else f"{scheme}://"
                    raise UnknownDestination(
                        f"notification URL {number} ({named}): {NOT_UNDERSTOOD}"
                    )
            self.table.jobs.watch(self._job_changed)
            self.table.watch_failures(self._task_failed)

    # Seeing changes (every server) ----------------------------------------------------------

    def _job_changed(self, before: str | None, job: Job) -> None:
        """A job run's state went from ``before`` to ``job.state``."""
        state = job.state
        if state == before or not self.armed:
            return
        if state == "failed" and "failed" in self.kinds:
            self._raise(f"{job.id}:failed", "failed", job)
        elif state == "completed" and "completed" in self.kinds:
            self._raise(f"{job.id}:completed", "completed", job)
        elif state == "stalled" and "stalled" in self.kinds:
            self._raise(f"{job.id}:stalled:{job.advanced_at!r}", "stalled", job)
        elif before == "stalled" and state == "running" and "stalled" in self.kinds:
            self._raise(f"{job.id}:recovered:{job.advanced_at!r}", "recovered", job)

    def _task_failed(self, task: Task) -> None:
        if "task-failed" in self.kinds and self.armed:
            alert = Alert(
                f"task:{task.task_id}:{task.created_at!r}:failed",
                "task-failed",
                None,
                task.task_id,
                self.clock(),
            )
            self._queue.append(alert)
            self._wake.set()

    def _raise(self, alert_id: str, kind: str, job: Job) -> None:
        self._queue.append(Alert(alert_id, kind, job.job, job.id, self.clock()))
        self._wake.set()

    # Recording and sending -------------------------------------------------------------------

    async def run(self) -> None:
        """Record what was seen; send what is pending when this server is the sender."""
        while True:
            queue, self._queue = self._queue, []
            for alert in queue:
                wanted = [i for i, d in enumerate(self.destinations) if d.wants(alert)]
                if wanted:
                    await self.ledger.record(alert, wanted)
            if self.sends():
                await self._send_due()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE)
            except asyncio.TimeoutError:
                pass

    async def _send_due(self) -> None:
        now = self.clock()
        for alert, index in await self.ledger.pending():
            channel = self.channels[index] if index < len(self.channels) else None
            if channel is None:
                await self.ledger.delivered(alert, index)  # a destination no longer configured
                continue
            if now - alert.created_at < ALERT_SETTLE or now < channel.next_send:
                continue
            title, body = self.message(alert)
            if await self._deliver(index, title, body, alert.kind):
                await self.ledger.delivered(alert, index)
                channel.sent += 1
                channel.next_send = now + ALERT_SPACING  # from when the pass began
                if channel.failures:
                    log.info("%s takes notifications again", self.destinations[index].label)
                channel.failures = 0
            else:
                channel.failed += 1
                channel.failures += 1
                backoff = min(RETRY_CAP, RETRY_FIRST * 2 ** (channel.failures - 1))
                channel.next_send = now + backoff
                if channel.failures == 1:
                    log.warning(
                        "%s did not take a notification; retrying with backoff (up to %.0f s)",
                        self.destinations[index].label,
                        RETRY_CAP,
                    )

    async def _deliver(self, index: int, title: str, body: str, kind: str) -> bool:
        sender = self._apprise.Apprise()
        if not sender.add(self.destinations[index].url):
            return False
        # Services that colour or sort messages by type (Slack, Teams, ntfy, webhooks) show
        # a failure as one, not as information.
        notify_type = getattr(self._apprise.NotifyType, _NOTIFY_TYPES.get(kind, "INFO"))
        try:
            return bool(await sender.async_notify(body=body, title=title, notify_type=notify_type))
        except Exception:  # an odd plugin must not end the sender
            return False

    def message(self, alert: Alert) -> tuple[str, str]:
        """A title and a short body, from the job as it is now."""
        if alert.kind == "task-failed":
            task = self.table.get(alert.subject)
            error = task.error if task is not None and task.error else "failed"
            return f"✗ task {alert.subject} failed", _short(error)
        job = self.table.jobs.get(alert.subject)
        name = alert.job or alert.subject
        link = self._link(name)
        if job is None:
            return f"{name}: {alert.kind}", link
        counts = job.tasks
        bars = max(sum(counts.values()), job.size or 0)
        if alert.kind == "failed":
            where = f" on {job.error_host}" if job.error_host else ""
            first = f" First: {_short(job.error or 'failed')} ({job.error_task}{where})."
            text = f"{counts['failed']} of {_bars(bars)} failed.{first}"
            return f"✗ {name} failed", _join(text, link)
        if alert.kind == "completed":
            took = _duration((job.finished_at or job.updated_at) - job.started_at)
            return f"✓ {name} completed", _join(f"{_bars(bars)} in {took}.", link)
        if alert.kind == "stalled":
            still = _duration(self.clock() - job.advanced_at)
            open_bars = counts["active"] + counts["stale"]
            text = f"No bar has moved for {still} ({open_bars} open, {counts['stale']} stale)."
            return f"⏸ {name} stalled", _join(text, link)
        return f"▶ {name} moving again", _join("Progress resumed.", link)

    def _link(self, job: str) -> str:
        if not self.public_url:
            return ""
        return f"{self.public_url.rstrip('/')}/?q={quote('job=' + job, safe='')}"

    def stats(self) -> list[tuple[str, int, int]]:
        """Per destination: its label, messages sent, attempts failed (for /metrics)."""
        return [
            (destination.label, channel.sent, channel.failed)
            for destination, channel in zip(self.destinations, self.channels, strict=True)
        ]


def _short(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _join(text: str, link: str) -> str:
    return f"{text}\n{link}" if link else text


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"


def send_test(url: str) -> str | None:
    """Send one sample message to ``url``; None when it was taken, else why not.

    Raises ValueError for a URL Apprise does not understand: that is the caller's to fix.
    """
    apprise = _apprise()
    destination = parse_destination(url, 0)
    sender = apprise.Apprise()
    if not sender.add(destination.url):
        raise ValueError(NOT_UNDERSTOOD)
    # Apprise says why a service refused only in its log, which a command line does not show.
    said = _Said(logging.WARNING)
    apprise_log = logging.getLogger("apprise")
    apprise_log.addHandler(said)
    try:
        ok = sender.notify(
            title="✓ progressista test",
            body="A test notification from Progressista: this destination works.",
        )
    finally:
        apprise_log.removeHandler(said)
    if ok:
        return None
    return "the service did not take the message" + (f": {said.last}" if said.last else "")


#: Apprise's message type (a NotifyType member's name) for each kind of alert.
_NOTIFY_TYPES = {
    "failed": "FAILURE",
    "task-failed": "FAILURE",
    "stalled": "WARNING",
    "recovered": "SUCCESS",
    "completed": "SUCCESS",
}


def _bars(count: int) -> str:
    return "1 bar" if count == 1 else f"{count:,} bars"


@contextlib.contextmanager
def _apprise_silenced() -> Iterator[None]:
    apprise_log = logging.getLogger("apprise")
    was = apprise_log.disabled
    apprise_log.disabled = True
    try:
        yield
    finally:
        apprise_log.disabled = was


class _Said(logging.Handler):
    """Keeps the last message logged."""

    last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()
