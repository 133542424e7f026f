"""Jobs: many bars on many machines seen as one thing, with one bar, one ETA and one history.

A job is every task labelled with the same ``meta.job``, during one *run*: a name that recurs
(``--job nightly-etl`` every night) makes one run each time, numbered from 1. A run starts with
its first task; a task of a name whose last run has finished starts the next one.

What a run adds up (each counted task, in its latest state; a task removed from the board, say a
``leave=False`` bar or one past its retention, still counts as it last was):

- tasks per state; ``n`` and ``total``, summed (``total`` null while any bar has none);
- ``fraction``: every bar weighs the same (bytes and rows do not add up, fractions do): each
  completed bar counts 1, each other ``n / total``, over the bars seen or, when the job
  announced how many it will run (``meta.job_size``), over that many. Null while an open bar has
  no total: unknown beats wrong;
- ``rate``: the active bars' steady rates, summed, in ``unit``, the unit they all share; null
  when their units differ (bytes a second plus rows a second is no figure);
- ``eta``: from the least-squares slope of the fraction over the run's recent history (sampled
  when its sums change, read or not: cleanup folds them every second); null when the fraction
  is unknown or not rising, or the job is stalled.

The task ``progressista run`` makes (``meta.role = "run"``, its id the job's name) *heads* the run:
it is not summed, and its end ends the job: completed when it completes, failed when it fails.
Without a head, a run is completed when every bar is and the announced size is reached, or,
with no size announced, once no bar has come for ``gap`` seconds after the last one ended: a
script whose loops run one after another (``PROGRESSISTA_JOB=etl python etl.py``) has no bar open
between two of them, and each loop made a run of its own, with an alert each. A run is
failed as soon as any of its tasks fails (and it takes the bars that follow while its work
goes on: see :meth:`_Run.still_going`); stalled while no open bar has advanced for
``job_stall_after`` (a hung worker's sender keeps its bars fresh while nothing moves) or every
open bar is stale; running otherwise. A finished run stays finished: a completed one may still
turn failed (one of its bars fails after its head completed it), but never runs or stalls
again; a task of its name that comes later starts the next run.

Finished runs stay listed for ``job_retention`` (default 7 days), the most recent ``max_jobs``.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice

import msgspec

from .task import Task, fit_slope, readable

__all__ = ["JOB_STATES", "Job", "JobIndex"]

JOB_STATES = ("running", "stalled", "completed", "failed")

#: Samples a run's fraction history keeps (as a task's).
_HISTORY_POINTS = 32
_SAMPLE_SPACING = 1.0
_TREND_POINTS = 8
#: A bar's changes are deferred (see JobIndex) when it changed within this many seconds before.
DEFER_WITHIN = 0.25


class Job(msgspec.Struct, kw_only=True):
    """One run of a job, as ``/jobs``, ``/ws`` and ``/metrics`` give it."""

    #: ``name#run``: what ``/jobs/{job}`` and the feed name it by.
    id: str
    job: str
    run: int
    state: str
    #: Counted tasks per state (the head task excluded).
    tasks: dict[str, int]
    n: float
    total: float | None
    fraction: float | None
    rate: float | None
    eta: float | None
    #: The unit every active bar counts in (``rate`` is in it a second); null if they differ.
    unit: str | None = None
    #: How many bars the job announced it will run (``meta.job_size``), if it did.
    size: int | None
    #: The ``run`` task heading the job, if any, and its state.
    head: str | None
    head_state: str | None
    started_at: float
    updated_at: float
    finished_at: float | None
    #: When an open bar last moved forward.
    advanced_at: float
    #: The first failure: its text, which task, which host.
    error: str | None
    error_task: str | None
    error_host: str | None
    #: ``(t0, fraction0, t1, fraction1, …)``.
    history: tuple[float, ...]


def _is_head(task: Task, name: str) -> bool:
    return task.task_id == name and task.meta.get("role") == "run"


class _Run:
    """The running sums of one run, kept up to date change by change."""

    __slots__ = (
        "active",
        "advanced_at",
        "completed",
        "error",
        "error_host",
        "error_task",
        "failed",
        "finished_at",
        "fractions",
        "head",
        "head_state",
        "history",
        "ids",
        "kept",
        "key",
        "n",
        "name",
        "no_fraction",
        "no_total",
        "number",
        "rate",
        "serial",
        "size",
        "stale",
        "started_at",
        "state",
        "total",
        "units",
        "updated_at",
    )

    def __init__(self, name: str, number: int, now: float, serial: int) -> None:
        self.name = name
        self.number = number
        #: ``name#number``: what the run is known by (made once, it is asked for at every event).
        self.key = f"{name}#{number}"
        #: Order of creation among all runs (ties in updated_at go to the newer run).
        self.serial = serial
        self.active = self.stale = self.completed = self.failed = 0
        # Ints while the bars' counts are: exact however large, so taking a bar's 10**17 back
        # out leaves the others' 1 (a float sum, from 0.0, read 0).
        self.n: int | float = 0
        self.total: int | float = 0
        #: Counted tasks with no total (total then unknown), and open ones with no fraction.
        self.no_total = self.no_fraction = 0
        self.fractions = 0.0
        self.rate = 0.0
        #: Active counted tasks per unit.
        self.units: dict[str, int] = {}
        self.size: int | None = None
        self.head: str | None = None
        self.head_state: str | None = None
        self.started_at = self.updated_at = self.advanced_at = now
        self.finished_at: float | None = None
        self.error: str | None = None
        self.error_task: str | None = None
        self.error_host: str | None = None
        self.history: tuple[float, ...] = ()
        self.state = "running"
        #: The stored tasks that count in (or head) this run. A dict, not a set: a dict of
        #: strings is left alone by the garbage collector, a set is walked by every full
        #: collection (70 ms for a million ids).
        self.ids: dict[str, None] = {}
        #: Known from its record (a restart on Redis): its sums are the record's, and the
        #: stored tasks that belonged to it join it as members only (see JobIndex.restore).
        self.kept = False

    @property
    def members(self) -> int:
        return self.active + self.stale + self.completed + self.failed

    def count(self, task: Task, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) one task's contribution."""
        state = task.state
        if state == "active":
            self.active += sign
            rate = task.trend if task.trend is not None else task.rate
            if rate:
                self.rate += sign * rate
            units, unit = self.units, task.unit
            left = units.get(unit, 0) + sign
            if left:
                units[unit] = left
            else:
                del units[unit]
        elif state == "stale":
            self.stale += sign
        elif state == "completed":
            self.completed += sign
        else:
            self.failed += sign
        self.n += sign * task.n
        total = task.total
        if total is None:
            self.no_total += sign
        else:
            self.total += sign * total
        if state == "completed":
            self.fractions += sign
        elif total:
            self.fractions += sign * min(task.n / total, 1.0)
        elif state != "failed":
            self.no_fraction += sign

    def move(self, old: Task, new: Task) -> None:
        """Replace ``old``'s contribution with ``new``'s: the common case (same state, a
        total then as now) in a few additions, the rest as take away and add."""
        state = new.state
        total = new.total
        if (
            state != old.state
            or (total is None) != (old.total is None)
            or bool(total) != bool(old.total)  # 0 has no fraction: counted apart
            or new.unit != old.unit
        ):
            self.count(old, -1)
            self.count(new, 1)
            return
        self.n += new.n - old.n
        if total is not None:
            self.total += total - old.total  # type: ignore[operator]  # not None, as total
        if state == "active":
            rate = new.trend if new.trend is not None else new.rate
            before = old.trend if old.trend is not None else old.rate
            self.rate += (rate or 0) - (before or 0)
        if total and state != "completed":  # comparisons, not min(): this runs per event
            fraction = new.n / total
            if fraction > 1.0:
                fraction = 1.0
            was = old.n / old.total if old.total else 0.0
            if was > 1.0:
                was = 1.0
            self.fractions += fraction - was

    def announce(self, size: object) -> None:
        """A bar says how many the job will run (``meta.job_size``): the largest said holds."""
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            self.size = max(self.size or 0, size)

    def fraction(self) -> float | None:
        expected = max(self.size or 0, self.members)
        if self.no_fraction or not expected:
            return None
        return min(self.fractions / expected, 1.0)

    def blame(self, failed: Task) -> None:
        """``failed`` (a bar, or the head) failed: the run's error is its, unless one came first."""
        if self.error is None:
            host = failed.meta.get("host")
            self.error, self.error_task = failed.error or "failed", failed.task_id
            self.error_host = None if host is None else str(host)

    def still_going(self, now: float, gap: float) -> bool:
        """A failed run whose work goes on: a new bar of its name at ``now`` joins it. It
        failed as soon as one bar did, but its head still runs, or (without one) bars are
        still open or the gap after its last one has not passed: one script's loops, the
        others after a failure, were each a run of their own, with an alert each."""
        if self.state != "failed":
            return False
        if self.head is not None:
            return self.head_state in ("active", "stale")
        return bool(self.active + self.stale) or now - self.updated_at < gap

    def judge(self, now: float, stall_after: float, gap: float) -> str:
        """The run's state now (see the module's docstring)."""
        if self.failed or self.head_state == "failed":
            return "failed"
        open_bars = self.active + self.stale
        if self.head is not None:
            if self.head_state == "completed":
                return "completed"
        elif self.members and not open_bars:
            if self.size is not None and self.members >= self.size:
                return "completed"
            if self.size is None and now - self.updated_at >= gap:
                return "completed"
        if open_bars and (not self.active or now - self.advanced_at > stall_after):
            return "stalled"
        if self.head_state == "stale" and not open_bars:
            return "stalled"
        return "running"

    def sample(self, now: float) -> None:
        fraction = self.fraction()
        if fraction is None:
            return
        history = self.history
        if history:
            spacing = max(_SAMPLE_SPACING, (history[-2] - history[0]) / (_HISTORY_POINTS // 2))
            if now - history[-2] < spacing:
                return
        history = (*history, now, fraction)
        if len(history) > 2 * _HISTORY_POINTS:
            kept = history[:-2]
            history = (*[v for i in range(0, len(kept), 4) for v in kept[i : i + 2]], now, fraction)
        self.history = history

    def as_job(self) -> Job:
        fraction = self.fraction()
        eta: float | None = None
        if fraction is not None and self.state == "running":
            slope = fit_slope(self.history[-2 * _TREND_POINTS :])
            if slope and slope > 0:
                eta = (1.0 - fraction) / slope
                eta = eta if math.isfinite(eta) else None
        # The unit the active bars share (none active, or units that differ: no rate).
        unit = next(iter(self.units)) if len(self.units) == 1 else None
        return Job(
            id=self.key,
            job=self.name,
            run=self.number,
            state=self.state,
            tasks={
                "active": self.active,
                "stale": self.stale,
                "completed": self.completed,
                "failed": self.failed,
            },
            n=self.n,
            total=None if self.no_total else self.total,
            fraction=None if fraction is None else round(fraction, 6),  # float noise off
            rate=readable(self.rate) if unit is not None else None,
            eta=eta,
            unit=unit,
            size=self.size,
            head=self.head,
            head_state=self.head_state,
            started_at=self.started_at,
            updated_at=self.updated_at,
            finished_at=self.finished_at,
            advanced_at=self.advanced_at,
            error=self.error,
            error_task=self.error_task,
            error_host=self.error_host,
            history=self.history,
        )


class JobIndex:
    """Every job's runs, kept up to date from each task change (O(1) a change).

    The table calls :meth:`update` with a task's old and new state; cleanup calls
    :meth:`expire` to judge stalls as time passes and drop finished runs past retention.

    An active bar that stays active is the common change, and a busy bar sends many between two
    broadcasts: its run's sums are not moved at each one. The bar's state before the first is
    kept (:attr:`deferred`), and every reader (the hub's broadcast, ``/jobs``, ``/metrics``, and
    cleanup every second, which also samples the runs' histories) first *folds* each such bar
    once, from that state to the table's current one (:meth:`fold`). Any other change (a state,
    a run, a removal) folds its bar first and is counted at once, so failures and completions
    are judged with their batch. The table itself takes a deferred bar's later changes
    (:meth:`TaskTable.commit`), sparing a call an event.
    What is read is what summing every change would give (a property test holds the two equal),
    but for ``updated_at`` when one bar's events come from servers whose clocks disagree (a fold
    takes the bar's latest update, not the latest of its updates), and a stall shorter than the
    time between two folds (a second, unless viewers read sooner), which goes unjudged. Measured:
    1,000 bars at 120 changes a second each cost 1 µs an event summed one by one, ~0.1 folded.
    """

    def __init__(
        self,
        *,
        stall_after: float = 300.0,
        gap: float = 0.0,
        retention: float = 7 * 86400.0,
        max_jobs: int = 1000,
    ) -> None:
        self.stall_after = stall_after
        #: Seconds a run without a head or a size waits, every bar ended, for another.
        self.gap = gap
        self.retention = retention
        self.max_jobs = max_jobs
        #: The latest run of each job name.
        self._latest: dict[str, _Run] = {}
        #: Every run still listed, by key (``name#run``), oldest first.
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        #: The run each task counts in (or heads). An OrderedDict for the garbage collector's
        #: sake: the server freezes what exists at startup (app.keep_out_of_collections), and
        #: an empty dict is not tracked then, only once its first run goes in, after which
        #: every full collection walked it (7.45 ms with a million bars in ten running jobs;
        #: 0.40 ms frozen). An OrderedDict is tracked from birth, so frozen with the rest.
        self._member: OrderedDict[str, _Run] = OrderedDict()
        #: Runs restored from their records, per job name, in order of their start.
        self._kept: dict[str, list[_Run]] = {}
        #: Runs that changed since the hub last asked; and runs dropped.
        self._changed: set[str] = set()
        self._dropped: set[str] = set()
        #: Runs changed since the last settle().
        self._touched: set[_Run] = set()
        self._serial = 0
        #: Called with a run's previous state and the run, whenever its state changes.
        self._watchers: list[Callable[[str | None, Job], None]] = []
        #: Active bars whose changes are not summed yet: the state their run counts them in,
        #: and the run. Shared with the table, which notes their later changes itself: the
        #: same dict object for the index's life.
        self.deferred: dict[str, tuple[Task, _Run]] = {}
        #: The table's tasks, the current state of each pending bar (see :meth:`attach`).
        self._tasks: Mapping[str, Task] = {}

    def attach(self, tasks: Mapping[str, Task]) -> None:
        """Read pending bars' current states from ``tasks`` (the table's own dict)."""
        self._tasks = tasks

    def __len__(self) -> int:
        return len(self._runs)

    def emptied(self) -> JobIndex:
        """A new, empty index with the same settings (a replica starting over)."""
        fresh = JobIndex(
            stall_after=self.stall_after,
            gap=self.gap,
            retention=self.retention,
            max_jobs=self.max_jobs,
        )
        fresh._watchers = self._watchers
        return fresh

    def get(self, key: str) -> Job | None:
        self._catch_up()
        run = self._runs.get(key)
        return None if run is None else run.as_job()

    def latest(self, name: str) -> Job | None:
        self._catch_up()
        run = self._latest.get(name)
        return None if run is None or run.key not in self._runs else run.as_job()

    def _ordered(self) -> list[_Run]:
        """Every run still listed, most recently updated first."""
        self._catch_up()
        return sorted(
            self._runs.values(), key=lambda run: (run.updated_at, run.serial), reverse=True
        )

    def jobs(self) -> Iterator[Job]:
        """Every run still listed, most recently updated first."""
        for run in self._ordered():
            yield run.as_job()

    def overview(self, finished: int) -> list[Job]:
        """What a new viewer is shown: every unfinished run, and the ``finished`` most recently
        updated finished ones. Only those are made into jobs: a day of one-off jobs leaves
        thousands of finished runs listed, and every viewer that arrives or catches up asks."""
        shown = []
        for run in self._ordered():
            if run.finished_at is None:
                shown.append(run.as_job())
            elif finished > 0:
                shown.append(run.as_job())
                finished -= 1
        return shown

    def members(self, key: str) -> list[str]:
        """The ids of the stored tasks that count in (or head) run ``key``."""
        run = self._runs.get(key)
        return [] if run is None else list(run.ids)

    def watch(self, watcher: Callable[[str | None, Job], None]) -> None:
        """Call ``watcher(previous state, run)`` whenever a run changes state (alerts)."""
        self._watchers.append(watcher)

    def restore(self, job: Job) -> None:
        """List a finished run known from its record (Redis keeps one per finished run, for
        the run's retention). Restored before the tasks are loaded, it keeps its number and
        sums: a task that belonged to it (created while it ran) joins it as a member only,
        and a later one starts the next run, as it did live."""
        if job.id in self._runs or job.finished_at is None:
            return
        self._serial += 1
        run = _Run(job.job, job.run, job.started_at, self._serial)
        run.kept = True
        run.state, run.size, run.head, run.head_state = (
            job.state,
            job.size,
            job.head,
            job.head_state,
        )
        run.active, run.stale = job.tasks["active"], job.tasks["stale"]
        run.completed, run.failed = job.tasks["completed"], job.tasks["failed"]
        run.n = job.n
        run.total = job.total if job.total is not None else 0.0
        run.no_total = 0 if job.total is not None else 1
        bars = max(run.members, job.size or 0)
        run.fractions = (job.fraction or 0.0) * bars
        run.rate = job.rate or 0.0
        run.updated_at, run.finished_at, run.advanced_at = (
            job.updated_at,
            job.finished_at,
            job.advanced_at,
        )
        run.error, run.error_task, run.error_host = job.error, job.error_task, job.error_host
        run.history = job.history
        self._runs[run.key] = run
        insort(self._kept.setdefault(run.name, []), run, key=_started)
        latest = self._latest.get(run.name)
        if latest is None or latest.number < run.number:
            self._latest[run.name] = run
        self._changed.add(run.key)
        self._trim()

    def finished(self) -> list[Job]:
        """Every finished run still listed."""
        self._catch_up()
        return [run.as_job() for run in self._runs.values() if run.finished_at is not None]

    def _catch_up(self) -> None:
        """Before a read: fold the pending bars, and sample and judge the runs they touch."""
        if self.deferred:
            self.fold()
            self.settle()

    def fold(self) -> None:
        """Sum every pending bar's changes, from the state its run counts to its current one
        (the runs they touch are sampled and judged at the next :meth:`settle`)."""
        pending, tasks = list(self.deferred.items()), self._tasks
        self.deferred.clear()  # the same dict: the table holds it (TaskTable.commit)
        for task_id, (counted, _) in pending:
            run = self._member.get(task_id)
            current = tasks.get(task_id)
            if run is not None and current is not None:
                self._count_change(run, counted, current, current.updated_at, folded=True)

    def settle(self) -> None:
        """After a batch of changes: sample each changed run's fraction and judge its state
        once, on the whole batch (not halfway through it). Pending bars are folded first when
        a run is to be sampled, so that no sample is taken on half-folded sums."""
        if self.deferred and self._touched:
            self.fold()
        for run in self._touched:
            if run.key in self._runs:
                run.sample(run.updated_at)
                self._judge(run, run.updated_at)
                self._changed.add(run.key)
        self._touched.clear()

    def forget_changes(self) -> None:
        """Nobody is told of the changes so far (no viewer: one arriving gets every run)."""
        self._changed.clear()
        self._dropped.clear()

    def take_changes(self) -> tuple[set[str], set[str]]:
        """Keys of the runs that changed, and of those dropped, since the last call."""
        self._catch_up()
        changed, dropped = self._changed, self._dropped
        self._changed, self._dropped = set(), set()
        return changed - dropped, dropped

    # Kept up to date by the table ---------------------------------------------------------

    def update(self, old: Task | None, new: Task | None, now: float) -> None:
        """A task changed (``old`` → ``new``), appeared (``old`` None) or went (``new`` None)."""
        if new is None:
            assert old is not None
            self.forget((old,))
            return
        # Runs for every event of a task in a job: the common case (an active bar of a run
        # staying active) is one or two dict lookups, its sums moved when a reader folds.
        if old is not None:
            pending = self.deferred
            task_id = old.task_id
            if (
                new.state == "active"
                and old.state == "active"
                and "job" in new.meta  # a bar leaving its job is counted now, as it leaves
            ):
                # (A deferred bar's later changes without job_size: TaskTable.commit's.)
                run = self._member.get(task_id)
                # Only a busy bar (its last change came within DEFER_WITHIN: more will come
                # before the next fold; a bar that sends a state a second gains nothing), and
                # only while its run is running (a bar moving a stalled run on is judged now).
                if (
                    run is not None
                    and now - old.updated_at < DEFER_WITHIN
                    and run.state == "running"
                    and task_id != run.name
                    and new.meta["job"] == run.name  # (not moving to another job)
                ):
                    if "job_size" in new.meta:  # an announcement counts even if withdrawn later
                        run.announce(new.meta["job_size"])
                    pending.setdefault(task_id, (old, run))
                    # When it moved, now (a stall alert is named by it, on every server alike).
                    if new.n != old.n and now > run.advanced_at:
                        run.advanced_at = now
                    return
            if pending:
                self._fold_one(old)
        task_id = new.task_id
        run = self._member.get(task_id)
        if run is not None:
            relabelled = new.meta.get("job") != run.name  # into another job, or out of all
            if run.finished_at is None:
                if relabelled:  # an unfinished run gives it up whole
                    self._leave(run, task_id, old)
                    run = old = None
            elif relabelled or (old is not None and _reruns(old, new)):
                self._release(run, task_id)  # a finished run keeps it as it last was
                run = old = None
        if run is None:
            name = new.meta.get("job")
            if name is None or not isinstance(name, str):
                return
            # A task joins when it appears (live, its creation is now), or when it takes the
            # job's label. A task loaded from Redis after a restart joins as it did live, by
            # its creation: by its last change, bars one after another each made a run. One
            # whose last change, else its creation, falls in a run known from its record was
            # that run's (a task that took the label after its creation, a bar that changed
            # after the record was last written).
            at = new.created_at if old is None else now
            kept = self._kept_run(name, new.updated_at if old is None else now)
            if kept is None and old is None:
                kept = self._kept_run(name, at)
            if kept is not None:  # counted in the run's record already
                self._member[task_id] = kept
                kept.ids[task_id] = None
                return
            run = self._run_for(name, at)
            if at < run.started_at:  # (loaded out of order: by last change)
                run.started_at = at
            self._member[task_id] = run
            run.ids[task_id] = None
            old = None  # never counted in this run
        elif old is not None and old.task_id == run.name and _is_head(old, run.name):
            old = None  # the head's old state was never summed
        if task_id == run.name and _is_head(new, run.name):
            if old is not None:  # a counted bar becoming the head: heads are not summed
                run.count(old, -1)
            run.head, run.head_state = task_id, new.state
            if new.state == "failed":
                run.blame(new)
            if now > run.updated_at:
                run.updated_at = now
            self._touched.add(run)
        else:
            if run.head == task_id:  # a head that lost its role is a bar like the others
                run.head = run.head_state = None
            self._count_change(run, old, new, now)

    def _leave(self, run: _Run, task_id: str, counted: Task | None) -> None:
        """A bar stops being one of ``run``'s (it names another job now): its contribution
        (``counted``, its state as the run counts it) is taken back. A run that held only it,
        and no head, goes, as if it had never been."""
        self._release(run, task_id)
        if run.head == task_id:  # no longer its head (never summed)
            run.head = run.head_state = None
        elif counted is not None:
            run.count(counted, -1)
        if not run.members and run.head is None and run.key in self._runs:
            self._drop(run.key)
            return
        self._touched.add(run)

    def _release(self, run: _Run, task_id: str) -> None:
        """The task is no longer one of ``run``'s members (what it counts is another matter)."""
        del self._member[task_id]
        run.ids.pop(task_id, None)

    def forget(self, tasks: Iterable[Task], *, cut_short: bool = True) -> None:
        """Tasks removed from the board (evicted, deleted, expired): each still counts in its
        run as it last was, and is no longer its member; but one removed while open (deleted,
        or abandoned by cleanup) counts as failed. It will never close, and a run counting it
        open stayed stalled for good, never finished, so never trimmed (``max_jobs``) or
        dropped: deleting open bars of unique jobs kept 100k runs, 200 MB, and a 30 MB job
        overview for every new viewer. Not with ``cut_short`` false: a Redis replica that
        reloads removes what it missed the removal of, as it last saw it (maybe still open,
        though it completed meanwhile)."""
        pending, member = self.deferred, self._member
        for task in tasks:
            if pending:
                self._fold_one(task)
            gone = member.pop(task.task_id, None)
            if gone is None:
                continue
            gone.ids.pop(task.task_id, None)
            # (A finished run ended as it did: its head completed it, say, with a bar open; but
            # a failed one whose bars go on counts them as an unfinished one does.)
            if (
                cut_short
                and task.state in ("active", "stale")
                and (gone.finished_at is None or gone.state == "failed")
            ):
                self._cut_short(gone, task)

    def _cut_short(self, run: _Run, task: Task) -> None:
        error = f"{task.task_id} was removed before it ended"
        if run.head == task.task_id:
            run.head_state = "failed"
            if run.error is None:
                run.error, run.error_task = error, task.task_id
        else:
            failed = msgspec.structs.replace(task, state="failed", error=task.error or error)
            self._count_change(run, task, failed, task.updated_at)
        self._touched.add(run)

    def _fold_one(self, task: Task) -> None:
        """A bar whose changes were deferred changes again, or goes: its run counts an older
        state of it, which is folded first (``task`` is its latest)."""
        counted = self.deferred.pop(task.task_id, None)
        if counted is not None:
            run = self._member.get(task.task_id)
            if run is not None:
                self._count_change(run, counted[0], task, task.updated_at, folded=True)

    def _count_change(
        self,
        run: _Run,
        old: Task | None,
        new: Task,
        now: float,
        *,
        folded: bool = False,
    ) -> None:
        """Move a counted bar of ``run`` from ``old`` (None: not counted yet) to ``new``;
        ``folded``: the changes between were deferred (their moves already noted)."""
        if old is None:
            run.count(new, 1)
        else:
            run.move(old, new)
        if (
            old is None
            or (old.n != new.n and not folded)
            or (new.state != old.state and new.state != "stale")
        ) and now > run.advanced_at:
            run.advanced_at = now
        if "job_size" in new.meta:
            run.announce(new.meta["job_size"])
        if new.state == "failed":
            run.blame(new)
        if now > run.updated_at:
            run.updated_at = now
        self._touched.add(run)

    def _kept_run(self, name: str, at: float) -> _Run | None:
        """The run restored from its record that a task last changed at ``at`` belonged to:
        the one that was under way then (from its start to its last change, which goes on
        after it finished while bars it counts still run)."""
        kept = self._kept.get(name)
        if not kept:
            return None
        index = bisect_right(kept, at, key=_started) - 1
        if index < 0:
            return None
        run = kept[index]
        return run if at <= run.updated_at else None

    def _run_for(self, name: str, now: float) -> _Run:
        """The run a new task of ``name`` joins: the latest, or a new one if that finished.

        ``now`` is the task's own time: a run whose gap had passed by then (see ``judge``) is
        completed here, whether or not cleanup has got to it, so that every server sharing a
        Redis store puts the task in the same run, whenever its own cleanup runs.
        """
        run = self._latest.get(name)
        if (
            run is not None
            and run.finished_at is None
            and run.key in self._runs
            and now > run.updated_at  # (not within one batch: settle judges that)
            and run.judge(now, self.stall_after, self.gap) == "completed"
        ):
            self._judge(run, now)
        if (
            run is None
            or run.key not in self._runs
            or (run.finished_at is not None and not run.still_going(now, self.gap))
        ):
            self._serial += 1
            number = 1 if run is None else run.number + 1
            # Past the numbers still listed: the latest run may have been dropped while an
            # older one of the name is listed (a failed run that stopped failing, runs restored
            # from Redis), and a new run under its key would replace it, members and all.
            while f"{name}#{number}" in self._runs:
                number += 1
            run = _Run(name, number, now, self._serial)
            self._latest[name] = run
            self._runs[run.key] = run
            self._dropped.discard(run.key)  # a key used again (its run dropped, forgotten)
            self._trim()
        return run

    def _judge(self, run: _Run, now: float) -> None:
        state = run.judge(now, self.stall_after, self.gap)
        before = run.state
        if run.finished_at is not None and state != "failed":
            # Finished for good: a bar it still counts open (the head completed the run with
            # that bar running, then the bar was deleted) would stall it for ever.
            state = before
        if state != before:
            run.state = state
            self._changed.add(run.key)
        if state in ("completed", "failed") and run.finished_at is None:
            # When its last change came: a run judged complete after its gap (by cleanup)
            # ended with its last bar, not when the gap ran out.
            run.finished_at = min(now, run.updated_at)
        if state != before and self._watchers:
            job = run.as_job()
            for watcher in self._watchers:
                watcher(before, job)

    def expire(self, now: float) -> None:
        """Judge stalls as time passes, and drop finished runs past ``retention``."""
        self._catch_up()
        for key, run in list(self._runs.items()):
            if run.finished_at is not None:
                if now - run.finished_at > self.retention:
                    self._drop(key)
            else:
                if not run.members and run.head is None and now - run.updated_at > self.retention:
                    self._drop(key)
                    continue
                self._judge(run, now)

    def _trim(self) -> None:
        """Keep at most ``max_jobs`` runs: the oldest finished ones go first."""
        excess = len(self._runs) - self.max_jobs
        if excess <= 0:
            return
        # Oldest first, stopping at the last one needed: a job whose every bar ends makes a new
        # run with its next bar, and listing all 1,000 runs here cost 0.85 ms a new run.
        finished = (key for key, run in self._runs.items() if run.finished_at is not None)
        for key in list(islice(finished, excess)):
            self._drop(key)

    def _drop(self, key: str) -> None:
        run = self._runs.pop(key)
        for task_id in run.ids:
            del self._member[task_id]
        if run.kept:
            kept = self._kept[run.name]
            kept.remove(run)
            if not kept:
                del self._kept[run.name]
        if self._latest.get(run.name) is run:
            del self._latest[run.name]
        self._dropped.add(key)


def _started(run: _Run) -> float:
    return run.started_at


def _reruns(old: Task, new: Task) -> bool:
    """The task starts a new run of itself (an event after it closed)."""
    closed = ("completed", "failed")
    return old.state in closed and (new.state not in closed or new.created_at != old.created_at)
