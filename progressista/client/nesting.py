"""Which bar a new bar is nested in, so that the server can fold inner bars under outer ones.

tqdm draws nested loops as stacked bars; the server shows a bar's ``meta.parent`` under that
parent. A bar opened while another bar is open *in the same context* is nested in it when the
other is being looped over (``for epoch in tqdm(...)``, then a bar per epoch), or when the new
bar is ``leave=False``, tqdm's idiom for an inner bar. Two bars merely open side by side, as a
program keeps a download and an upload bar, are not nested.

"Context" is a :mod:`contextvars` context: a thread's, or an asyncio task's. Tasks started
inside an outer loop inherit it (a crawler's pages nest under its site); sibling tasks do not
see each other's bars.
"""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from typing import Protocol

__all__ = ["Nestable", "looping", "opened", "parent_of"]


class Nestable(Protocol):
    """What nesting needs to know of a bar."""

    @property
    def remote_task_id(self) -> str | None: ...

    @property
    def remote_is_open(self) -> bool: ...

    @property
    def remote_is_looping(self) -> bool: ...


#: The remote bars opened in this context, oldest first; closed and collected ones are pruned
#: whenever a bar is added, so a program that opens bars one after another keeps one entry.
_OPEN: ContextVar[tuple[weakref.ref[Nestable], ...]] = ContextVar("progressista_open_bars")


def _alive() -> list[Nestable]:
    found = []
    for ref in _OPEN.get(()):
        bar = ref()
        if bar is not None and bar.remote_is_open:
            found.append(bar)
    return found


def parent_of(*, leave: bool) -> str | None:
    """The task id of the bar a bar opened now is nested in, if any (see the module's doc)."""
    for bar in reversed(_alive()):
        if not leave or bar.remote_is_looping:
            return bar.remote_task_id
    return None


def opened(bar: Nestable) -> None:
    """Note that ``bar`` is open in this context."""
    _OPEN.set((*(weakref.ref(each) for each in _alive()), weakref.ref(bar)))


def looping(bar: Nestable) -> None:
    """Note that ``bar`` is being looped over here: bars opened in the loop nest in it.

    A bar built in one context and looped over in another (handed to a worker thread) is
    added to the second as well.
    """
    if not any(ref() is bar for ref in _OPEN.get(())):
        opened(bar)
