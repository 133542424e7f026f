"""The tasks in memory, with the indexes that keep every cost proportional to what changes.

Every store keeps one :class:`TaskTable`: the memory store as its only copy, the Redis store as the
replica it feeds from Redis's change stream. Everything that reads tasks (the hub, ``/tasks``, the
page, ``/metrics``) reads the table, without awaiting.

Each index is an ``OrderedDict`` used as a queue: moving a key to the end costs about 60 ns and
walking from the front stops at the first key that is not due. So:

- cleanup visits only the tasks that are due (active tasks by last update, stale ones in the order
  they went stale, closed ones in the order they closed, and by creation when ``max_age`` is on);
- evicting for room takes the longest-closed tasks off the front of the closed sections;
- a section's newest tasks (what the page shows) are the end of that section;
- a viewer that fell behind learns what changed since its revision by walking the change order
  back from its end (or, past a few thousand, reading the board in slices), and which tasks
  went by the removals remembered since.

Indexes cost about 300 bytes a task (see the README's sizing figures), the price of never
scanning a million tasks on the event loop.
"""

from __future__ import annotations

import gc
import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Final

from ..schema import STATES
from .job import Job, JobIndex
from .order import IdOrder, OrderCursor
from .removals import Removals
from .sections import Sections
from .task import Lifetimes, Task, lingers

__all__ = ["REMOVED", "Changes", "TaskTable"]

#: The mask recorded for a task that was removed.
REMOVED: Final = 0

#: Task ids with the mask of the fields that changed since the hub last looked; REMOVED for ids
#: that went away.
Changes = dict[str, int]

_Queue = OrderedDict[str, None]


