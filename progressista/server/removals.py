"""The table's recent removals: which ids went, at which revision, for viewers catching up.

A viewer that fell behind is told which tasks went since the revision it saw. Up to
``kept`` removals are remembered, in the order they happened; past them a viewer that old
starts over from a snapshot. Two lists (the ids, and their revisions) are read from a start
that moves as old removals are forgotten: the removals after a revision are found by bisection
and come out as one slice, whatever their number. An ``OrderedDict`` resized itself all at once
(12 ms as a clear of 100k passed 87k ids), and walking back a deque to a revision took 6 to 40
ms after that clear, all in one callback.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["Removals"]

#: Forgotten entries cut off the front of the lists at a time (each cut moves the rest).
_CUT = 4096


class Removals:
    """Recent removals, oldest first, an id as often as it was removed."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._ids: list[str] = []
        self._revs: list[int] = []
        #: Where the remembered removals start in the lists.
        self._start = 0
        #: Removals up to this revision may have been forgotten: a reader that has seen less
        #: than this cannot be told what it missed.
        self.horizon = 0

    def __len__(self) -> int:
        return len(self._ids) - self._start

    def add(self, task_id: str, rev: int) -> None:
        """``task_id`` was removed at revision ``rev``."""
        self.extend([task_id], rev)

    def extend(self, task_ids: list[str], first: int) -> None:
        """These ids were removed in this order, the first at revision ``first`` and each next
        one a revision later."""
        revs = self._revs
        numbered = range(first, first + len(task_ids))
        # Kept in order for the bisection: a removal numbered below one before it (none is, on
        # any path today) is filed at that one's revision, so readers may hear of it again.
        if revs and first < revs[-1]:
            floor = revs[-1]
            revs.extend(rev if rev > floor else floor for rev in numbered)
        else:
            revs.extend(numbered)
        self._ids.extend(task_ids)
        excess = len(revs) - self._start - self.kept
        if excess > 0:
            self._start += excess
            self.horizon = revs[self._start - 1]
            if self._start >= _CUT:
                del self._ids[: self._start]
                del revs[: self._start]
                self._start = 0

    def since(self, rev: int) -> list[str] | None:
        """The ids removed after revision ``rev``, oldest first (an id removed twice comes
        twice; one stored again since is still listed: the reader checks the table). None when
        removals that old have been forgotten."""
        if rev < self.horizon:
            return None
        return self._ids[bisect_right(self._revs, rev, lo=self._start) :]

    def forget(self, rev: int) -> None:
        """Removals up to ``rev`` may have been missed: forget them all."""
        self._ids.clear()
        self._revs.clear()
        self._start = 0
        self.horizon = rev
