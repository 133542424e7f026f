"""Which bar a new bar is nested in, so that the server can fold inner bars under outer ones.

tqdm draws nested loops as stacked bars; the server shows a bar's ``meta.parent`` under that
parent. A bar opened while another bar is open *in the same context* is nested in it when the
other is being looped over (``for epoch in tqdm(...)``, then a bar per epoch), or when the new
bar is ``leave=False``, tqdm's idiom for an inner bar: then in the bar opened or looped over
last. Two bars merely open side by side, as a program keeps a download and an upload bar, are
not nested.

"Context" is a :mod:`contextvars` context: a thread's, or an asyncio task's. Tasks started
inside an outer loop inherit it (a crawler's pages nest under its site); sibling tasks do not
see each other's bars.

Each context holds a stack of its bars, newest on top, whose entries never change once made: a
task that inherits the stack and pushes onto it leaves its parent's stack as it was. Opening a
bar and finding its parent cost the same whatever the number of open bars (a worker with ten
thousand bars side by side opened them in quadratic time when each bar walked all the others):
each entry points to the nearest loop beneath it, closed bars on top are skipped when the next
one is pushed, and closed ones buried under open ones are swept out once the stack has doubled.
"""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from typing import Protocol

__all__ = ["Nestable", "looping", "opened", "parent_of"]

#: Entries a stack may hold beyond twice those left by its last sweep (small stacks never sweep).
SWEEP_SLACK = 64


class Nestable(Protocol):
    """What nesting needs to know of a bar."""

    @property
    def remote_task_id(self) -> str | None: ...

    @property
    def remote_is_open(self) -> bool: ...


class _Entry:
    """One bar on a context's stack: opened there, or looped over there (``loop``)."""

    __slots__ = ("bar", "below", "depth", "kept", "loop", "nearest_loop")

    def __init__(
        self, bar: weakref.ref[Nestable], loop: bool, below: _Entry | None, kept: int
    ) -> None:
        self.bar = bar
        self.loop = loop
        self.below = below
        self.depth: int = below.depth + 1 if below is not None else 1
        #: Entries left by the last sweep: the stack is swept again when it is twice as deep.
        self.kept = kept
        #: This entry if it is a loop, else the nearest loop beneath it: where a bar that is
        #: not ``leave=False`` looks for its parent, without passing the bars beside it. Once
        #: a walk has found loops closed there, it points past them (see _open_loop).
        self.nearest_loop: _Entry | None = (
            self if loop else below.nearest_loop if below is not None else None
        )

    def open_bar(self) -> Nestable | None:
        """The entry's bar while it is open (a loop's bar loops until it closes)."""
        bar = self.bar()
        return bar if bar is not None and bar.remote_is_open else None


#: The newest entry of this context's stack.
_TOP: ContextVar[_Entry | None] = ContextVar("progressista_open_bars", default=None)


def parent_of(*, leave: bool) -> str | None:
    """The task id of the bar a bar opened now is nested in, if any (see the module's doc)."""
    top = _TOP.get()
    if leave:
        loop = _open_loop(top)
        return None if loop is None else loop.remote_task_id
    entry = top
    while entry is not None:
        bar = entry.open_bar()
        if bar is not None:
            return bar.remote_task_id
        entry = entry.below
    return None


def _open_loop(top: _Entry | None) -> Nestable | None:
    """The bar of the newest loop still open beneath ``top``.

    The loops passed on the way are closed for good, whichever context's stack they are in:
    every entry whose pointer led to them points past them afterwards, so that loops ended
    under bars kept open (a bar opened in each round of a loop, and kept) are passed once, not
    at every bar opened later.
    """
    passed: list[_Entry] = []
    holder = top
    while holder is not None:
        loop = holder.nearest_loop
        if loop is None:
            break
        bar = loop.open_bar()
        if bar is not None:
            for entry in passed:
                entry.nearest_loop = loop
            return bar
        passed.append(holder)
        if loop is not holder:
            passed.append(loop)
        holder = loop.below
    for entry in passed:
        entry.nearest_loop = None
    return None


def _push(bar: Nestable, *, loop: bool) -> None:
    top = _TOP.get()
    while top is not None and top.open_bar() is None:
        top = top.below
    kept = top.kept if top is not None else 0
    if top is not None and top.depth > 2 * kept + SWEEP_SLACK:
        top = _swept(top)
        kept = top.depth if top is not None else 0
    _TOP.set(_Entry(weakref.ref(bar), loop, top, kept))


def _swept(top: _Entry) -> _Entry | None:
    """The same stack without the entries of closed bars."""
    entries: list[_Entry] = []
    entry: _Entry | None = top
    while entry is not None:
        if entry.open_bar() is not None:
            entries.append(entry)
        entry = entry.below
    rebuilt: _Entry | None = None
    for entry in reversed(entries):
        rebuilt = _Entry(entry.bar, entry.loop, rebuilt, len(entries))
    return rebuilt


def opened(bar: Nestable) -> None:
    """Note that ``bar`` is open in this context."""
    _push(bar, loop=False)


def looping(bar: Nestable) -> None:
    """Note that ``bar`` is being looped over here: bars opened in the loop nest in it.

    A bar built in one context and looped over in another (handed to a worker thread) goes on
    the second's stack as well.
    """
    _push(bar, loop=True)
