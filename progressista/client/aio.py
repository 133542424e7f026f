"""AsyncRemoteTqdm: tqdm's asyncio bar, batched on the caller's own event loop.

Its state goes to the loop's sender task (:mod:`.loop_sender`), not to a thread; created outside
a running loop, a bar falls back to the process's sender thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tqdm.asyncio import tqdm_asyncio

from ..settings import ClientSettings
from . import nesting
from .bar import RemoteTqdm
from .lifecycle import sender_for
from .loop_sender import loop_sender_for, loop_senders
from .outbox import Outbox

__all__ = ["AsyncRemoteTqdm"]


class AsyncRemoteTqdm(RemoteTqdm, tqdm_asyncio):  # type: ignore[type-arg]  # generic only in stubs
    """``tqdm.asyncio.tqdm`` that also shows up on a Progressista server.

    ``async for``, ``gather`` and ``as_completed`` work as in tqdm. Prefer ``async with`` (or
    ``await bar.aclose()``): it reports an exception that ends the block as a failure and, while
    the server answers, waits until the final state is delivered; it never waits for a server
    whose last attempt failed, and all waits for one that never answers share one
    ``flush_timeout`` (see :mod:`.reachability`). Created outside a running loop, a bar falls
    back to the threaded sender.
    """

    @staticmethod
    def _remote_outbox_for(settings: ClientSettings) -> Outbox:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return sender_for(settings).outbox
        return loop_sender_for(loop, settings).outbox

    async def aclose(self) -> bool:
        """Close the bar and wait until the server has its final state, as long as allowed.

        Returns False when it is not delivered yet (the server is away): it still goes out when
        the server answers again, or at exit.
        """
        self.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is awaited, so a loop runs
            return False
        for sender in loop_senders(loop):
            if sender.outbox is self._remote_outbox:
                return await sender.drain(sender.settings.flush_timeout)
        return self._remote_outbox is None

    def close(self) -> None:
        if (
            self._remote_exit_error is None
            and self._remote_outbox is not None
            and not self._remote_closed
            and _cancelled_short(self)
        ):
            # An `async for` over this bar in a task being cancelled (Ctrl-C under asyncio.run
            # cancels every task): the loop's body is where the cancellation struck, which
            # tqdm_asyncio never sees, and the bar is released with the task's frame. It was cut
            # short; it must not be reported completed.
            self._remote_exit_error = asyncio.CancelledError()
        super().close()

    def __aiter__(self) -> AsyncRemoteTqdm:
        if self._remote_outbox is not None:
            nesting.looping(self)
        return self

    async def __aenter__(self) -> AsyncRemoteTqdm:
        return self

    async def __aexit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if isinstance(exc_value, BaseException):
            self._remote_exit_error = exc_value
        await self.aclose()


def _cancelled_short(bar: AsyncRemoteTqdm) -> bool:
    """Whether ``bar`` is closed unfinished by a task that is being cancelled.

    Unfinished: below its total, or without one. Python 3.10 cannot tell a cancelling task
    (``Task.cancelling`` is 3.11's), so there such a bar is judged as any other.
    """
    total = bar.total
    if total is not None and bar.n >= total:
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # closed outside a running loop (collected at exit, say)
        return False
    cancelling = getattr(task, "cancelling", None)
    return task is not None and cancelling is not None and cancelling() > 0
