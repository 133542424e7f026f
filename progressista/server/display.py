"""How a task reads on the dashboard: amounts, rates and times formatted the way tqdm does.

The server renders the first paint with these; ``static/dashboard.js`` has the same functions for
live updates, and a browser test holds the two to identical output.
"""

from __future__ import annotations

import math
from typing import Any

from tqdm import tqdm

from .job import Job
from .task import Task

__all__ = [
    "BLANK_CARD",
    "BLANK_JOB",
    "ago",
    "amount",
    "card",
    "interval",
    "job_card",
    "rate",
    "sparkline",
]


def _scaled(value: float, task: Task) -> str:
    """A number as tqdm prints it: SI-scaled with ``unit_scale``, plain otherwise."""
    scale = task.unit_scale
    if scale is True or (scale and scale != 1):
        factor = 1 if scale is True else scale
        return str(tqdm.format_sizeof(value * factor, divisor=task.unit_divisor))
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def amount(task: Task) -> str:
    """``1.21 GB / 4.00 GB``, ``340 / 1,000 rows``, or ``1,234 pages`` without a total."""
    unit = task.unit
    scaled = task.unit_scale is True or bool(task.unit_scale)
    glue = "" if scaled else " "

    def with_unit(value: float) -> str:
        text = _scaled(value, task)
        if scaled:  # "1.21G" + "B": tqdm's units follow the prefix with no space
            return f"{text[:-1]} {text[-1]}{unit}" if text[-1:].isalpha() else f"{text} {unit}"
        return f"{text}{glue}{unit}"

    if task.total is None:
        return with_unit(task.n)
    if scaled:
        return f"{with_unit(task.n)} / {with_unit(task.total)}"
    return f"{_scaled(task.n, task)} / {_scaled(task.total, task)} {unit}"


def rate(task: Task) -> str:
    """``12.3 MB/s``, ``4.20 it/s``, or ``2.50 s/it`` when slower than one a second."""
    value = task.rate
    if value is None:
        return ""
    unit = task.unit
    if 0 < value < 1:
        return f"{1 / value:.2f} s/{unit}"
    scaled = task.unit_scale is True or bool(task.unit_scale)
    if scaled:
        text = _scaled(value, task)
        if text[-1:].isalpha():
            return f"{text[:-1]} {text[-1]}{unit}/s"
        return f"{text} {unit}/s"
    return f"{value:.2f} {unit}/s"


