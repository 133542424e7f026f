"""What a viewer asks to see: a filter, and a window of each state's newest tasks.

A viewer that subscribes (the dashboard, ``progressista watch``) names a filter and how many
tasks per state it shows. It receives the counts for everything, and the tasks in its window;
the rest stays on the server. Viewers asking for the same thing share one :class:`Window`, kept
up to date from each flush's changes, so its cost is paid once however many watch it.

Filter syntax (the page's filter box, ``?q=`` in its URL): words separated by spaces, all of
which must match. ``key=value`` matches a task whose label ``key`` is exactly ``value`` (``*``
and ``?`` are wildcards: ``job=etl-*``); any other word matches a task whose id, description or
labels contain it, ignoring case. A filter is at most :data:`MAX_FILTER_CHARS` characters.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import re
from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice

from ..schema import STATES
from .table import TaskTable
from .task import Task

__all__ = ["DEFAULT_WINDOW", "MAX_FILTER_CHARS", "MAX_WINDOW", "Query", "Window"]

#: Most tasks per state one viewer may ask for.
MAX_WINDOW = 1000
#: Tasks per state on a fresh page; "show more" asks for this many more at a time.
DEFAULT_WINDOW = 50
#: Longest filter, in characters: a person's filter is a few words, and every word is tried on
#: every task a window scans.
MAX_FILTER_CHARS = 1000


class Query:
    """A parsed filter; :meth:`matches` decides for one task. ValueError past
    :data:`MAX_FILTER_CHARS`."""

    __slots__ = ("_labels", "_words", "text")

    def __init__(self, text: str) -> None:
        if len(text) > MAX_FILTER_CHARS:
            raise ValueError(
                f"a filter is at most {MAX_FILTER_CHARS:,} characters, not {len(text):,}"
            )
        self.text = " ".join(text.split())
        labels: list[tuple[str, str, re.Pattern[str] | None]] = []
        words: list[str] = []
        for term in self.text.split(" "):
            if not term:
                continue
            key, sep, value = term.partition("=")
            if sep and key:
                pattern = _wildcards(value) if any(c in value for c in "*?") else None
                labels.append((key, value, pattern))
            else:
                words.append(term.lower())
        self._labels = tuple(labels)
        self._words = tuple(words)

    @property
    def everything(self) -> bool:
        """True for the empty filter, which every task matches."""
        return not self._labels and not self._words

    def matches(self, task: Task) -> bool:
        meta = task.meta
        for key, value, pattern in self._labels:
            if key not in meta:
                return False
            label = meta[key]
            text = label if isinstance(label, str) else _label_text(label)
            if (pattern.fullmatch(text) is None) if pattern else (text != value):
                return False
        if self._words:
            haystack = " ".join(
                [task.task_id, task.desc, *(f"{k}={_label_text(v)}" for k, v in meta.items())]
            ).lower()
            return all(word in haystack for word in self._words)
        return True


def _wildcards(value: str) -> re.Pattern[str]:
    """``*`` and ``?`` as wildcards, everything else as itself. ``[`` is made literal before
    fnmatch reads it: fnmatch takes ``[...]`` for a class, and on Python 3.11 it looks for each
    unclosed bracket's end afresh, so 60,000 of them held the event loop 113 s (its stars, in
    atomic groups, never backtrack badly)."""
    return re.compile(fnmatch.translate(value.replace("[", "[[]")))


def _label_text(value: object) -> str:
    """A label as the page shows it: JSON's spelling for true, false and null."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def _entered(task: Task) -> float:
    """When a task entered its state, as far as its times tell: when it closed, when it last
    spoke (it went stale a fixed time after), or when it was created (revivals aside)."""
    if task.closed_at is not None and task.state in ("completed", "failed"):
        return task.closed_at
    return task.updated_at if task.state == "stale" else task.created_at


class Window:
    """The tasks that match one filter, by state in the order they entered it, and what a
    viewer of the newest ``limit`` per state was last shown.

    The unfiltered window reads the table's own sections; a filtered one keeps its own, built by
    one scan of the table and then kept up to date from each flush's changes.
    """

    def __init__(self, table: TaskTable, query: Query, limit: int) -> None:
        self.table = table
        self.query = query
        self.limit = limit
        #: A filtered window's own sections (the unfiltered one reads the table's).
        self.sections: dict[str, OrderedDict[str, None]] = {
            state: OrderedDict() for state in STATES
        }
        #: What the viewers were last shown: per state, ids newest first.
        self.shown: dict[str, list[str]] = {state: [] for state in STATES}
        self.counts: dict[str, int] = {state: 0 for state in STATES}
        #: Set once the window holds every matching task.
        self.ready = asyncio.Event()
        #: Hub clock time it was last asked for or left by a viewer.
        self.last_used = 0.0
        #: The table's generation it was built from (a replaced table needs a new window).
        self.generation = table.generation
        #: While building: per state, the ``limit`` matches that entered it last.
        self._newest: dict[str, list[tuple[float, str]]] = {state: [] for state in STATES}

    @property
    def key(self) -> tuple[str, int]:
        return (self.query.text, self.limit)

    def scan(self, ids: Iterable[str]) -> None:
        """While building: add the matching tasks among ``ids``, a slice of the table read in
        the order tasks were first stored (:class:`.order.IdOrder`: no copy of a section).

        That is not quite each state's order, which the window shows the newest of; so the
        ``limit`` newest by when they entered their state are kept aside, and put last when
        the build is done (:meth:`finish`).
        """
        if self.query.everything:
            return
        tasks, matches, sections = self.table.tasks, self.query.matches, self.sections
        found: dict[str, list[tuple[float, str]]] = {}
        for task_id in ids:
            task = tasks.get(task_id)
            if task is not None and matches(task):
                state = task.state
                sections[state][task_id] = None
                found.setdefault(state, []).append((_entered(task), task_id))
        for state, entries in found.items():
            self._newest[state] = heapq.nlargest(self.limit, self._newest[state] + entries)

    def finish(self) -> None:
        """The build is done: each state's newest go last, oldest of them first."""
        for state, newest in self._newest.items():
            section = self.sections[state]
            for _, task_id in sorted(newest):
                if task_id in section:  # it may have changed state meanwhile (follow)
                    section.move_to_end(task_id)
        self._newest = {}

    def follow(self, task_ids: Iterable[str]) -> None:
        """Update a filtered window's sections for tasks that changed or went away."""
        if self.query.everything:
            return
        tasks, matches = self.table.tasks, self.query.matches
        for task_id in task_ids:
            task = tasks.get(task_id)
            wanted = task.state if task is not None and matches(task) else None
            for state, section in self.sections.items():
                if state != wanted:
                    section.pop(task_id, None)
            if wanted is not None and task_id not in self.sections[wanted]:
                self.sections[wanted][task_id] = None

    def newest(self) -> dict[str, list[str]]:
        """What the window shows now: per state, its newest ``limit`` ids.

        A filtered window's sections are as of the changes it last followed, and the table may
        have lost tasks since (a clear while a flush yielded): those are passed over here, and
        leave the sections with the next flush.
        """
        if self.query.everything:
            return {state: self.table.newest(state, self.limit) for state in STATES}
        tasks = self.table.tasks
        return {
            state: list(islice((i for i in reversed(section) if i in tasks), self.limit))
            for state, section in self.sections.items()
        }

    def current_counts(self) -> dict[str, int]:
        if self.query.everything:
            return self.table.counts()
        return {state: len(section) for state, section in self.sections.items()}
