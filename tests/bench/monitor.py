"""The server as shipped, with a watch on its event loop: what held it, for how long.

``python -m tests.bench.monitor LOG [server flags]`` runs ``python -m progressista.server`` after
wrapping ``asyncio.events.Handle._run``, through which every callback the loop runs passes (task
steps, I/O callbacks, timers). Each callback that holds the loop longer than :data:`THRESHOLD` is
appended to ``LOG`` as one line: when it started (``time.monotonic()``), its wall time, its CPU
time (``time.thread_time()``: what the loop spent, not waiting for this busy machine's cores), and
what ran, as ``coroutine@line -> line`` from the task's innermost awaiting frame before and after
the step. The ``/healthz`` probe says how long requests waited; this says why. Garbage
collections of the oldest generation are logged the same way (``gc gen2``): they run inside
whichever callback allocated, and their cost grows with the containers the server keeps.

The wrapper costs about a microsecond a callback: it is for the loop-holding benchmark only,
never for throughput figures.
"""

from __future__ import annotations

import asyncio.events
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import CoroutineType, FrameType
from typing import Any

__all__ = ["THRESHOLD", "Hold", "install", "read_log"]

#: Callbacks shorter than this (seconds) are not logged.
THRESHOLD = 0.002


def _innermost(coro: Any) -> FrameType | None:
    """The frame of the innermost coroutine ``coro`` is awaiting that is not asyncio's own (the
    code that called ``asyncio.sleep``, not ``sleep`` itself)."""
    frame = None
    while isinstance(coro, CoroutineType):
        found = coro.cr_frame
        if found is not None and "/asyncio/" not in found.f_code.co_filename:
            frame = found
        coro = coro.cr_await
    return frame


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    code = frame.f_code
    name: str = getattr(code, "co_qualname", code.co_name)  # 3.11+
    return f"{name}:{frame.f_lineno}"


def _task_of(handle: Any) -> asyncio.Task[Any] | None:
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return owner
    for arg in handle._args or ():  # task_wakeup(future) is bound to the task
        if isinstance(arg, asyncio.Task):
            return arg
    return None


def install(log: Path) -> None:
    out = log.open("a", buffering=1)
    original: Callable[[asyncio.events.Handle], None] = asyncio.events.Handle._run

    def _run(handle: Any) -> None:
        task = _task_of(handle)
        before = _innermost(task.get_coro()) if task is not None else None
        where = _where(before) if before is not None else ""
        started = time.perf_counter()
        cpu = time.thread_time()
        original(handle)
        wall = time.perf_counter() - started
        if wall > THRESHOLD:
            spent = time.thread_time() - cpu
            if task is not None:
                after = _innermost(task.get_coro()) if not task.done() else None
                what = f"{where} -> {_where(after) if after is not None else 'done'}"
            else:
                what = repr(handle._callback)[:160].replace("\n", " ")
            out.write(
                f"{time.monotonic() - wall:.6f} {wall * 1000:.3f} {spent * 1000:.3f} {what}\n"
            )

    asyncio.events.Handle._run = _run  # type: ignore[method-assign,assignment]  # the point

    collecting: list[float] = [0.0, 0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            collecting[:] = [time.perf_counter(), time.thread_time()]
        else:
            wall = time.perf_counter() - collecting[0]
            spent = time.thread_time() - collecting[1]
            out.write(
                f"{time.monotonic() - wall:.6f} {wall * 1000:.3f} {spent * 1000:.3f} "
                f"gc gen2 ({info['collected']} collected)\n"
            )

    gc.callbacks.append(on_gc)


@dataclass
class Hold:
    """One callback that held the loop."""

    started: float
    wall_ms: float
    cpu_ms: float
    what: str


def read_log(log: Path) -> list[Hold]:
    holds = []
    if log.exists():
        for line in log.read_text().splitlines():
            started, wall, cpu, what = line.split(" ", 3)
            holds.append(Hold(float(started), float(wall), float(cpu), what))
    return holds


def main() -> int:
    install(Path(sys.argv[1]))
    from progressista.server.__main__ import main as serve

    return serve(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
