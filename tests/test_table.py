"""What a viewer that fell behind is told (``TaskTable.changed_since`` and ``removed_since``):
changed and removed ids since its revision, read from the table's change order and its recent
removals."""

from __future__ import annotations

import random
from collections.abc import Collection

import msgspec
import pytest

from progressista.server.event import Label
from progressista.server.removals import Removals
from progressista.server.table import TaskTable
from progressista.server.task import Task


def stored(table: TaskTable, task_id: str) -> int:
    """Store (or update) a task at the next revision; returns that revision."""
    rev = table.rev + 1
    table.commit(Task(task_id=task_id, n=rev, updated_at=float(rev), rev=rev), 0)
    return rev


def removed(table: TaskTable, task_id: str) -> int:
    rev = table.rev + 1
    assert table.remove(task_id, rev)
    return rev


def test_changes_and_removals_since_a_revision_newest_first() -> None:
    table = TaskTable()
    for task_id in "abcd":
        stored(table, task_id)
    seen = table.rev
    stored(table, "b")
    removed(table, "c")
    stored(table, "e")
    assert (table.changed_since(seen, 100), table.removed_since(seen)) == (["e", "b"], ["c"])
    assert (table.changed_since(table.rev, 100), table.removed_since(table.rev)) == ([], [])


def test_an_id_stored_again_after_its_removal_is_among_the_changed() -> None:
    """Removals are listed as they happened, an id as often as it went; the reader checks the
    table (an id back is among the changed, and goes whole)."""
    table = TaskTable()
    stored(table, "a")
    stored(table, "b")
    seen = table.rev
    removed(table, "a")
    stored(table, "a")  # back, under the same id
    removed(table, "b")
    stored(table, "b")
    removed(table, "b")  # and gone again
    assert table.changed_since(seen, 100) == ["a"]
    assert table.removed_since(seen) == ["a", "b", "b"]
    assert table.removed_since(table.rev - 1) == ["b"]
    assert table.changed_since(table.rev - 1, 100) == []


def test_forgotten_removals_or_more_changes_than_the_limit_say_so() -> None:
    table = TaskTable(removals_kept=3)
    for number in range(10):
        stored(table, f"t{number}")
    seen = table.rev
    for number in range(5):
        removed(table, f"t{number}")
    assert table.removed_since(seen) is None  # two of the five removals are forgotten
    recent = table.rev - 3
    assert table.removed_since(recent) == ["t2", "t3", "t4"]
    for number in range(5, 10):
        stored(table, f"t{number}")
    assert table.changed_since(recent, 5) == ["t9", "t8", "t7", "t6", "t5"]
    assert table.changed_since(recent, 4) is None  # more than the limit


def test_removals_are_remembered_in_order_as_old_ones_are_cut_away() -> None:
    """The lists' forgotten front is cut off thousands at a time; what is told never moves."""
    removals = Removals(kept=1000)
    for rev in range(1, 20_001):
        removals.add(f"t{rev}", rev)
        if rev % 997 == 0:
            assert len(removals) == min(rev, 1000)
            assert removals.since(rev - 10) == [f"t{r}" for r in range(rev - 9, rev + 1)]
            if rev > 1000:  # the 1,000 last are told; a revision before them is forgotten
                assert len(removals.since(rev - 1000) or []) == 1000
                assert removals.since(rev - 1001) is None
    assert removals.horizon == 19_000
    assert removals.since(19_000) == [f"t{r}" for r in range(19_001, 20_001)]
    assert removals.since(18_999) is None
    removals.forget(25_000)
    assert (len(removals), removals.since(25_000), removals.since(24_999)) == (0, [], None)


async def test_a_window_never_shows_a_task_removed_since_it_last_followed() -> None:
    """A filtered window follows the table's changes at each flush; a flush that yields
    between slices can find tasks gone that the window still holds (a clear meanwhile). Those
    made every flush fail with a KeyError, and the window's /view answer 500, for good."""
    import msgspec

    from progressista.server import feed
    from progressista.server.view import Query, Window

    table = TaskTable()
    for number in range(5):
        rev = table.rev + 1
        task = Task(task_id=f"t{number}", n=1, meta={"job": "x"}, updated_at=float(rev), rev=rev)
        table.commit(task, 0)
    window = Window(table, Query("job=x"), 3)
    window.scan(table.order.cursor().take(100))
    window.finish()
    shown = window.newest()
    assert shown["active"] == ["t4", "t3", "t2"]
    removed(table, "t4")  # not followed yet
    assert window.newest()["active"] == ["t3", "t2", "t1"]
    view = msgspec.json.decode(feed.view(table, shown, window.current_counts(), 0.0))
    assert (view["sections"]["active"], sorted(view["tasks"])) == (["t3", "t2"], ["t2", "t3"])
    window.follow(["t4"])
    assert window.current_counts()["active"] == 4


