"""What a task is, what one event does to it, and when it expires.

A task is the merged latest event plus fields only the server knows: its lifecycle ``state``, the
server-clock times ``created_at``/``updated_at``/``closed_at``, the derived ``percent``, ``rate``
and ``eta``, and ``rev``, the revision that orders every change (across servers, with Redis).
Every store applies events through :func:`apply_event`, so the memory and Redis stores cannot
disagree about merging, ``seq`` ordering or new runs.

Tasks are msgspec Structs with ``gc=False``: a million of them cost the garbage collector nothing
(a full collection over a million dict-based tasks took 667 ms; over Structs, 2 ms), and they
encode to JSON in C. They hold no containers but ``meta``, whose values are scalars, so they
cannot be part of a reference cycle, which is what ``gc=False`` requires.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import msgspec
from msgspec import UNSET

from .event import Event, Label

__all__ = [
    "ALL_FIELDS",
    "CLOSED_STATES",
    "FIELD_BIT",
    "RATE_SMOOTHING",
    "TASK_FIELDS",
    "Lifetimes",
    "Task",
    "apply_event",
    "new_task",
    "readable",
    "went_stale",
]

CLOSED_STATES: Final = frozenset(("completed", "failed"))

#: Weight of the newest sample in the server-side rate average; tqdm's own default.
RATE_SMOOTHING = 0.3

_STATE_OF_STATUS: Final = {
    "start": "active",
    "update": "active",
    "close": "completed",
    "error": "failed",
}


class Task(msgspec.Struct, gc=False):
    """One bar as the server keeps it and every reader sees it (``GET /tasks``, ``/ws``).

    Every field is always present, in this order, so readers never need a default.
    """

    task_id: str
    state: str = "active"
    status: str = "start"
    desc: str = ""
    n: int | float = 0
    total: int | float | None = None
    percent: float | None = None
    unit: str = "it"
    unit_scale: bool | int | float = False
    unit_divisor: int | float = 1000
    rate: float | int | None = None
    eta: float | None = None
    elapsed: int | float | None = None
    postfix: str = ""
    meta: dict[str, Label] = msgspec.field(default_factory=dict)
    error: str | None = None
    seq: int | None = None
    timestamp: int | float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float | None = None
    #: Progress over time, flat: ``(t0, n0, t1, n1, …)``, at most HISTORY_POINTS samples,
    #: spread over the task's whole life (see :func:`sample_progress`). A tuple of floats:
    #: the garbage collector stops tracking it once it has seen it.
    history: tuple[float, ...] = ()
    #: The steady rate (units a second): the least-squares slope of the last TREND_POINTS
    #: samples. The ETA comes from it when it is known; ``rate`` is tqdm's, as the worker saw
    #: it.
    trend: float | None = None
    #: Orders every change to every task: a store assigns it, higher is newer.
    rev: int = 0


#: Every field of a task, in wire order.
TASK_FIELDS: tuple[str, ...] = Task.__struct_fields__
#: One bit per field, for the masks that say which fields a change touched.
FIELD_BIT: Final = {name: 1 << index for index, name in enumerate(TASK_FIELDS)}
ALL_FIELDS: Final = (1 << len(TASK_FIELDS)) - 1

#: A shallow copy in C: msgspec Structs define ``__copy__``, which their type stubs omit.
_copy: Callable[[Task], Task] = Task.__copy__  # type: ignore[attr-defined]  # msgspec defines it in C; the stubs do not list it


def readable(value: float) -> float:
    """A measured float to the digits a person reads: thousandths, or 4 significant digits
    below 1 (a rate of one item an hour is 0.0002778), negative ones alike. Ints pass as they
    are.

    Elapsed times and rates arrive with 17 digits, most of them noise, and travel to every
    viewer with every event: rounded where they are stored, an update's entry on the wire is
    about 25 bytes shorter (a fifth of it), and every view of the task (the feed, ``/tasks``,
    Redis) holds the same number. Thousandths by an integer division, which gives the shortest
    decimal's float directly: a third of what ``round`` costs, and this runs for every event.
    """
    if value.__class__ is not float:
        return value
    if 1.0 <= value < 1e12:
        return int(value * 1000.0 + 0.5) / 1000.0
    if 0.0 < value < 1.0:
        return round(value, 3 - math.floor(math.log10(value)))
    if value < 0.0:  # a trend, as a bar counts down
        return -readable(-value)
    return value


def _merge_function() -> Callable[[Task, Event], int]:
    """Straight-line code that copies an event's given fields into a task, returning which changed.

    Generated once: a loop over field names with getattr/setattr costs three times as much, and
    this runs for every event. ``unit_scale`` compares types too, because ``True == 1`` but tqdm
    scales ``True`` and not ``1``. ``elapsed`` and ``rate`` are stored :func:`readable`.
    """
    lines = ["def merge(task, event):", "    changed = 0"]
    for name in Event.__struct_fields__:
        if name in ("task_id", "status"):
            continue
        different = f"value != task.{name}"
        if name == "unit_scale":
            different = f"(value != task.{name} or type(value) is not type(task.{name}))"
        lines.append(f"    value = event.{name}")
        if name in ("elapsed", "rate"):
            lines.append("    if value.__class__ is float: value = readable(value)")
        lines += [
            f"    if value is not UNSET and {different}:",
            f"        task.{name} = value",
            f"        changed |= {FIELD_BIT[name]}",
        ]
    lines.append("    return changed")
    namespace: dict[str, object] = {"UNSET": UNSET, "readable": readable}
    exec("\n".join(lines), namespace)  # our own field names: nothing from outside reaches it
    merge: Callable[[Task, Event], int] = namespace["merge"]  # type: ignore[assignment]  # built just above
    return merge


_merge = _merge_function()

_STATE, _STATUS = FIELD_BIT["state"], FIELD_BIT["status"]
_HISTORY, _TREND = FIELD_BIT["history"], FIELD_BIT["trend"]

#: Samples a task's history keeps, however long it runs: older ones are thinned out.
HISTORY_POINTS = 32
#: Samples the steady rate is fitted to (the most recent ones).
TREND_POINTS = 8
#: Seconds between samples, at least; more for long tasks, so the history covers all of it.
SAMPLE_SPACING = 2.0
#: The steady rate needs samples spanning at least this many seconds.
TREND_SPAN = 2.0
_UPDATED, _CLOSED, _ERROR = FIELD_BIT["updated_at"], FIELD_BIT["closed_at"], FIELD_BIT["error"]
_RATE, _PERCENT, _ETA = FIELD_BIT["rate"], FIELD_BIT["percent"], FIELD_BIT["eta"]


def new_task(event: Event, now: float) -> Task:
    """A fresh task (a first event, or the first event of a new run after a close)."""
    task = Task(task_id=event.task_id, created_at=now)
    _merge(task, event)
    _derive(task, event, now, None, None, None)
    return task


def apply_event(task: Task | None, event: Event, now: float) -> tuple[Task, int] | None:
    """The task after ``event``, as a new object, and the mask of the fields that changed.

    ``task`` itself is never modified: a store that must check with Redis before committing can
    throw the result away. The result keeps ``task``'s ``rev`` (the revision it was made from)
    until the store gives it its own. Returns None when the event is older than what is stored (its
    ``seq`` is not above the stored one): a retried or reordered event then changes nothing. An
    event for a completed or failed task starts a new run with a fresh ``created_at``.
    """
    if task is None:
        return new_task(event, now), ALL_FIELDS
    seq = event.seq
    if seq is not UNSET and task.seq is not None and seq <= task.seq:
        return None
    if task.state in CLOSED_STATES:
        fresh = new_task(event, now)
        fresh.rev = task.rev  # as a copy would: the revision it was made from, until stored
        return fresh, ALL_FIELDS
    updated = _copy(task)
    changed = _merge(updated, event)
    changed |= _derive(updated, event, now, task.n, task.updated_at, task.rate)
    return updated, changed


def _derive(
    task: Task,
    event: Event,
    now: float,
    previous_n: float | None,
    previous_time: float | None,
    previous_rate: float | None,
) -> int:
    """Set the server's fields after a merge; returns the mask of those that changed.

    Written for speed (it runs for every event): no helper calls, and infinity caught by one
    comparison, since only division by a tiny total or rate can overflow.
    """
    changed = _UPDATED
    task.updated_at = now
    status = event.status
    if status != task.status:
        task.status = status
        changed |= _STATUS
    state = _STATE_OF_STATUS[status]
    if state != task.state:
        task.state = state
        changed |= _STATE
    if state != "active":
        task.closed_at = now
        changed |= _CLOSED
    if state != "failed" and task.error is not None:
        task.error = None
        changed |= _ERROR

    n = task.n
    rate = event.rate
    if rate is UNSET or rate is None:
        # The client did not know a rate: smooth one from the server's own clock.
        rate = previous_rate
        if previous_n is not None and previous_time is not None and now > previous_time:
            sample = (n - previous_n) / (now - previous_time)
            if 0 <= sample < _INFINITY:
                rate = readable(
                    sample
                    if rate is None
                    else (RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * rate)
                )
        if rate != task.rate:
            task.rate = rate
            changed |= _RATE
    else:
        rate = task.rate  # as merged (and marked changed there), made readable

    history = task.history
    # Most events come within SAMPLE_SPACING of the last sample: decided here, without a call.
    if not history or now - history[-2] >= SAMPLE_SPACING:
        trend = task.trend
        if sample_progress(task, now, n):
            changed |= _HISTORY if task.trend == trend else _HISTORY | _TREND

    total = task.total
    percent: float | None = None
    eta: float | None = None
    if total:
        percent = 100.0 * n / total
        if not percent < _INFINITY:
            percent = None
        speed = task.trend if task.trend is not None else rate
        if speed and speed > 0 and state == "active":
            eta = (total - n) / speed if total > n else 0.0
            # Tenths of a second: all a person reads, and 10 bytes less per event on the wire.
            eta = round(eta, 1) if eta < _INFINITY else None
    if percent != task.percent:
        task.percent = percent
        changed |= _PERCENT
    if eta != task.eta:
        task.eta = eta
        changed |= _ETA
    return changed


_INFINITY = math.inf


def sample_progress(task: Task, now: float, n: float) -> bool:
    """Add ``(now, n)`` to the task's history if the last sample is old enough; True if so.

    Samples are at least SAMPLE_SPACING apart, and further apart as the task grows older (its
    history's span over half its points), so HISTORY_POINTS cover its whole life; when the
    history is full, every second sample goes. Each new sample refits the steady rate.
    """
    history = task.history
    if history:
        spacing = (history[-2] - history[0]) / (HISTORY_POINTS // 2)
        if now - history[-2] < (spacing if spacing > SAMPLE_SPACING else SAMPLE_SPACING):
            return False
    history = (*history, now, float(n))
    if len(history) > 2 * HISTORY_POINTS:
        kept = history[:-2]
        history = (*[v for i in range(0, len(kept), 4) for v in kept[i : i + 2]], now, float(n))
    task.history = history
    trend = fit_slope(history[-2 * TREND_POINTS :])
    task.trend = trend if trend is None else readable(trend)
    return True


def fit_slope(points: tuple[float, ...], min_span: float = TREND_SPAN) -> float | None:
    """The least-squares slope of flat ``(t, y, t, y, …)`` points; None without enough.

    Plain sums (times taken from the first, for precision), in straight-line code for up to
    TREND_POINTS points: this runs at every sample of every task.
    """
    count = len(points) // 2
    if count < 3 or points[-2] - points[0] < min_span:
        return None
    fit = _FITS[count] if count < len(_FITS) else _fit_any
    slope = fit(points)
    return slope if slope is not None and math.isfinite(slope) else None


def _fit_any(points: tuple[float, ...]) -> float | None:
    count = len(points) // 2
    first = points[0]
    sum_t = sum_v = sum_tt = sum_tv = 0.0
    for index in range(0, 2 * count, 2):
        t = points[index] - first
        v = points[index + 1]
        sum_t += t
        sum_v += v
        sum_tt += t * t
        sum_tv += t * v
    spread = count * sum_tt - sum_t * sum_t
    return None if spread <= 0 else (count * sum_tv - sum_t * sum_v) / spread


def _fit_function(count: int) -> Callable[[tuple[float, ...]], float | None]:
    """:func:`_fit_any` unrolled for ``count`` points (the first point's time is 0): half the
    time of the loop, whose bytecode dispatch is most of its cost."""
    times = [f"t{i}" for i in range(1, count)]
    lines = ["def fit(p):", "    first = p[0]"]
    lines += [f"    t{i} = p[{2 * i}] - first" for i in range(1, count)]
    lines += [
        "    sum_t = " + " + ".join(times),
        "    sum_v = " + " + ".join(f"p[{2 * i + 1}]" for i in range(count)),
        "    sum_tt = " + " + ".join(f"{t} * {t}" for t in times),
        "    sum_tv = " + " + ".join(f"t{i} * p[{2 * i + 1}]" for i in range(1, count)),
        f"    spread = {count} * sum_tt - sum_t * sum_t",
        f"    return None if spread <= 0 else ({count} * sum_tv - sum_t * sum_v) / spread",
    ]
    namespace: dict[str, object] = {}
    exec("\n".join(lines), namespace)  # generated from numbers only
    fit: Callable[[tuple[float, ...]], float | None] = namespace["fit"]  # type: ignore[assignment]  # built just above
    return fit


#: The unrolled fit for each count of points up to TREND_POINTS (0 to 2: never used).
_FITS = (_fit_any, _fit_any, _fit_any, *(_fit_function(c) for c in range(3, TREND_POINTS + 1)))


def went_stale(task: Task) -> tuple[Task, int]:
    """``task`` marked stale by cleanup, and the mask of what changed: no ETA any more, since
    nothing says it still moves."""
    stale = _copy(task)
    stale.state = "stale"
    stale.eta = None
    return stale, _STATE | (_ETA if task.eta is not None else 0)


def lingers(task: Task) -> bool:
    """Whether a closed task leaves the board soon after it ends: a completed ``leave=False``
    bar, as tqdm erases it. A failed one stays for the full retention: tqdm erases that too,
    but a failure is what someone looking at the board needs to find."""
    return task.state == "completed" and task.meta.get("leave") is False


class Lifetimes:
    """How long tasks live in each state (DESIGN §2); durations in seconds, None = no limit.

    Each method gives the instant a task is due for one transition. The stores keep tasks in
    indexes ordered by those instants, so cleanup visits only what is due.
    """

    __slots__ = ("abandon_after", "linger", "max_age", "retention", "stale_after")

    def __init__(
        self,
        stale_after: float,
        abandon_after: float,
        retention: float,
        max_age: float | None,
        linger: float = 10.0,
    ) -> None:
        self.stale_after = stale_after
        self.abandon_after = abandon_after
        self.retention = retention
        self.max_age = max_age
        #: How long a completed ``leave=False`` bar stays on the board (it still counts in its
        #: job): tqdm erases such a bar when it ends.
        self.linger = linger

    def stale_at(self, task: Task) -> float:
        """When an active task with no news turns stale."""
        return task.updated_at + self.stale_after

    def abandoned_at(self, task: Task) -> float:
        """When a silent task (active or stale) is removed."""
        return task.updated_at + self.stale_after + self.abandon_after

    def expires_at(self, task: Task) -> float:
        """When a task is removed whatever happens: retention after closing, or ``max_age``."""
        ends = math.inf
        if task.closed_at is not None and task.state in CLOSED_STATES:
            ends = task.closed_at + (self.linger if lingers(task) else self.retention)
        else:
            ends = self.abandoned_at(task)
        if self.max_age is not None:
            ends = min(ends, task.created_at + self.max_age)
        return ends

    def verdict(self, task: Task, now: float) -> str | None:
        """``"stale"`` or ``"remove"`` when ``task`` is due for that transition at ``now``."""
        if now > self.expires_at(task):
            return "remove"
        if task.state == "active" and now > self.stale_at(task):
            return "stale"
        return None
