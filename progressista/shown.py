"""How a task travels on the live feed (``/ws``, ``/view``), and how a receiver makes it whole.

The server keeps every field of every task (``GET /tasks`` gives them all), but the feed goes to
every viewer at every change, so it sends less (docs/protocol.md, "Tasks as sent"):

- no ``task_id`` (the key the task is sent under), and no ``seq``, ``timestamp``, ``rev`` or
  ``percent`` (the first three change with every event and nobody shows them; ``percent``
  follows from ``n`` and ``total``);
- a *whole* task (a snapshot's, a view's, a patch's ``replace``) leaves out every field that
  holds its value in :data:`SHOWN_DEFAULTS`: most bars have no postfix, error or close time and
  count in "it", and a typical bar is 243 bytes instead of 382;
- a *partial* task (a patch's ``tasks``) carries only the fields that changed, and
  ``updated_at`` only when it differs from the message's ``at``.

Pure Python and standard library only: ``progressista watch`` uses it, and the server builds its
encoder from the same defaults, so what it leaves out and what a receiver puts back are one list.
"""

from __future__ import annotations

import math
from typing import Any, Final

__all__ = ["SHOWN_DEFAULTS", "complete_partial", "whole"]

#: A whole task's fields at these values are not sent; put them back. JSON values (a history
#: is a list here, as it arrives).
SHOWN_DEFAULTS: Final[dict[str, Any]] = {
    "state": "active",
    "status": "start",
    "desc": "",
    "n": 0,
    "total": None,
    "unit": "it",
    "unit_scale": False,
    "unit_divisor": 1000,
    "rate": None,
    "eta": None,
    "elapsed": None,
    "postfix": "",
    "meta": {},
    "error": None,
    "created_at": 0.0,
    "updated_at": 0.0,
    "closed_at": None,
    "history": [],
    "trend": None,
}


def _percent(task: dict[str, Any]) -> float | None:
    """``100 * n / total`` as the server stores it: null without a total, or when not finite."""
    total = task.get("total")
    if not total:
        return None
    percent = 100.0 * task.get("n", 0) / total
    return percent if math.isfinite(percent) else None


def whole(task_id: str, sent: dict[str, Any]) -> dict[str, Any]:
    """A whole task as held: ``sent`` with its id, its defaults and its percent put back."""
    task = {"task_id": task_id, **SHOWN_DEFAULTS, **sent}
    task["meta"] = dict(task["meta"])  # (never the shared default)
    task["history"] = list(task["history"])
    task["percent"] = _percent(task)
    return task


def complete_partial(task: dict[str, Any], fields: dict[str, Any], at: float | None) -> None:
    """``task``, just merged with a partial entry's ``fields``: the message's ``at`` when the
    entry has no ``updated_at``, and ``percent`` when ``n`` or ``total`` moved."""
    if "updated_at" not in fields and at is not None:
        task["updated_at"] = at
    if "n" in fields or "total" in fields:
        task["percent"] = _percent(task)