def _board(seed: int, gone: Collection[str] = ()) -> tuple[TaskTable, list[str]]:
    """A table of 400 tasks in every state, some in jobs, some leaving when they end; as if
    those ``gone`` had never been stored."""
    rng = random.Random(seed)
    table = TaskTable(track_age=True, removals_kept=150)
    table.watch(lambda: None)
    ids = [f"t{number}" for number in range(400)]
    for rev, task_id in enumerate(rng.sample(ids, len(ids)), start=1):
        state = rng.choice(("active", "active", "stale", "completed", "failed"))
        meta: dict[str, Label] = {}
        if rng.random() < 0.5:
            meta["job"] = rng.choice("xyz")
        if rng.random() < 0.2:
            meta["leave"] = False
        closed = float(rev) if state in ("completed", "failed") else None
        task = Task(task_id=task_id, state=state, n=rev, meta=meta, rev=rev)
        task.updated_at, task.created_at, task.closed_at = float(rev), float(rev), closed
        if task_id not in gone:
            table.commit(task, 0)
    table.publish()
    table.take_changes()
    return table, ids


def _indexes(table: TaskTable) -> object:
    """The tasks and every index over them, as lists in their order."""
    sections = {state: list(table.sections.oldest(state)) for state in table.counts()}
    queues = [
        list(queue or ())
        for queue in (
            table._active_by_update,
            table._by_change,
            table._by_created,
            table._transient,
        )
    ]
    return sorted(table.tasks), list(table.order), sections, table.counts(), queues


def _everything(table: TaskTable) -> object:
    jobs = msgspec.json.encode(table.jobs.overview(100))
    return (
        _indexes(table),
        table.removed_since(table._removed.horizon),
        table._removed.horizon,
        table.take_changes(),
        table.rev,
        jobs,
    )


@pytest.mark.parametrize("seed", range(8))
def test_removing_many_at_once_leaves_what_removing_them_one_by_one_does(seed: int) -> None:
    rng = random.Random(seed)
    at_once, ids = _board(seed)
    one_by_one, _ = _board(seed)
    for _ in range(6):
        # Some stored twice over, some never stored: each takes one revision, or none.
        chosen = rng.sample(ids, 60) + rng.sample(ids, 5) + ["never", "stored"]
        rng.shuffle(chosen)
        removed_ids = at_once.remove_many(chosen, at_once.rev)
        expected = [task_id for task_id in chosen if one_by_one.remove(task_id, one_by_one.rev + 1)]
        assert removed_ids == expected
        assert _everything(at_once) == _everything(one_by_one)
        ids = [task_id for task_id in ids if task_id not in removed_ids]
    never_stored, _ = _board(seed, gone=set(_board(seed)[1]) - set(ids))
    assert _indexes(at_once) == _indexes(never_stored)


def test_removals_told_many_at_a_time_read_as_a_plain_list_of_them_would() -> None:
    rng = random.Random(7)
    removals, told = Removals(kept=500), Removals(kept=500)
    everything: list[tuple[str, int]] = []  # (id, revision as filed), oldest first
    rev = 0
    while rev < 12_000:
        batch = [f"t{rng.randrange(900)}" for _ in range(rng.randrange(1, 300))]
        first = rev + 1 if rng.random() < 0.9 else max(1, rev - 3)  # a few numbered too low
        removals.extend(batch, first)
        for number, task_id in enumerate(batch):
            told.add(task_id, first + number)
            # Filed no lower than the one before, so that the revisions stay in order.
            everything.append((task_id, max(first + number, rev)))
        rev = everything[-1][1]
        kept, forgotten = everything[-500:], everything[:-500]
        horizon = forgotten[-1][1] if forgotten else 0
        assert removals.horizon == told.horizon == horizon
        for since in (horizon - 1, horizon, rev - 400, rev - 10, rev):
            expected = None if since < horizon else [i for i, r in kept if r > since]
            assert removals.since(since) == told.since(since) == expected
