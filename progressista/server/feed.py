"""What viewers are sent over ``/ws``: each message's JSON (``wire`` frames it).

Messages are built once and framed once; the same bytes go to every viewer they suit. Large
messages are split so that none holds the event loop or a viewer's buffer for long: a snapshot
or a patch of many tasks is several messages of at most :data:`TASKS_PER_MESSAGE` tasks.

A patch names each changed task with only the fields that changed (``updated_at``, ``n``, ``rate``
and the like: about 70 bytes where the whole task is 250); a task the viewer cannot know yet
(new, or just entering its window) comes whole, in the patch's ``replace``. ``seq``,
``timestamp`` and ``rev`` are left out of every task sent, whole or partial: they change with
every event and no viewer shows them (a viewer's copy would be wrong after the first partial
update anyway). So is ``task_id``: the key the task is sent under is its id; and ``percent``,
which viewers derive from ``n`` and ``total``. A whole task leaves out every field at its
default, which the viewer puts back (:mod:`progressista.shown`). Partial tasks leave out
``history`` too, which viewers extend from the ``n`` and ``updated_at`` they are sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from operator import attrgetter
from typing import Any

import msgspec

from ..shown import SHOWN_DEFAULTS
from .job import Job
from .table import REMOVED, TaskTable
from .task import ALL_FIELDS, FIELD_BIT, TASK_FIELDS, Task

__all__ = [
    "TASKS_PER_MESSAGE",
    "chunks",
    "patches",
    "refused",
    "snapshot",
    "status",
]

#: Most tasks in one message: about 200 KB of whole tasks (a snapshot piece), far less of
#: changes. A viewer that stopped reading holds at most its socket's high-water mark plus one
#: message, so this bounds what a hundred stalled viewers cost.
TASKS_PER_MESSAGE = 500

_encode = msgspec.json.encode


def _stored_default(name: str) -> Any:
    """``Task``'s own default object for the field: msgspec leaves a field out when its value
    *is* the default (identity, but for empty containers), and a task keeps that very object
    until an event brings another value. It must equal what viewers put back."""
    field = _TASK_FIELDS[name]
    default = (
        field.default if field.default_factory is msgspec.NODEFAULT else field.default_factory()
    )
    as_json = list(default) if isinstance(default, tuple) else default
    if as_json != SHOWN_DEFAULTS[name] or type(as_json) is not type(SHOWN_DEFAULTS[name]):
        raise AssertionError(f"Task.{name} defaults to {default!r}; viewers put back another")
    return default


_TASK_FIELDS = {field.name: field for field in msgspec.structs.fields(Task)}
#: Fields no task on the feed carries (see the module's docstring).
UNSENT = ("task_id", "seq", "timestamp", "rev", "percent")
#: The fields of a whole task on the feed, in the wire order.
SHOWN_FIELDS: tuple[str, ...] = tuple(name for name in TASK_FIELDS if name not in UNSENT)


#: A whole task as viewers get it, encoded in C like :class:`Task` itself: building one costs
#: 0.35 µs a task, once per message for every viewer. Without the duplicated id, the numbers
#: nobody shows and the fields at their defaults (:data:`progressista.shown.SHOWN_DEFAULTS`;
#: a value equal to its default but of another type, a ``unit_divisor`` of 1000.0, is sent),
#: a typical bar is 243 bytes instead of 478 in every snapshot, window and new bar.
ShownTask = msgspec.defstruct(
    "ShownTask",
    [(name, object, _stored_default(name)) for name in SHOWN_FIELDS],
    omit_defaults=True,
    gc=False,
)
_shown_values = attrgetter(*SHOWN_FIELDS)


def shown(task: Task) -> msgspec.Struct:
    """``task`` whole, as the feed sends it."""
    return ShownTask(*_shown_values(task))


def shown_tasks(tasks: Iterable[tuple[str, Task]]) -> dict[str, msgspec.Struct]:
    """Whole tasks by id, as the feed sends them."""
    return {task_id: ShownTask(*_shown_values(task)) for task_id, task in tasks}


#: Fields a partial task may carry, by bit. ``percent`` is left out: a receiver derives it
#: from ``n`` and ``total`` as the server does (the page gets it for every event otherwise).
_SHOWN_BITS: tuple[tuple[int, str], ...] = tuple(
    (FIELD_BIT[name], name)
    for name in TASK_FIELDS
    if name not in ("seq", "timestamp", "rev", "history", "percent", "updated_at")
)


def partial(task: Task, changed: int, at: float | None = None) -> dict[str, Any]:
    """Only ``task``'s changed fields (``changed``, a mask short of ALL_FIELDS).

    Every partial entry has an ``updated_at``: its own, or else ``at``, which the message gives
    once for all its entries (a batch is committed at one instant, so most share it).
    """
    fields = {name: getattr(task, name) for bit, name in _SHOWN_BITS if changed & bit}
    if task.updated_at != at:
        fields["updated_at"] = task.updated_at
    return fields


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``, taken as they are needed: listing a stale storm's 100k
    changes at once held the loop 6 ms before the first piece went out."""
    taken = iter(items)
    while chunk := list(islice(taken, size)):
        yield chunk


