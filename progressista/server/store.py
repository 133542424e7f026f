"""Where tasks live: the store protocol every backend implements, and the in-memory store.

The memory store is the reference implementation: the Redis store is tested against the same
suite. Stores apply events through :func:`progressista.server.task.apply_event`, report which task
ids changed or disappeared, and leave telling viewers to the hub.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..schema import Event
from .task import CLOSED_STATES, Lifetimes, Task, apply_event

__all__ = ["ApplyResult", "Expired", "MemoryStore", "StoreFull", "TaskStore"]


class StoreFull(Exception):
    """The store holds ``max_tasks`` tasks and none of them could be evicted."""

    def __init__(self, max_tasks: int) -> None:
        super().__init__(
            f"the server holds its maximum of {max_tasks} tasks; retry later or raise max_tasks"
        )
        self.max_tasks = max_tasks


@dataclass
class ApplyResult:
    """The outcome of one request's events."""

    accepted: int = 0
    #: Events older (by ``seq``) than the stored state.
    ignored: int = 0
    #: Ids whose task changed, in the order they were applied (repeats possible).
    changed: list[str] = field(default_factory=list)
    #: Completed or failed tasks evicted to make room for new ones.
    evicted: list[str] = field(default_factory=list)


@dataclass
class Expired:
    """The outcome of one cleanup pass."""

    stale: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class TaskStore(Protocol):
    """What the server needs from a place that keeps tasks."""

    @property
    def view(self) -> Mapping[str, Task]:
        """The current tasks, readable without awaiting; what the hub sends to viewers."""

    async def apply(self, events: list[Event], now: float) -> ApplyResult:
        """Apply validated events all-or-nothing; raise :class:`StoreFull` when out of room."""

    async def get(self, task_id: str) -> Task | None: ...

    async def select(self, states: Collection[str] | None, job: str | None) -> dict[str, Task]:
        """Tasks in any of ``states`` whose ``meta.job`` is ``job``; None matches anything."""

    async def delete(self, task_id: str) -> bool:
        """Remove one task; False when there was none."""

    async def delete_where(
        self, states: Collection[str] | None, older_than: float | None, now: float
    ) -> list[str]:
        """Remove tasks matching every given filter (at least one); return their ids."""

    async def expire(self, now: float, lifetimes: Lifetimes) -> Expired:
        """Apply the lifecycle rules due at ``now``."""

    async def close(self) -> None: ...


class MemoryStore:
    """Tasks in a dict: the default, and the reference for every other store."""

    def __init__(self, max_tasks: int) -> None:
        self.max_tasks = max_tasks
        self._tasks: dict[str, Task] = {}

    @property
    def view(self) -> Mapping[str, Task]:
        return self._tasks

    async def apply(self, events: list[Event], now: float) -> ApplyResult:
        tasks = self._tasks
        result = ApplyResult()
        if len(tasks) + len(events) > self.max_tasks:
            result.evicted = self._make_room(events)
        changed = result.changed
        for event in events:
            task_id = event["task_id"]
            stored = tasks.get(task_id)
            task = apply_event(stored, event, now)
            if task is None:
                result.ignored += 1
                continue
            if task is not stored:
                tasks[task_id] = task
            changed.append(task_id)
        result.accepted = len(changed)
        return result

    def _make_room(self, events: list[Event]) -> list[str]:
        """Evict the longest-closed tasks so the new ids in ``events`` fit, or raise."""
        tasks = self._tasks
        incoming = {event["task_id"] for event in events}
        new = sum(1 for task_id in incoming if task_id not in tasks)
        excess = len(tasks) + new - self.max_tasks
        if excess <= 0:
            return []
        closed = [
            (task["closed_at"], task_id)
            for task_id, task in tasks.items()
            if task["state"] in CLOSED_STATES and task_id not in incoming
        ]
        if len(closed) < excess:
            raise StoreFull(self.max_tasks)
        evicted = [task_id for _, task_id in heapq.nsmallest(excess, closed)]
        for task_id in evicted:
            del tasks[task_id]
        return evicted

    async def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    async def select(self, states: Collection[str] | None, job: str | None) -> dict[str, Task]:
        return {
            task_id: task
            for task_id, task in self._tasks.items()
            if (states is None or task["state"] in states)
            and (job is None or task["meta"].get("job") == job)
        }

    async def delete(self, task_id: str) -> bool:
        return self._tasks.pop(task_id, None) is not None

    async def delete_where(
        self, states: Collection[str] | None, older_than: float | None, now: float
    ) -> list[str]:
        if states is None and older_than is None:
            raise ValueError("delete_where needs at least one filter")
        doomed = [
            task_id
            for task_id, task in self._tasks.items()
            if (states is None or task["state"] in states)
            and (older_than is None or now - task["updated_at"] > older_than)
        ]
        for task_id in doomed:
            del self._tasks[task_id]
        return doomed

    async def expire(self, now: float, lifetimes: Lifetimes) -> Expired:
        expired = Expired()
        for task_id, task in self._tasks.items():
            verdict = lifetimes.expiry(task, now)
            if verdict == "stale":
                task["state"] = "stale"
                task["eta"] = None
                expired.stale.append(task_id)
            elif verdict == "remove":
                expired.removed.append(task_id)
        for task_id in expired.removed:
            del self._tasks[task_id]
        return expired

    async def close(self) -> None:
        self._tasks.clear()
