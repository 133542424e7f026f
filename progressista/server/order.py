"""Task ids in the order they were first stored, readable a piece at a time while they change.

A snapshot for a new viewer, ``GET /tasks`` and its ``after=`` cursor all walk the tasks in
that order, with the event loop free between pieces. A dict cannot be walked across awaits
(it must not change meanwhile), and copying a million ids first costs tens of milliseconds
and 8 MB per reader. So the ids are kept in chunks of at most :data:`CHUNK`, each a small dict
(which keeps order and deletes in O(1)): a reader copies one chunk when it gets there, and
finds where ``after`` is through the chunk that holds it. New ids go into the last chunk; a
chunk that empties goes away. About 90 bytes a task.

A reader sees every id that was stored when it began and still is when it gets there; ids
stored later may or may not be seen (a snapshot's catch-up sends those).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["CHUNK", "IdOrder", "OrderCursor"]

#: Ids per chunk: copying one costs about 20 µs.
CHUNK = 4096


class IdOrder:
    """The ids, in chunks numbered in the order they were started."""

    def __init__(self) -> None:
        self._chunks: dict[int, dict[str, None]] = {}
        #: The number of the chunk each id is in.
        self._chunk_of: dict[str, int] = {}
        #: The chunk new ids go into, and how many have gone into it.
        self._last = 0
        self._filled = CHUNK

    def __len__(self) -> int:
        return len(self._chunk_of)

    def add(self, task_id: str) -> None:
        """Put a newly stored id at the end."""
        if self._filled >= CHUNK:
            self._last += 1
            self._chunks[self._last] = {}
            self._filled = 0
        self._chunks[self._last][task_id] = None
        self._chunk_of[task_id] = self._last
        self._filled += 1

    def remove(self, task_id: str) -> None:
        self.remove_many((task_id,))

    def remove_many(self, task_ids: Iterable[str]) -> None:
        """Take these ids out (those not here are passed over), in one loop."""
        chunk_of, chunks = self._chunk_of, self._chunks
        touched: set[int] = set()
        for task_id in task_ids:
            number = chunk_of.pop(task_id, None)
            if number is not None:
                del chunks[number][task_id]
                touched.add(number)
        for number in touched:
            if not chunks[number] and number != self._last:
                del chunks[number]

    def cursor(self, after: str | None = None) -> OrderCursor:
        """A reader from the first id, or from just after ``after``.

        An ``after`` no longer stored starts from the beginning: paging then repeats ids but
        never skips one.
        """
        number = None if after is None else self._chunk_of.get(after)
        if after is None or number is None:
            return OrderCursor(self, 0, [])
        ids = list(self._chunks[number])
        return OrderCursor(self, number, ids[ids.index(after) + 1 :])

    def __iter__(self) -> Iterator[str]:
        """Every id (for tests and small tables: it copies one chunk at a time)."""
        cursor = self.cursor()
        while not cursor.done:
            yield from cursor.take(CHUNK)

    def _chunk_after(self, number: int) -> tuple[int, list[str]] | None:
        """The first chunk numbered above ``number`` (copied), or None."""
        chunks = self._chunks
        for following in range(number + 1, self._last + 1):
            chunk = chunks.get(following)
            if chunk:
                return following, list(chunk)
        return None


class OrderCursor:
    """Where one reader is: the chunk it copied last, and what of it is still to hand out."""

    def __init__(self, order: IdOrder, number: int, pending: list[str]) -> None:
        self._order = order
        self._number = number
        self._pending = pending
        self._start = 0

    @property
    def done(self) -> bool:
        """Nothing left to read (yet: ids stored later go after it)."""
        if self._start < len(self._pending):
            return False
        following = self._order._chunk_after(self._number)
        if following is None:
            return True
        self._number, self._pending = following
        self._start = 0
        return False

    def take(self, count: int) -> list[str]:
        """Up to ``count`` ids, continuing where the last call stopped."""
        taken: list[str] = []
        while len(taken) < count and not self.done:
            end = self._start + count - len(taken)
            taken.extend(self._pending[self._start : end])
            self._start = min(end, len(self._pending))
        return taken
