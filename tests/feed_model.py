"""A viewer's copy of the board, kept from ``/ws`` messages exactly as the protocol says.

The reference for what the dashboard's script and ``progressista watch`` do with each message;
the tests and the benchmark's viewers use it to check that a viewer ends up with the server's
tasks, whatever was merged, split or skipped on the way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from progressista.shown import SHOWN_DEFAULTS

#: Fields a viewer's copy of a task cannot be compared on: no task on the feed carries the
#: first three (they change with every event and no viewer shows them), and ``history`` is
#: sampled differently by the server and by a viewer extending it.
UNSHOWN = ("seq", "timestamp", "rev", "history")


#: Fields a whole task on the feed leaves out besides those at their defaults.
_NOT_SENT = ("task_id", "seq", "timestamp", "rev", "percent")


def _at_default(name: str, value: Any) -> bool:
    default = SHOWN_DEFAULTS[name]
    return type(value) is type(default) and value == default


def sent(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whole tasks (as ``GET /tasks`` gives them) as the feed sends them."""
    return {
        task_id: {k: v for k, v in task.items() if k not in _NOT_SENT and not _at_default(k, v)}
        for task_id, task in tasks.items()
    }


def entries(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every task a message carries, whole or partial, as (id, what was sent): what a viewer's
    latency is measured on."""
    return [*message.get("tasks", {}).items(), *message.get("replace", {}).items()]


def held(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whole tasks (as ``GET /tasks`` gives them) as a viewer holds them once sent whole."""
    return {
        task_id: {k: v for k, v in task.items() if k not in UNSHOWN[:3]}
        for task_id, task in tasks.items()
    }


def _check_sent(task: dict[str, Any]) -> None:
    """A task on the feed carries neither its id (it is the key) nor the unsent fields."""
    assert not set(task) & set(_NOT_SENT), task


def _percent(task: dict[str, Any]) -> float | None:
    percent = 100.0 * task["n"] / task["total"] if task["total"] else None
    # The server stores a percent that is not finite as null.
    return percent if percent is not None and math.isfinite(percent) else None


def _whole(task_id: str, task: dict[str, Any]) -> dict[str, Any]:
    """A whole task as the feed sends it, as held: its id, defaults and percent back."""
    _check_sent(task)
    held = {"task_id": task_id, **copy.deepcopy(SHOWN_DEFAULTS), **task}
    held["percent"] = _percent(held)
    return held


def _named(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whole tasks as the feed sends them (each under its id, without it), as held."""
    return {task_id: _whole(task_id, task) for task_id, task in tasks.items()}


@dataclass
class Board:
    """What one viewer holds: every task (feed) or its window (windowed), and the counts."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=lambda: {"store": "ok"})
    #: Whole snapshots received (their last piece).
    snapshots: int = 0
    #: Job runs by key, as the last "jobs" messages left them.
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Ids seen in the snapshot being received, until its last piece.
    _incoming: set[str] | None = None

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            if self._incoming is None:
                self._incoming = set()
            self._incoming.update(message["tasks"])
            self.tasks.update(_named(message["tasks"]))
            if not message["more"]:
                for task_id in [t for t in self.tasks if t not in self._incoming]:
                    del self.tasks[task_id]
                self._incoming = None
                self.snapshots += 1
        elif kind == "view":
            self.tasks = _named(message["tasks"])
            self.sections = message["sections"]
            self.counts = message["counts"]
        elif kind == "patch":
            for task_id in message["removed"]:
                self.tasks.pop(task_id, None)
            self.tasks.update(_named(message.get("replace", {})))
            at = message.get("at")
            for task_id, fields in message["tasks"].items():
                _check_sent(fields)
                # A partial entry changes a task the viewer holds, never one it does not.
                assert task_id in self.tasks, (task_id, message)
                task = self.tasks[task_id]
                task.update(fields)
                # What a partial entry leaves to the receiver: the message's time, and percent.
                if "updated_at" not in fields:
                    assert at is not None, message
                    task["updated_at"] = at
                if "n" in fields or "total" in fields:
                    task["percent"] = _percent(task)
            self.sections.update(message.get("sections", {}))
            if "counts" in message:
                self.counts = message["counts"]
        elif kind in ("status", "refused"):
            self.status = message
        elif kind == "jobs":
            if message["whole"]:
                self.jobs = {}
            for key in message["removed"]:
                self.jobs.pop(key, None)
            for key, job in message["jobs"].items():
                self.jobs[key] = {**self.jobs.get(key, {}), **job}
        else:
            raise AssertionError(f"unknown message type {kind!r}")

    def shown(self) -> dict[str, dict[str, Any]]:
        """The tasks without the fields partial updates leave out, for comparing."""
        return {
            task_id: {k: v for k, v in task.items() if k not in UNSHOWN}
            for task_id, task in self.tasks.items()
        }


def without_unshown(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        task_id: {k: v for k, v in task.items() if k not in UNSHOWN}
        for task_id, task in tasks.items()
    }
