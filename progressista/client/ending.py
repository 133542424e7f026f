"""How a loop over a bar ended: ``break`` or ``return``, or an exception, told at close time.

tqdm closes a bar whose loop was abandoned from its generator's ``finally``, with GeneratorExit
in flight, whether the loop was left by ``break`` or by an exception (later caught, or not). The
exception itself cannot be seen from there, but the frame that releases the generator can: for
``break`` and ``return`` it stands on the instruction that drops the iterator (``POP_TOP``, a
return, a store), while an exception unwinding it leaves it on the instruction that raised. So
:func:`loop_release` decides at once, for CPython 3.10 to 3.13, where that is unambiguous, and
answers "unknown" elsewhere (the caller then keeps its older rule: wait a moment for a crash
handler). Standard library only: the tests run this module under every interpreter available.
"""

from __future__ import annotations

import dis
import functools
import os
import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Literal

__all__ = [
    "Site",
    "Verdict",
    "is_failure",
    "iteration_site",
    "loop_release",
    "watch_unwinding",
]

#: "normal" (break, return), "exception" (an exception unwound the loop), or "unknown".
Verdict = Literal["normal", "exception", "unknown"]

#: Where a loop asked for the bar's iterator: (id(frame), frame.f_code, frame.f_lasti).
Site = tuple[int, CodeType, int]

#: Instructions that release a reference without being able to raise: the loop was left on
#: purpose (``break`` pops the iterator, ``return`` pops it or clears the frame, a store or
#: ``del`` drops it).
_NORMAL = frozenset(
    {
        "POP_TOP",
        "END_FOR",
        "POP_ITER",
        "RETURN_VALUE",
        "RETURN_CONST",
        "STORE_FAST",
        "STORE_NAME",
        "STORE_GLOBAL",
        "STORE_DEREF",
        "STORE_FAST_STORE_FAST",
        "STORE_FAST_LOAD_FAST",
        "DELETE_FAST",
        "DELETE_NAME",
        "DELETE_GLOBAL",
        "DELETE_DEREF",
    }
)
#: Instructions that only ever release references by raising.
_RAISING = frozenset({"RAISE_VARARGS", "RERAISE"})
#: Where a generator or coroutine stands while it is closed or thrown into: not ours to judge.
_SUSPENDED = frozenset({"YIELD_VALUE", "RESUME", "SEND", "GET_AWAITABLE", "YIELD_FROM"})

#: Instructions that may sit between the one asking for the iterator and the loop's FOR_ITER
#: (``for x in bar``, ``enumerate(bar)``, ``zip(bar, other)``...), but no further.
_BEFORE_LOOP = 12


def iteration_site(depth: int = 2) -> Site | None:
    """Where the caller's caller asked for an iterator (call this from ``__iter__``)."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return None
    return (id(frame), frame.f_code, frame.f_lasti)


def is_failure(error: BaseException | None) -> bool:
    """Whether ``error`` ending a bar makes it a failure: not ``sys.exit(0)``, not GeneratorExit."""
    if error is None or isinstance(error, GeneratorExit):
        return False
    if isinstance(error, SystemExit):
        return error.code not in (0, None)
    return True


def _opname(code: CodeType, offset: int) -> str:
    """The instruction at ``offset``; inline caches (3.11+) belong to the one before them."""
    raw = code.co_code
    while offset > 0 and dis.opname[raw[offset]] == "CACHE":
        offset -= 2
    return dis.opname[raw[offset]] if 0 <= offset < len(raw) else ""


@functools.lru_cache(maxsize=256)
def _loop_after(code: CodeType, offset: int) -> tuple[int, int] | None:
    """The body of the ``for`` loop that iterates what was asked for at ``offset``, if any."""
    seen = 0
    for instruction in dis.get_instructions(code):
        if instruction.offset <= offset or instruction.opname == "CACHE":
            continue
        if instruction.opname == "FOR_ITER":
            end = instruction.argval
            return (instruction.offset, end) if isinstance(end, int) else None
        if instruction.opname.startswith(("JUMP", "POP_JUMP", "RETURN", "STORE", "POP_TOP")):
            return None  # the iterator was taken for something else than a loop right here
        seen += 1
        if seen > _BEFORE_LOOP:
            return None
    return None


def _releaser(generator_code: CodeType) -> FrameType | None:
    """The frame dropping the generator running ``generator_code``, past tqdm's own wrappers.

    tqdm's notebook bar wraps the iteration in a generator of its own; the frame that decides
    is the first one outside tqdm.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not generator_code:
        frame = frame.f_back
    if frame is None:
        return None
    tqdm_dir = os.path.dirname(generator_code.co_filename)
    releaser = frame.f_back
    while releaser is not None and releaser.f_code.co_filename.startswith(tqdm_dir + os.sep):
        releaser = releaser.f_back
    return releaser


