"""Slices of long work take turns: one per iteration of the loop (progressista.server.turns)."""

from __future__ import annotations

import asyncio

from progressista.server.turns import next_turn


async def _sliced(name: str, slices: int, log: list[str]) -> None:
    for _ in range(slices):
        await next_turn()
        log.append(name)


def _ticking(loop: asyncio.AbstractEventLoop, log: list[str], done: asyncio.Event) -> None:
    """Log a tick at every iteration of the loop (a callback that schedules itself runs once
    per iteration: what a request's I/O callbacks get)."""

    def tick() -> None:
        log.append("|")
        if not done.is_set():
            loop.call_soon(tick)

    loop.call_soon(tick)


async def test_slices_of_several_tasks_run_one_per_iteration() -> None:
    log: list[str] = []
    done = asyncio.Event()
    _ticking(asyncio.get_running_loop(), log, done)
    await asyncio.gather(*(_sliced(name, 4, log) for name in "abc"))
    done.set()
    between = "".join(log).split("|")
    assert max(len(slices) for slices in between) == 1, log  # with sleep(0): "abc"
    # Round robin, in the order they asked.
    assert "".join(name for name in log if name != "|") == "abc" * 4


async def test_a_cancelled_slice_passes_its_turn_on() -> None:
    log: list[str] = []
    waiting = asyncio.ensure_future(_sliced("x", 1, log))
    other = asyncio.ensure_future(_sliced("y", 2, log))
    await asyncio.sleep(0)  # both wait for their turn
    waiting.cancel()
    await other
    assert log == ["y", "y"]
    assert waiting.cancelled()


def test_each_loop_has_its_own_turns() -> None:
    for _ in range(2):  # a queue left on a closed loop must not hold the next one
        log: list[str] = []
        asyncio.run(_sliced("z", 3, log))
        assert log == ["z"] * 3


def test_a_closed_loop_is_not_kept_alive_by_its_turns() -> None:
    import gc
    import weakref

    loop = asyncio.new_event_loop()
    loop.run_until_complete(_sliced("w", 2, []))
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
