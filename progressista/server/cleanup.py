"""The cleanup loop: moves silent tasks to stale and removes expired ones, in bounded steps.

It runs as one background task started from the application's ``cleanup_ctx`` and is cancelled
when the application shuts down. Each pass applies what is due in steps of at most
:data:`CLEANUP_STEP` transitions, yielding to the event loop between steps, so that a hundred
thousand tasks going stale at once neither hold the loop nor make one giant patch: viewers get
them over a few flushes. :func:`run_cleanup` is one whole pass, so tests drive the lifecycle with
an injected clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .store import Expired, StoreUnavailable, TaskStore
from .task import Lifetimes
from .turns import next_turn

__all__ = ["CLEANUP_STEP", "cleanup_loop", "run_cleanup"]

log = logging.getLogger(__name__)

#: Most transitions applied between two yields to the event loop.
CLEANUP_STEP = 250


async def run_cleanup(store: TaskStore, lifetimes: Lifetimes, now: float) -> Expired:
    """One pass: apply every lifecycle transition due at ``now``, step by step; then judge the
    jobs as time passed (stalls, retention: every server judges its own, from its table)."""
    # Each step's ids are kept as a tuple, which the garbage collector stops tracking at its
    # first look (strings only), where one growing list of a stale storm's 100k ids was walked
    # by every collection during the pass.
    stale: list[tuple[str, ...]] = []
    removed: list[tuple[str, ...]] = []
    while True:
        step = await store.expire(now, lifetimes, CLEANUP_STEP)
        stale.append(tuple(step.stale))
        removed.append(tuple(step.removed))
        if not step.more:
            break
        await next_turn()
    long_pass = len(stale) > 1  # then judging the jobs, and the lists below, get a turn each
    if long_pass:
        await next_turn()
    store.table.jobs.expire(now)
    store.table.publish()
    if long_pass:
        await next_turn()
    return Expired(
        stale=[task_id for ids in stale for task_id in ids],
        removed=[task_id for ids in removed for task_id in ids],
    )


async def cleanup_loop(
    store: TaskStore,
    lifetimes: Lifetimes,
    clock: Callable[[], float],
    interval: float,
) -> None:
    """Run :func:`run_cleanup` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_cleanup(store, lifetimes, clock())
        except StoreUnavailable as error:
            # Redis away (the store says so itself, once) or other servers changing the same
            # tasks: the next pass retries; a line a second would only drown the log.
            log.debug("cleanup pass put off: %s", error)
        except Exception:
            # A failing pass (a bug) must not end cleanup for good.
            log.exception("cleanup pass failed; retrying in %s s", interval)
