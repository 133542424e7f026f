"""The cleanup loop: moves silent tasks to stale, removes expired ones, drops stalled viewers.

It runs as one background task started from the application's ``cleanup_ctx`` and is cancelled
when the application shuts down. :func:`run_cleanup` is a single pass, so tests can drive the
lifecycle with an injected clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .hub import Hub
from .store import Expired, TaskStore
from .task import Lifetimes

__all__ = ["cleanup_loop", "run_cleanup"]

log = logging.getLogger(__name__)


async def run_cleanup(store: TaskStore, hub: Hub, lifetimes: Lifetimes, now: float) -> Expired:
    """One pass: apply every lifecycle transition due at ``now`` and tell the viewers."""
    expired = await store.expire(now, lifetimes)
    if expired.stale or expired.removed:
        hub.publish(expired.stale + expired.removed)
    return expired


async def cleanup_loop(
    store: TaskStore,
    hub: Hub,
    lifetimes: Lifetimes,
    clock: Callable[[], float],
    interval: float,
) -> None:
    """Run :func:`run_cleanup` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_cleanup(store, hub, lifetimes, clock())
            hub.drop_stalled()
        except Exception:
            # A failing pass (say, Redis briefly away) must not end cleanup for good.
            log.exception("cleanup pass failed; retrying in %s s", interval)
