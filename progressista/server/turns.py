"""Long work on the event loop takes turns: one slice of it per iteration of the loop.

Cleanup, the hub's flushes, snapshots and catch-ups, listings, deletes, ``/metrics`` and the page
each do their work in bounded slices (a few milliseconds) and yield between them. With
``asyncio.sleep(0)`` as the yield, every one of them that is ready runs a slice in the same
iteration of the loop, and a request arriving waits for all of them, twice (once for its bytes to
be read, once for its handler to run). During a stale storm next to a million tasks with five
viewers, that made cleanup's slice, the flush's piece and a viewer's slice add up to 28-32 ms of
waiting, where each slice alone held the loop 2-4 ms.

Through :func:`next_turn`, slices queue up instead, and the loop runs one of them per iteration,
in the order they asked: a request waits for one slice at a time. An iteration with nothing else
to do costs microseconds, so the work takes no longer when the loop is otherwise idle.
"""

from __future__ import annotations

import asyncio
from collections import deque
from weakref import WeakKeyDictionary

__all__ = ["next_turn"]


class _Turns:
    """One loop's queue of slices waiting for their turn. (It holds no reference to its loop:
    the loop is its key in a weak dictionary, which a value referring to it would keep alive.)"""

    __slots__ = ("_handing", "_waiting")

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        #: A hand-over is scheduled: it runs at the next iteration.
        self._handing = False

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        future = loop.create_future()
        self._waiting.append(future)
        if not self._handing:
            self._handing = True
            loop.call_soon(self._hand_over, loop)
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the longest waiting slice (it runs at the next iteration), and come back at the
        next iteration for the one after it."""
        waiting = self._waiting
        while waiting:
            future = waiting.popleft()
            if not future.done():  # not cancelled meanwhile
                future.set_result(None)
                break
        if waiting:
            loop.call_soon(self._hand_over, loop)
        else:
            self._handing = False


_turns: WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = WeakKeyDictionary()


def next_turn() -> asyncio.Future[None]:
    """Await this between two slices of long work: it resolves when the slice's turn comes
    (the next slice of this loop's work to run, after those that asked before)."""
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns()
    return turns.wait(loop)
