"""Where tasks live: what every store must provide, and the in-memory store.

A store owns a :class:`~progressista.server.table.TaskTable`: every read (the hub, ``/tasks``,
the page, ``/metrics``) goes to that table in memory, without awaiting. The memory store's table is
the only copy; the Redis store's is a replica fed by Redis's change stream, so every server's
table converges on the same tasks. Writes go through the store's async methods, which commit to
the table (at once, or when the change comes back from the stream) and publish, so the hub hears
of every change whoever made it.

The memory store is the reference implementation: the Redis store passes the same contract suite
(``tests/test_store_contract.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from .alert import AlertLedger, MemoryLedger
from .event import Event
from .job import JobIndex
from .table import TaskTable
from .task import Lifetimes, Task, apply_event, went_stale

__all__ = ["ApplyResult", "Expired", "MemoryStore", "StoreFull", "StoreUnavailable", "TaskStore"]


class StoreFull(Exception):
    """The store holds ``max_tasks`` tasks and none of them could be evicted."""

    def __init__(self, max_tasks: int) -> None:
        super().__init__(
            f"the server holds its maximum of {max_tasks} tasks and none is finished; "
            "retry later, or raise --max-tasks"
        )
        self.max_tasks = max_tasks


class StoreUnavailable(Exception):
    """The store cannot take writes right now (Redis unreachable); nothing was stored."""


@dataclass
class ApplyResult:
    """The outcome of one request's events."""

    accepted: int = 0
    #: Events older (by ``seq``) than the stored state.
    ignored: int = 0
    #: Completed or failed tasks evicted to make room for new ones.
    evicted: int = 0


@dataclass
class Expired:
    """The outcome of one bounded cleanup step: which tasks went stale, which were removed."""

    stale: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: The step stopped at its limit: more may be due.
    more: bool = False


class TaskStore(Protocol):
    """What the server needs from a place that keeps tasks.

    ``table`` is what readers read; it may lag a write by the time a change takes to come back
    from Redis, never by more. Writes are all-or-nothing, raise :class:`StoreFull` when there is
    no room and :class:`StoreUnavailable` when the store cannot be reached.
    """

    @property
    def table(self) -> TaskTable: ...

    async def start(self) -> None:
        """Connect and load the tasks; called once from the application's startup."""

    async def apply(self, events: list[Event], now: float) -> ApplyResult:
        """Apply validated events, in order, all or nothing."""

    async def delete(self, task_ids: Collection[str]) -> list[str]:
        """Remove these tasks; return the ids that existed."""

    async def expire(self, now: float, lifetimes: Lifetimes, limit: int) -> Expired:
        """Apply at most ``limit`` lifecycle transitions due at ``now`` (one bounded step)."""

    def problem(self) -> str | None:
        """Why the store cannot take writes now (for ``/readyz``), or None when it can."""

    def on_problem(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener`` whenever :meth:`problem` changes (viewers are told)."""

    @property
    def ledger(self) -> AlertLedger:
        """Where alerts wait until they are delivered (see :mod:`.alert`)."""

    @property
    def leads(self) -> bool:
        """Whether this server does what one server does for all (cleanup, sending alerts)."""

    async def close(self) -> None: ...


def stage(
    lookup: Callable[[str], Task | None], events: list[Event], now: float
) -> tuple[dict[str, tuple[Task, int]], int]:
    """Merge a batch against the tasks ``lookup`` finds, without committing: the new tasks with
    their change masks, and how many events were ignored as older than what is stored.

    Several events for one task merge in order into one result, as if applied one by one.
    """
    staged: dict[str, tuple[Task, int]] = {}
    ignored = 0
    for event in events:
        task_id = event.task_id
        earlier = staged.get(task_id)
        result = apply_event(earlier[0] if earlier else lookup(task_id), event, now)
        if result is None:
            ignored += 1
            continue
        if earlier is not None:
            result = (result[0], result[1] | earlier[1])
        staged[task_id] = result
    return staged, ignored


def room_for(
    table: TaskTable,
    new_ids: int,
    max_tasks: int,
    keep: Collection[str],
    still_closed: Callable[[str], bool] | None = None,
) -> list[str]:
    """The longest-closed tasks to evict so ``new_ids`` more fit, or :class:`StoreFull`.

    ``still_closed`` checks a candidate against fresher state than ``table`` (a Redis replica's
    writes in flight may have reopened or removed it): those that fail it are passed over.
    """
    excess = len(table) + new_ids - max_tasks
    if excess <= 0:
        return []
    if still_closed is None:
        evict = table.longest_closed(excess, keep)
    else:
        evict, passed = [], set(keep)
        while len(evict) < excess:
            candidates = table.longest_closed(excess - len(evict), passed)
            if not candidates:
                break
            passed.update(candidates)
            evict += [task_id for task_id in candidates if still_closed(task_id)]
    if len(evict) < excess:
        raise StoreFull(max_tasks)
    return evict


class MemoryStore:
    """Tasks in this process's memory: the default, and the reference for every other store."""

    def __init__(
        self, max_tasks: int, *, track_age: bool = False, jobs: JobIndex | None = None
    ) -> None:
        self.max_tasks = max_tasks
        self._table = TaskTable(track_age=track_age, jobs=jobs)
        self._ledger = MemoryLedger()

    @property
    def table(self) -> TaskTable:
        return self._table

    async def start(self) -> None:
        pass

    def problem(self) -> str | None:
        return None

    def on_problem(self, listener: Callable[[str | None], None]) -> None:
        pass  # memory never becomes unreachable

    @property
    def ledger(self) -> AlertLedger:
        return self._ledger

    @property
    def leads(self) -> bool:
        return True  # the only server

    async def apply(self, events: list[Event], now: float) -> ApplyResult:
        table = self._table
        staged, ignored = stage(table.tasks.get, events, now)
        evicted: list[str] = []
        if len(table) + len(staged) > self.max_tasks:  # cheap guard before counting new ids
            new_ids = sum(1 for task_id in staged if task_id not in table.tasks)
            evicted = room_for(table, new_ids, self.max_tasks, staged)
        rev = table.rev
        if evicted:
            rev += len(table.remove_many(evicted, rev))
        for task, changed in staged.values():
            rev += 1
            task.rev = rev
            table.commit(task, changed)
        table.publish()
        return ApplyResult(accepted=len(events) - ignored, ignored=ignored, evicted=len(evicted))

    async def delete(self, task_ids: Collection[str]) -> list[str]:
        table = self._table
        deleted = table.remove_many(task_ids, table.rev)
        if deleted:
            table.publish()
        return deleted

    async def expire(self, now: float, lifetimes: Lifetimes, limit: int) -> Expired:
        table = self._table
        due = table.due(now, lifetimes, limit)
        expired = Expired(more=len(due) >= limit)
        for task_id, verdict in due.items():
            if verdict == "stale":
                stale, changed = went_stale(table.tasks[task_id])
                stale.rev = table.rev + 1
                table.commit(stale, changed)
                expired.stale.append(task_id)
            else:
                table.remove(task_id, table.rev + 1)
                expired.removed.append(task_id)
        if due:
            table.publish()
        return expired

    async def close(self) -> None:
        pass
