"""Each state's task ids in the order they entered it, kept in chunks: no pause as one grows.

The table reads each state's ids oldest first (cleanup: what is due; eviction: the longest
closed) and newest first (a view). An ``OrderedDict`` per state did both, and resized itself
all at once as it grew: when a hundred thousand tasks went stale together, the stale section
passing 87k ids held the event loop 15 ms (an ``OrderedDict`` rebuilds its node table with the
dict; at a million completed tasks it would be far more). Here a section is a run of small
dicts of at most :data:`CHUNK` ids, numbered in the order they were opened, and one dict shared
by every section says which chunk holds each id: a task that changes state only changes its
entry there, so that dict grows with the table and never with a storm.

Dicts never shrink as ids leave: a chunk that falls below a sixteenth of :data:`CHUNK` is copied
afresh, so that a few long-lived ids (a bar active for days among thousands of short ones)
cannot keep many chunks' worth of memory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

__all__ = ["CHUNK", "Sections"]

#: Ids per chunk: a chunk's own resizes cost microseconds.
CHUNK = 4096
#: Below this many ids, a chunk whose memory is still that of a full one is copied afresh.
_SPARSE = CHUNK // 16
_SPARSE_BYTES = sys.getsizeof(dict.fromkeys(range(_SPARSE)))


class Sections:
    """Per state, the ids in the order they entered it (each id in exactly one state)."""

    def __init__(self, states: Iterable[str]) -> None:
        self._chunks: dict[int, dict[str, None]] = {}
        #: The chunk each id is in, for every id of every state.
        self._chunk_of: dict[str, int] = {}
        #: Per state, the numbers of its chunks, oldest first.
        self._numbers: dict[str, dict[int, None]] = {state: {} for state in states}
        self._sizes: dict[str, int] = {state: 0 for state in self._numbers}
        self._serial = 0
        #: Per state, its last chunk, which takes its new ids, with the chunk's number.
        self._open: dict[str, tuple[int, dict[str, None]]] = {}
        for state in self._numbers:
            self._open_chunk(state)

    def __len__(self) -> int:
        return len(self._chunk_of)

    def size(self, state: str) -> int:
        return self._sizes[state]

    def counts(self) -> dict[str, int]:
        return dict(self._sizes)

    def add(self, state: str, task_id: str) -> None:
        """A new id enters ``state``, as its newest."""
        self._put(state, task_id)

    def move(self, task_id: str, old: str, new: str) -> None:
        """An id leaves ``old`` and enters ``new``, as its newest."""
        self._take(old, task_id)
        self._put(new, task_id)

    def discard(self, task_id: str, state: str) -> None:
        """An id leaves for good."""
        self.discard_many(((task_id, state),))

    def discard_many(self, leaving: Iterable[tuple[str, str]]) -> None:
        """Ids leave for good, each from the state given with it: as :meth:`discard` one by
        one, in one loop (evicting a hundred tasks for room, clearing thousands)."""
        chunk_of, chunks, sizes = self._chunk_of, self._chunks, self._sizes
        touched: dict[int, str] = {}
        for task_id, state in leaving:
            number = chunk_of.pop(task_id)
            del chunks[number][task_id]
            sizes[state] -= 1
            touched[number] = state
        for number, state in touched.items():
            self._tidy(state, number)

    def oldest(self, state: str) -> Iterator[str]:
        """The ids of ``state``, oldest first (nothing may change while this is read)."""
        chunks = self._chunks
        for number in self._numbers[state]:
            yield from chunks[number]

    def newest(self, state: str) -> Iterator[str]:
        """The ids of ``state``, newest first (nothing may change while this is read)."""
        chunks = self._chunks
        for number in reversed(self._numbers[state]):
            yield from reversed(chunks[number])

    def _open_chunk(self, state: str) -> tuple[int, dict[str, None]]:
        self._serial += 1
        opened = self._open[state] = (self._serial, {})
        self._chunks[self._serial] = opened[1]
        self._numbers[state][self._serial] = None
        return opened

    def _put(self, state: str, task_id: str) -> None:
        number, chunk = self._open[state]
        if len(chunk) >= CHUNK:
            number, chunk = self._open_chunk(state)
        chunk[task_id] = None
        self._chunk_of[task_id] = number
        self._sizes[state] += 1

    def _take(self, state: str, task_id: str) -> None:
        number = self._chunk_of[task_id]
        del self._chunks[number][task_id]
        self._sizes[state] -= 1
        self._tidy(state, number)

    def _tidy(self, state: str, number: int) -> None:
        """After ids left chunk ``number`` of ``state``: drop it if empty, shrink it if sparse
        (the open chunk stays as it is: it takes the state's next ids)."""
        if number == self._open[state][0]:
            return
        chunk = self._chunks[number]
        if not chunk:
            del self._chunks[number]
            del self._numbers[state][number]
        elif len(chunk) < _SPARSE and sys.getsizeof(chunk) > _SPARSE_BYTES:
            self._chunks[number] = dict(chunk)
