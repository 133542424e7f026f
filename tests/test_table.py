"""What a viewer that fell behind is told (``TaskTable.changed_since`` and ``removed_since``):
changed and removed ids since its revision, read from the table's change order and its recent
removals."""

from __future__ import annotations

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


def test_an_id_stored_again_after_its_removal_is_changed_not_removed() -> None:
    table = TaskTable()
    stored(table, "a")
    stored(table, "b")
    seen = table.rev
    removed(table, "a")
    stored(table, "a")  # back, under the same id
    removed(table, "b")
    stored(table, "b")
    removed(table, "b")  # and gone again
    assert (table.changed_since(seen, 100), table.removed_since(seen)) == (["a"], ["b"])
    just_before = table.rev - 1  # saw b back: told only of its last removal
    assert table.removed_since(just_before) == ["b"]
    assert table.changed_since(just_before, 100) == []


def test_forgotten_removals_or_more_changes_than_the_limit_say_so() -> None:
    table = TaskTable(removals_kept=3)
    for number in range(10):
        stored(table, f"t{number}")
    seen = table.rev
    for number in range(5):
        removed(table, f"t{number}")
    assert table.removed_since(seen) is None  # two of the five removals are forgotten
    recent = table.rev - 3
    assert table.removed_since(recent) == ["t4", "t3", "t2"]
    for number in range(5, 10):
        stored(table, f"t{number}")
    assert table.changed_since(recent, 5) == ["t9", "t8", "t7", "t6", "t5"]
    assert table.changed_since(recent, 4) is None  # more than the limit