def interval(seconds: float | None) -> str:
    """``01:23``, or ``1:02:03`` past an hour: tqdm's format_interval."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    return str(tqdm.format_interval(max(seconds, 0)))


def ago(seconds: float) -> str:
    """How long since a task was last heard of: ``updated 4 s ago``, ``12 min``, ``3 h``.

    Shown on every card, so that a bar about to go stale is visible before it does.
    """
    if not math.isfinite(seconds) or seconds < 1:
        return "updated just now"
    seconds = int(seconds)
    if seconds < 60:
        return f"updated {seconds} s ago"
    if seconds < 3600:
        return f"updated {seconds // 60} min ago"
    if seconds < 86400:
        return f"updated {seconds // 3600} h ago"
    return f"updated {seconds // 86400} d ago"


def percent(task: Task) -> str:
    value = task.percent
    return "" if value is None else f"{value:.0f}%"


#: Labels a card does not list: the job has a place of its own; the parent and leave=False
#: show in how the board nests and drops bars.
_HIDDEN_LABELS = frozenset({"job", "parent", "leave"})
_RUN_LABELS = _HIDDEN_LABELS | {"role", "processes", "bars", "bars_open"}


def card(task: Task, now: float) -> dict[str, Any]:
    """Everything the card template shows for one task, as text."""
    elapsed = task.elapsed
    if elapsed is None:
        elapsed = (task.closed_at or now) - task.created_at
    meta = task.meta
    # progressista run's own task counts finished bars: no rate or ETA to speak of, and its
    # processes and bars are in its postfix already.
    run = meta.get("role") == "run"
    hidden = _RUN_LABELS if run else _HIDDEN_LABELS
    return {
        "task_id": task.task_id,
        "state": task.state,
        "title": task.desc or task.task_id,
        "amount": amount(task),
        "percent": percent(task),
        "rate": "" if run else rate(task),
        "elapsed": interval(elapsed),
        "eta": interval(task.eta) if task.state == "active" and not run else "",
        "postfix": task.postfix,
        "error": task.error or "",
        "job": "" if meta.get("job") is None else str(meta["job"]),
        "labels": [f"{key}={value}" for key, value in meta.items() if key not in hidden],
        "has_total": bool(task.total),
        "total": task.total or 0,
        "n": min(task.n, task.total) if task.total else 0,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "ago": ago(now - task.updated_at),
        "spark": sparkline(task.history, task.total),
    }


#: An empty card, with every key card() gives: the <template> the script clones for tasks that
#: appear after the first paint.
BLANK_CARD: dict[str, Any] = {
    "task_id": "",
    "state": "active",
    "title": "",
    "amount": "",
    "percent": "",
    "rate": "",
    "elapsed": "",
    "eta": "",
    "postfix": "",
    "error": "",
    "job": "",
    "labels": [],
    "has_total": False,
    "total": 0,
    "n": 0,
    "created_at": 0.0,
    "updated_at": 0.0,
    "ago": "",
    "spark": "",
}


#: The sparkline's drawing area (an SVG viewBox of this width and height).
SPARK_WIDTH, SPARK_HEIGHT = 1000, 200


def sparkline(history: tuple[float, ...] | list[float], top: float | None = None) -> str:
    """SVG polyline points for flat ``(t, y, …)`` samples: time left to right, ``y`` from 0 at
    the bottom to ``top`` (or the highest sample) at the top; "" with fewer than two samples.

    Whole numbers, rounded by floor(v + 0.5): the page draws the same line from the same
    numbers (``static/dashboard.js``; a browser test holds the two to identical output), and
    both languages round that way alike, where their decimal formatting does not.
    """
    times, values = history[0::2], history[1::2]
    if len(times) < 2 or not times[-1] > times[0]:
        return ""
    span = times[-1] - times[0]
    high = top if top else max(values)
    if not high or not high > 0 or not math.isfinite(high) or not math.isfinite(span):
        high = 1.0
    points = []
    for t, v in zip(times, values, strict=True):
        x = math.floor((t - times[0]) / span * SPARK_WIDTH + 0.5)
        y = math.floor(SPARK_HEIGHT - min(max(v / high, 0.0), 1.0) * SPARK_HEIGHT + 0.5)
        points.append(f"{x},{y}")
    return " ".join(points)


def job_rate(value: float, unit: str) -> str:
    """A job's combined rate as a bar's would read: ``43.23 it/s``, ``58.9 MB/s`` (SI
    prefixes from a thousand on, since a job's bars need not agree on a scale)."""
    return rate(Task(task_id="", rate=value, unit=unit, unit_scale=value >= 1000))


def job_card(job: Job) -> dict[str, Any]:
    """Everything the job overview shows for one job run, as text."""
    counts = job.tasks
    bars = sum(counts.values())
    summary = [f"{counts['completed']} of {max(bars, job.size or 0)} done"]
    if counts["failed"]:
        summary.append(f"{counts['failed']} failed")
    if counts["stale"]:
        summary.append(f"{counts['stale']} stale")
    details = []
    if job.fraction is not None:
        details.append(f"{job.fraction * 100:.0f}%")
    if job.rate is not None and job.unit is not None:
        details.append(job_rate(job.rate, job.unit))
    if job.eta is not None:
        details.append(f"ETA {interval(job.eta)}")
    return {
        "id": job.id,
        "name": job.job,
        "run": f"run {job.run}" if job.run > 1 else "",
        "state": job.state,
        "summary": ", ".join(summary),
        "details": " · ".join(details),
        "fraction": job.fraction if job.fraction is not None else 0.0,
        "has_fraction": job.fraction is not None,
        "error": "" if job.error is None else f"{job.error_task}: {job.error}",
        "spark": sparkline(job.history, 1.0),
    }


#: An empty job card: the <template> the script clones for runs that appear after first paint.
BLANK_JOB: dict[str, Any] = {
    "id": "",
    "name": "",
    "run": "",
    "state": "running",
    "summary": "",
    "details": "",
    "fraction": 0.0,
    "has_fraction": False,
    "error": "",
    "spark": "",
}