def snapshot(tasks: Mapping[str, Task], more: bool) -> bytes:
    """One piece of a snapshot: ``more`` is true on every piece but the last."""
    return _encode({"type": "snapshot", "tasks": shown_tasks(tasks.items()), "more": more})


#: Fewest updates of one commit instant that get a message of their own (with that instant
#: as its ``at``); smaller groups share a message, each update with its own ``updated_at``.
INSTANT_GROUP = 8


def patches(table: TaskTable, changes: Mapping[str, int]) -> Iterator[list[bytes]]:
    """The patch messages for these changes (id → mask of changed fields, or REMOVED), a list
    for each piece of at most :data:`TASKS_PER_MESSAGE` tasks, to be written together.

    A piece's updates are grouped by commit instant, each group a message that gives its
    instant once as ``at``: a flush holds several batches (one every 12 ms from 20 workers, two
    a flush), and an update with an ``updated_at`` of its own carries 31 bytes more, a third
    of its size, which every viewer receives.
    """
    for chunk in chunks(changes.items(), TASKS_PER_MESSAGE):
        removed: list[str] = []
        whole_tasks: list[tuple[str, Task]] = []
        instants: dict[float, list[tuple[Task, int]]] = {}
        for task_id, changed in chunk:
            task = table.tasks.get(task_id)
            if task is None:
                removed.append(task_id)
            elif changed == REMOVED or changed == ALL_FIELDS:
                # Removed, then a new task with the id, or new: the viewer needs all of it.
                whole_tasks.append((task_id, task))
            else:
                instants.setdefault(task.updated_at, []).append((task, changed))
        groups = [group for group in instants.values() if len(group) >= INSTANT_GROUP]
        mixed = [
            entry for group in instants.values() if len(group) < INSTANT_GROUP for entry in group
        ]
        if mixed or not groups:
            groups.insert(0, mixed)
        messages = []
        for index, group in enumerate(groups):
            at = group[0][0].updated_at if group else None
            tasks = {task.task_id: partial(task, changed, at) for task, changed in group}
            message: dict[str, Any] = {"type": "patch", "tasks": tasks, "removed": []}
            if index == 0:
                if whole_tasks:
                    message["replace"] = shown_tasks(whole_tasks)
                message["removed"] = removed
            if at is not None:
                message["at"] = at
            messages.append(_encode(message))
        yield messages


def whole(
    table: TaskTable, changed: Iterable[str], removed: Iterable[str]
) -> Iterator[list[bytes]]:
    """Patch messages carrying whole tasks: for a viewer catching up from an older revision."""
    return patches(table, {**dict.fromkeys(removed, REMOVED), **dict.fromkeys(changed, ALL_FIELDS)})


#: Finished job runs a new viewer is shown with the unfinished ones.
RECENT_JOBS = 20


def jobs(listed: Iterable[Job]) -> bytes:
    """Every job run to show, each whole with its history: the viewer forgets the rest."""
    shown = {job.id: job for job in listed}
    return _encode({"type": "jobs", "jobs": shown, "removed": [], "whole": True})


def job_changes(
    listed: Iterable[Job], removed: Iterable[str], told: dict[str, dict[str, Any]]
) -> bytes | None:
    """Job runs that changed, each with only the fields that differ from ``told`` (what every
    viewer keeping up holds, brought up to date here), a run not in it whole; None when
    nothing differs. A running job changes with every flush (its ``n``, ``fraction``,
    ``rate``, times), and its whole 500 bytes went out each time: 5 bytes per event per viewer
    at 4,000 events/s. ``history`` never comes: viewers extend it from ``fraction``."""
    shown: dict[str, Any] = {}
    for job in listed:
        fields = msgspec.structs.asdict(job)
        del fields["history"]
        held = told.get(job.id)
        told[job.id] = fields
        if held is None:
            shown[job.id] = fields
        elif changed := {name: value for name, value in fields.items() if held[name] != value}:
            shown[job.id] = changed
    gone = list(removed)
    for key in gone:
        told.pop(key, None)
    if not shown and not gone:
        return None
    return _encode({"type": "jobs", "jobs": shown, "removed": gone, "whole": False})