def loop_release(generator_code: CodeType, site: Site | None) -> tuple[Verdict, FrameType | None]:
    """How the loop over the generator running ``generator_code`` was left; call it from the
    generator's ``finally`` (tqdm's ``close()``), with GeneratorExit in flight.

    Returns the verdict and the releasing frame (for the crash handler's fallback and for
    naming where the loop stopped). ``site`` is where the iterator was asked for.
    """
    frame = _releaser(generator_code)
    if frame is None:
        return "unknown", None
    op = _opname(frame.f_code, frame.f_lasti)
    if op in _NORMAL:
        return "normal", frame
    if op in _RAISING:
        return "exception", frame
    if op in _SUSPENDED or site is None or (id(frame), frame.f_code) != site[:2]:
        return "unknown", frame
    loop = _loop_after(frame.f_code, site[2])
    if loop is not None and loop[0] < frame.f_lasti < loop[1]:
        # Inside the body of the loop over this very iterator, on an instruction that cannot
        # release it but by raising: an exception is unwinding the loop.
        return "exception", frame
    return "unknown", frame


class _UnwindWatch:
    """CPython 3.12+: learn which exception is unwinding a frame, through ``sys.monitoring``.

    Once :func:`loop_release` has said "exception", the exception itself shows up in the same
    frame right after: handled there (``EXCEPTION_HANDLED``) or leaving it (``PY_UNWIND``). The
    events are switched on only while a frame is watched, for a moment.
    """

    #: Seconds a watch lives: the unwinding it waits for follows within microseconds.
    LIFETIME = 2.0

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._tool: int | None = None
        #: ``sys.monitoring`` once claimed (typed loosely: the stubs for 3.10 do not have it).
        self._monitoring: Any = None
        self._watches: dict[int, tuple[CodeType, float, Callable[[BaseException], None]]] = {}

    def watch(self, frame: FrameType, callback: Callable[[BaseException], None]) -> bool:
        """Call ``callback`` with the exception unwinding ``frame``; False where unsupported."""
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is None:
            return False
        import time

        with self._lock:
            if self._tool is None and not self._claim(monitoring):
                return False
            assert self._tool is not None
            self._watches[id(frame)] = (frame.f_code, time.monotonic() + self.LIFETIME, callback)
            events = monitoring.events
            monitoring.set_events(self._tool, events.PY_UNWIND | events.EXCEPTION_HANDLED)
        return True

    def _claim(self, monitoring: Any) -> bool:
        for tool in (4, 3, 5):  # 0-2 are the debugger's, coverage's and profilers' by convention
            if monitoring.get_tool(tool) is None:
                monitoring.use_tool_id(tool, "progressista")
                events = monitoring.events
                monitoring.register_callback(tool, events.PY_UNWIND, self._event)
                monitoring.register_callback(tool, events.EXCEPTION_HANDLED, self._event)
                self._tool, self._monitoring = tool, monitoring
                return True
        return False

    def _event(self, code: CodeType, offset: int, exception: BaseException) -> None:
        import time

        frame = sys._getframe(1)
        with self._lock:
            entry = self._watches.get(id(frame))
            found = entry is not None and entry[0] is code
            if found:
                del self._watches[id(frame)]
            now = time.monotonic()
            for key in [key for key, (_, until, _) in self._watches.items() if until < now]:
                del self._watches[key]
            if not self._watches and self._tool is not None:
                self._monitoring.set_events(self._tool, 0)
        if found and entry is not None:
            try:
                entry[2](exception)
            except Exception:  # never disturb the program's own unwinding
                pass


_unwind_watch = _UnwindWatch()


def watch_unwinding(frame: FrameType, callback: Callable[[BaseException], None]) -> bool:
    """CPython 3.12+: call ``callback`` with the exception now unwinding ``frame`` (the one
    :func:`loop_release` said was unwinding a loop). False where the interpreter cannot."""
    return _unwind_watch.watch(frame, callback)