class TaskTable:
    """Tasks by id (in the order they were first stored) and the indexes over them."""

    def __init__(
        self,
        *,
        track_age: bool = False,
        removals_kept: int = 100_000,
        jobs: JobIndex | None = None,
    ) -> None:
        #: Every task, by id.
        self.tasks: dict[str, Task] = {}
        #: The ids in the order each was first stored, readable in pieces (snapshots, paging).
        self.order = IdOrder()
        #: The jobs the tasks make up, kept up to date with every change.
        self.jobs = jobs if jobs is not None else JobIndex()
        self.jobs.attach(self.tasks)
        self._deferred = self.jobs.deferred
        #: The highest revision applied: the table's version.
        self.rev = 0
        #: Per state, its tasks in the order they entered it.
        self.sections = Sections(STATES)
        self._active_by_update: _Queue = OrderedDict()
        self._by_change: _Queue = OrderedDict()
        #: Only kept when tasks have a maximum age (``max_age``).
        self._by_created: _Queue | None = OrderedDict() if track_age else None
        #: Closed bars that asked not to stay (``meta.leave`` false: tqdm's ``leave=False``),
        #: in the order they closed: they leave the board after Lifetimes.linger.
        self._transient: _Queue = OrderedDict()
        #: Recent removals, for viewers catching up.
        self._removed = Removals(removals_kept)
        #: What changed since the hub last took it; None while nobody is watching.
        self._changes: Changes | None = None
        self._listeners: list[Callable[[], None]] = []
        #: Bumped when every task was replaced at once (:meth:`replace_all`): whoever kept
        #: revisions of this table must start over.
        self.generation = 0
        #: Called with a task outside any job when it fails (alerts).
        self._failure_watchers: list[Callable[[Task], None]] = []

    # Reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def counts(self) -> dict[str, int]:
        """Tasks per state."""
        return self.sections.counts()

    def newest(self, state: str, limit: int) -> list[str]:
        """The ``limit`` ids that entered ``state`` last, newest first."""
        return list(islice(self.sections.newest(state), limit))

    def ids_after(self, after: str | None) -> OrderCursor:
        """A reader of the ids in the order they were first stored, from just after ``after``
        (all if None; from the beginning if ``after`` is no longer stored, so that paging may
        repeat tasks but never skips one)."""
        return self.order.cursor(after)

    def due(self, now: float, lifetimes: Lifetimes, limit: int) -> dict[str, str]:
        """Up to ``limit`` tasks due for a transition at ``now``: id → ``"stale"``/``"remove"``.

        Visits only due tasks plus one per index: each index is ordered by its deadline.
        """
        due: dict[str, str] = {}
        tasks = self.tasks
        for task_id in self._active_by_update:
            task = tasks[task_id]
            if now <= lifetimes.stale_at(task):
                break
            due[task_id] = "remove" if now > lifetimes.expires_at(task) else "stale"
            if len(due) >= limit:
                return due
        queues: list[tuple[Iterable[str], Callable[[Task], float]]] = [
            (self.sections.oldest("stale"), lifetimes.abandoned_at),
            (self.sections.oldest("completed"), lifetimes.expires_at),
            (self.sections.oldest("failed"), lifetimes.expires_at),
        ]
        if self._by_created is not None and lifetimes.max_age is not None:
            age = lifetimes.max_age
            queues.append((self._by_created, lambda task: task.created_at + age))
        linger = lifetimes.linger
        queues.append((self._transient, lambda task: (task.closed_at or 0.0) + linger))
        for queue, deadline in queues:
            for task_id in queue:
                if now <= deadline(tasks[task_id]):
                    break
                due[task_id] = "remove"
                if len(due) >= limit:
                    return due
        return due

    def longest_closed(self, count: int, keep: Iterable[str] = ()) -> list[str]:
        """The ``count`` tasks closed longest ago (completed or failed), except those in ``keep``.

        Fewer when there are not that many. Costs what it returns plus what it skips.
        """
        keep = set(keep)
        sections = self.sections
        completed, failed = sections.oldest("completed"), sections.oldest("failed")
        if sections.size("completed") and sections.size("failed"):
            tasks = self.tasks

            def closed_at(task_id: str) -> float:
                return tasks[task_id].closed_at or 0.0

            # Each section is in closing order: merged, ties to the completed, as they came.
            candidates: Iterable[str] = heapq.merge(completed, failed, key=closed_at)
        else:  # mostly one of them is empty: failures are rare
            candidates = completed if sections.size("completed") else failed
        return list(islice((i for i in candidates if i not in keep), count))

    def changed_since(self, rev: int, limit: int) -> list[str] | None:
        """Ids changed after revision ``rev``, newest first; None when there are more than
        ``limit`` (each costs a walk of the change order: about 1 µs next to a million tasks,
        so the caller reads the board in slices instead, :meth:`ids_after`)."""
        changed: list[str] = []
        tasks = self.tasks
        for task_id in reversed(self._by_change):
            if tasks[task_id].rev <= rev:
                break
            if len(changed) >= limit:
                return None
            changed.append(task_id)
        return changed

    def removed_since(self, rev: int) -> list[str] | None:
        """Ids removed after revision ``rev``, oldest first, in one slice (some may have been
        stored again since: the reader checks the table); None when removals that old have
        been forgotten (the caller starts over from a snapshot)."""
        return self._removed.since(rev)

    # Watching --------------------------------------------------------------------------------

    def watch(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every published change, and start recording changes."""
        self._listeners.append(listener)
        if self._changes is None:
            self._changes = {}

    def watch_failures(self, watcher: Callable[[Task], None]) -> None:
        """Call ``watcher(task)`` when a task with no job fails (jobs tell of their own)."""
        self._failure_watchers.append(watcher)

    def take_changes(self) -> Changes:
        """What changed since the last call (ids with their masks), and start afresh."""
        changes = self._changes
        if changes is None:
            return {}
        self._changes = {}
        return changes

    def publish(self) -> None:
        """Tell the listeners that changes were committed (once per batch, not per task)."""
        self.jobs.settle()
        for listener in self._listeners:
            listener()

    # Writing ---------------------------------------------------------------------------------

    def commit(self, task: Task, changed: int) -> None:
        """Store ``task`` (new, or replacing the stored one with that id); ``changed`` is the
        mask of its fields that differ. Its ``rev`` must be above the table's."""
        task_id = task.task_id
        old = self.tasks.get(task_id)
        self.tasks[task_id] = task
        if task.rev > self.rev:
            self.rev = task.rev
        state = task.state
        if old is None:
            self.sections.add(state, task_id)
            self.order.add(task_id)
        elif old.state != state:
            self.sections.move(task_id, old.state, state)
        if state == "active":
            if old is not None and old.state == "active":
                self._active_by_update.move_to_end(task_id)
            else:  # new, or back: a raised KeyError cost more than the task's other indexes
                self._active_by_update[task_id] = None
        elif old is not None and old.state == "active":
            del self._active_by_update[task_id]
        by_change = self._by_change
        if old is None:
            by_change[task_id] = None
        else:
            by_change.move_to_end(task_id)
        created = self._by_created
        if created is not None and (old is None or old.created_at != task.created_at):
            created.pop(task_id, None)
            created[task_id] = None
        if task.closed_at is not None and lingers(task):
            if task_id not in self._transient:
                self._transient[task_id] = None
        elif old is not None:
            self._transient.pop(task_id, None)
        changes = self._changes
        if changes is not None:
            changes[task_id] = changes.get(task_id, 0) | changed
        meta = task.meta
        if "job" in meta:
            # The jobs' hot path, here to spare a call an event: a bar the index deferred (so
            # stored, active) that stays active stays deferred; only a move forward is noted
            # (see JobIndex.update, which defers it, and JobIndex.deferred).
            entry = self._deferred.get(task_id) if state == "active" else None
            if (
                entry is not None
                and old is not None
                and "job_size" not in meta
                and meta["job"] == entry[1].name  # (not moving to another job)
            ):
                now = task.updated_at
                if task.n != old.n and now > entry[1].advanced_at:
                    entry[1].advanced_at = now
            else:
                self.jobs.update(old, task, task.updated_at)
        elif old is not None and "job" in old.meta:
            self.jobs.update(old, task, task.updated_at)
        elif state == "failed" and self._failure_watchers and (old is None or old.state != state):
            for watcher in self._failure_watchers:
                watcher(task)

    def remove(self, task_id: str, rev: int, *, cut_short: bool = True) -> bool:
        """Forget a task; ``rev`` is the revision of its removal. False when there was none.
        ``cut_short``: see :meth:`JobIndex.forget`."""
        return bool(self.remove_many((task_id,), rev - 1, cut_short=cut_short))

    def remove_many(
        self, task_ids: Iterable[str], rev: int, *, cut_short: bool = True
    ) -> list[str]:
        """Forget these tasks, numbering their removals from ``rev + 1`` in this order; returns
        the ids that were stored (the others are passed over, and take no number).

        One index at a time for all of them: a store full of closed tasks evicts one for each
        new id, and one by one a removal cost about as much as storing a task.
        """
        pop = self.tasks.pop
        gone = [(task_id, task) for task_id in task_ids if (task := pop(task_id, None)) is not None]
        if not gone:
            return []
        ids = [task_id for task_id, _ in gone]
        if rev + len(ids) > self.rev:
            self.rev = rev + len(ids)
        self.sections.discard_many((task_id, task.state) for task_id, task in gone)
        self.order.remove_many(ids)
        by_change = self._by_change
        for task_id in ids:
            del by_change[task_id]
        for queue in (self._by_created, self._transient):
            if queue:
                for task_id in ids:
                    queue.pop(task_id, None)
        self._removed.extend(ids, rev + 1)
        changes = self._changes
        if changes is not None:
            changes.update(dict.fromkeys(ids, REMOVED))
        active = self._active_by_update
        for task_id, task in gone:
            if task.state == "active":
                del active[task_id]
        self.jobs.forget((task for _, task in gone if "job" in task.meta), cut_short=cut_short)
        return ids

    def forget_removals(self) -> None:
        """Removals up to now may have been missed (a replica that reloaded): a viewer older
        than this must start over from a snapshot."""
        self._removed.forget(self.rev)

    def replace_all(
        self, tasks: Iterable[Task], rev: int, finished_runs: Iterable[Job] = ()
    ) -> None:
        """Hold exactly ``tasks`` from now on, at revision ``rev`` (a replica loading, or whose
        Redis lost its data: revisions started over). Viewers start over too (``generation``).
        ``finished_runs`` (their records) are listed first, so that the tasks rejoin their runs
        as they did live (JobIndex.restore)."""
        jobs = self.jobs.emptied()
        for run in finished_runs:
            jobs.restore(run)
        fresh = TaskTable(
            track_age=self._by_created is not None,
            removals_kept=self._removed.kept,
            jobs=jobs,
        )
        for task in sorted(tasks, key=lambda task: task.rev):
            fresh.commit(task, 0)
        for name in (
            "tasks",
            "order",
            "sections",
            "_active_by_update",
            "_by_change",
            "_by_created",
            "_transient",
            "jobs",
            "_deferred",
        ):
            setattr(self, name, getattr(fresh, name))
        self._removed.forget(rev)
        self.rev = rev
        if self._changes is not None:
            self._changes = {}
        self.generation += 1
        gc.freeze()  # the new indexes, as at startup (app.keep_out_of_collections)
        self.publish()