def keep_told_alike(told: dict[str, dict[str, Any]], overview: Iterable[Job]) -> None:
    """A viewer was just sent ``overview`` (every run as it is now) while the others hold
    ``told``: forget each run the two disagree on, so that its next change goes whole to all
    and they hold the same again (a run changed twice, and back, between broadcasts would
    otherwise stay different)."""
    sent = {job.id: job for job in overview}
    for key, fields in list(told.items()):
        job = sent.get(key)
        if job is None or any(fields[name] != getattr(job, name) for name in fields):
            del told[key]


def status(problem: str | None) -> bytes:
    """Whether the server can take progress right now (its store is reachable)."""
    if problem is None:
        return _encode({"type": "status", "store": "ok"})
    return _encode({"type": "status", "store": "unavailable", "reason": problem})


def refused(query: str, reason: str) -> bytes:
    """A viewer's ``subscribe`` was not followed: it keeps the window it had, and is told why
    (the page marks its filter box, rather than show a filter its board does not follow)."""
    return _encode({"type": "refused", "q": query, "reason": reason})


def view(
    table: TaskTable,
    shown: Mapping[str, list[str]],
    counts: Mapping[str, int],
    now: float,
) -> bytes:
    """A windowed viewer's whole view: what it shows per state, those tasks, and the counts.

    ``shown`` is as of the last flush: a task removed since is left out (the next patch says
    it went, to a viewer that never had it)."""
    stored = table.tasks
    sections = {state: [i for i in ids if i in stored] for state, ids in shown.items()}
    tasks = shown_tasks((task_id, stored[task_id]) for ids in sections.values() for task_id in ids)
    return _encode(
        {
            "type": "view",
            "tasks": tasks,
            "sections": sections,
            "counts": _counts(table, counts),
            # The server's clock, so a page can say how long ago a task was updated even when
            # its own clock is off.
            "now": now,
        }
    )


def view_patch(
    table: TaskTable,
    before: Mapping[str, list[str]],
    after: Mapping[str, list[str]],
    counts_before: Mapping[str, int],
    counts_after: Mapping[str, int],
    changes: Mapping[str, int],
) -> bytes | None:
    """What changed in a window since its viewers were last told; None when nothing did."""
    was_shown = {task_id for ids in before.values() for task_id in ids}
    now_shown = {task_id for ids in after.values() for task_id in ids}
    tasks: dict[str, dict[str, Any]] = {}
    replace: dict[str, msgspec.Struct] = {}
    at: float | None = None
    for task_id in now_shown:
        task = table.tasks[task_id]
        changed = changes.get(task_id)
        if task_id not in was_shown or changed == REMOVED or changed == ALL_FIELDS:
            replace[task_id] = shown(task)  # new to the window, or a new task under its id
        elif changed is not None:
            if at is None:
                at = task.updated_at
            tasks[task_id] = partial(task, changed, at)
    removed = [task_id for task_id in was_shown if task_id not in now_shown]
    sections = {state: ids for state, ids in after.items() if ids != before.get(state)}
    message: dict[str, Any] = {"type": "patch", "tasks": tasks, "removed": removed}
    if replace:
        message["replace"] = replace
    if at is not None:
        message["at"] = at
    if sections:
        message["sections"] = sections
    if counts_after != counts_before or changes_touch_totals(changes):
        message["counts"] = _counts(table, counts_after)
    if not tasks and not removed and len(message) == 3:  # (replace would make it 4)
        return None
    return _encode(message)


def changes_touch_totals(changes: Mapping[str, int]) -> bool:
    """Whether the table's own counts may have moved (a state or the set of tasks changed)."""
    state = FIELD_BIT["state"]
    return any(changed == REMOVED or changed & state for changed in changes.values())


def _counts(table: TaskTable, matching: Mapping[str, int]) -> dict[str, list[int]]:
    """Per state: ``[tasks matching the viewer's filter, tasks in all]``."""
    totals = table.counts()
    return {state: [matching[state], totals[state]] for state in totals}
