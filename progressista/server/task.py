"""What a task is, and what one event does to it.

A task is the merged latest event plus fields only the server knows: its lifecycle ``state``, the
server-clock times ``created_at``/``updated_at``/``closed_at``, and the derived ``percent``,
``rate`` and ``eta``. Every store applies events through :func:`apply_event`, so the memory and
Redis stores cannot disagree about merging, ``seq`` ordering or new runs.
"""

from __future__ import annotations

import math
from typing import Any

from ..schema import Event

__all__ = ["CLOSED_STATES", "RATE_SMOOTHING", "Task", "apply_event", "new_task"]

#: A task as stored and as sent to viewers: a JSON object, hence ``Any``.
Task = dict[str, Any]

CLOSED_STATES = frozenset(("completed", "failed"))

#: Weight of the newest sample in the server-side rate average; tqdm's own default.
RATE_SMOOTHING = 0.3

_STATE_OF_STATUS = {"start": "active", "update": "active", "close": "completed", "error": "failed"}

# Every task has every field, in this order, so viewers never need a default.
_BLANK_TASK: Task = {
    "task_id": "",
    "state": "active",
    "status": "start",
    "desc": "",
    "n": 0,
    "total": None,
    "percent": None,
    "unit": "it",
    "unit_scale": False,
    "unit_divisor": 1000,
    "rate": None,
    "eta": None,
    "elapsed": None,
    "postfix": "",
    "meta": {},
    "error": None,
    "seq": None,
    "timestamp": None,
    "created_at": 0.0,
    "updated_at": 0.0,
    "closed_at": None,
}


def new_task(event: Event, now: float) -> Task:
    """A fresh task (a first event, or the first event of a new run after a close)."""
    task = _BLANK_TASK.copy()
    task["meta"] = {}  # never share the blank's dict between tasks
    task.update(event)
    task["created_at"] = now
    _derive(task, event, now, None, None, None)
    return task


def apply_event(task: Task | None, event: Event, now: float) -> Task | None:
    """Merge ``event`` into ``task`` (in place when it exists) and return the result.

    Returns None when the event is older than what is stored (its ``seq`` is not above the stored
    one): a retried or reordered event then changes nothing. An event for a completed or failed
    task starts a new run with a fresh ``created_at``.
    """
    if task is None:
        return new_task(event, now)
    seq = event.get("seq")
    if seq is not None and task["seq"] is not None and seq <= task["seq"]:
        return None
    if task["state"] in CLOSED_STATES:
        return new_task(event, now)
    previous_n, previous_time, previous_rate = task["n"], task["updated_at"], task["rate"]
    task.update(event)
    _derive(task, event, now, previous_n, previous_time, previous_rate)
    return task


def _derive(
    task: Task,
    event: Event,
    now: float,
    previous_n: float | None,
    previous_time: float | None,
    previous_rate: float | None,
) -> None:
    state = _STATE_OF_STATUS[task["status"]]
    task["state"] = state
    task["updated_at"] = now
    if state in CLOSED_STATES:
        task["closed_at"] = now
    if state != "failed":
        task["error"] = None

    n = task["n"]
    rate = event.get("rate")
    if rate is None:
        # The client did not know a rate: smooth one from the server's own clock.
        rate = previous_rate
        if previous_n is not None and previous_time is not None and now > previous_time:
            sample = (n - previous_n) / (now - previous_time)
            if sample >= 0:
                rate = (
                    sample
                    if rate is None
                    else (RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * rate)
                )
    task["rate"] = _finite(rate)

    total = task["total"]
    if total:
        task["percent"] = _finite(100.0 * n / total)
        rate = task["rate"]
        task["eta"] = _finite(max(total - n, 0) / rate) if rate and state == "active" else None
    else:
        task["percent"] = None
        task["eta"] = None


def _finite(value: float | None) -> float | None:
    """Derived numbers of valid inputs can still overflow (1e308 / 1e-300): then unknown."""
    return value if value is None or math.isfinite(value) else None


class Lifetimes:
    """How long tasks live in each state (DESIGN §2); durations in seconds, None = no limit."""

    __slots__ = ("abandon_after", "max_age", "retention", "stale_after")

    def __init__(
        self, stale_after: float, abandon_after: float, retention: float, max_age: float | None
    ) -> None:
        self.stale_after = stale_after
        self.abandon_after = abandon_after
        self.retention = retention
        self.max_age = max_age

    def expiry(self, task: Task, now: float) -> str | None:
        """``"stale"`` or ``"remove"`` when ``task`` is due for that transition at ``now``."""
        if self.max_age is not None and now - task["created_at"] > self.max_age:
            return "remove"
        state = task["state"]
        if state in CLOSED_STATES:
            return "remove" if now - task["closed_at"] > self.retention else None
        silence = now - task["updated_at"]
        if silence > self.stale_after + self.abandon_after:
            return "remove"
        if state == "active" and silence > self.stale_after:
            return "stale"
        return None
