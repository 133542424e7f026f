"""The event-loop sender: one task and one ``aiohttp.ClientSession`` per loop, for its bars.

No thread, and never a blocking call on the loop. The task stops (closing its session) once every
bar is closed and delivered, and starts again with the next bar; when the loop shuts down it gets
``flush_timeout`` seconds to deliver what is pending, so ``asyncio.run`` leaves no unclosed session
and no pending task behind. Work a loop leaves behind goes to the process's sender thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import aiohttp

from ..settings import ClientSettings
from .exchange import (
    apply_failure,
    apply_reply,
    build_body,
    report_dropped,
    request_headers,
)
from .lifecycle import before_exit, install_hooks, reachability_for, sender_for
from .outbox import Outbox, Source
from .tuning import BACKOFF_CAP, REQUEST_TIMEOUT

__all__ = ["LoopSender", "loop_sender_for", "loop_senders"]

log = logging.getLogger("progressista.client")


class LoopSender:
    """Delivers one outbox to one server from a task on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: ClientSettings) -> None:
        self.loop = loop
        self.settings = settings
        #: What the process knows about this server (shared with its sender thread).
        self.reach = reachability_for(settings)
        self.outbox = Outbox(
            push_every=settings.push_every,
            keepalive=settings.keepalive,
            clock=time.monotonic,  # the default loop's clock, without holding the loop
            random=random.Random().random,  # never the caller's global sequence
            on_ready=self._ready,
        )
        self._url = settings.url + "/progress"
        self._headers = request_headers(settings)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, Source] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Set after every attempt, delivered or not: what a waiting aclose() wakes up for.
        self._attempted = asyncio.Event()

    def _ready(self) -> None:
        try:
            running = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            running = False
        if running:
            self._start()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name="progressista-sender")
            self._task.add_done_callback(self._after_run)

    def _after_run(self, task: asyncio.Task[None]) -> None:
        """The task ended: start again if work arrived meanwhile, or hand the work over.

        A bar may open while the task is closing its session after going idle; it must not be
        left with nobody to send for it. A task cancelled before its first step (``asyncio.run``
        whose main coroutine returned without awaiting after its last bar changed) never ran its
        shutdown flush: the process's sender thread delivers instead, at exit at the latest.
        """
        if self._task is task:
            self._task = None
        if self.outbox.idle:
            return
        if task.cancelled() or self.loop.is_closed():
            self.outbox.hand_over(sender_for(self.settings).outbox)
        else:
            self._start()

    async def _run(self) -> None:
        try:
            while True:
                delay = self.outbox.delay()
                if delay is None:
                    return  # every bar closed and delivered: stop until the next bar
                if delay > 0:
                    self._wake.clear()
                    timer = self.loop.call_later(min(delay, BACKOFF_CAP), self._wake.set)
                    try:
                        await self._wake.wait()
                    finally:
                        timer.cancel()
                    continue
                await self._send(self.outbox.take())
        except asyncio.CancelledError:
            # The loop is shutting down. Bars still open go to the process's sender thread: if
            # the program is dying of an exception, the crash handler (which runs after the loop
            # is gone) can still mark them failed, and otherwise the exit flush closes them.
            # Tentative closes too (a bar garbage-collected as an exception unwound through its
            # `async for`): the crash handler has not had its say yet. Closed bars' final
            # states go out now, as long as the server's reachability allows; what is left goes
            # to the sender thread (see _after_run), whose exit flush tries once more.
            thread_outbox = sender_for(self.settings).outbox
            self.outbox.move_open_bars(thread_outbox)
            for key, final in self.outbox.take_tentative().items():
                thread_outbox.adopt(key, final)
            allowed = self.reach.allowance(self.settings.flush_timeout)
            if allowed > 0:
                started = self.loop.time()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(self._flush_all(), allowed)
                if self.undelivered:
                    self.reach.spent(self.loop.time() - started, delivered=False)
            raise
        finally:
            self._attempted.set()
            await self._close_session()

    async def _flush_all(self) -> None:
        while self.outbox.pending and await self._send(self.outbox.take(everything=True)):
            pass

    async def _send(self, batch: dict[str, Source]) -> bool:
        report_dropped(self.outbox, self.settings.url)
        body = build_body(batch)
        if body is None:
            self.outbox.delivered()
            return True
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT), headers=self._headers
            )
        self._in_flight = batch  # if the loop stops mid-request, this is what to send again
        try:
            async with self._session.post(self._url, data=body.data) as response:
                reply = await response.read()
                status, reply_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
            apply_failure(self.outbox, self.reach, batch, error)
            return False
        except BaseException:  # cancelled mid-request (the loop is shutting down): keep it
            self.outbox.requeue(batch)
            raise
        finally:
            self._in_flight = None
            self._attempted.set()
        return apply_reply(self.outbox, self.reach, batch, body, status, reply_after, reply)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def undelivered(self) -> int:
        """Bars whose latest state is not delivered yet: pending, or in the batch being sent."""
        return len(self.outbox.pending_keys() | set(self._in_flight or ()))

    async def drain(self, timeout: float) -> bool:
        """Send what is pending now and wait for it, as long as the server's reachability
        allows (never while its last attempt failed; at most ``timeout`` seconds)."""
        if self.undelivered == 0:
            return True
        self._start()
        self.outbox.hurry()
        allowed = self.reach.allowance(timeout)
        if allowed <= 0:
            return False  # the server's last attempt failed: the bar is sent when it is back
        started = self.loop.time()
        while self.undelivered:
            waited = self.loop.time() - started
            if waited >= allowed or self.reach.known_down:
                self.reach.spent(waited, delivered=False)
                return False
            self._attempted.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._attempted.wait(), allowed - waited)
        return True


#: Senders by loop. A plain dict, pruned of closed loops whenever a sender is looked up (and at
#: exit): a sender's task and events refer to its loop, so weak keys would never let go.
_loop_senders: dict[asyncio.AbstractEventLoop, dict[tuple[str, str | None], LoopSender]] = {}


def release_closed_loops() -> None:
    """Forget the senders of closed loops, handing any work they left to the sender thread.

    A loop closed without cancelling its tasks (``run_until_complete`` then ``close()``) leaves
    its sender's pending state behind; this is where it still gets delivered.
    """
    for loop in [loop for loop in list(_loop_senders) if loop.is_closed()]:
        for sender in _loop_senders.pop(loop, {}).values():
            if sender._in_flight:  # its POST never finished: the loop stopped under it
                sender.outbox.requeue(sender._in_flight)
                sender._in_flight = None
            if not sender.outbox.idle:
                sender.outbox.hand_over(sender_for(sender.settings).outbox)


def loop_sender_for(loop: asyncio.AbstractEventLoop, settings: ClientSettings) -> LoopSender:
    """The sender task of ``loop`` for this server, created on first use."""
    install_hooks()  # the exit flush and crash handling serve asyncio bars too
    before_exit(release_closed_loops)
    release_closed_loops()
    senders = _loop_senders.setdefault(loop, {})
    key = (settings.url, settings.token)
    sender = senders.get(key)
    if sender is None:
        sender = senders[key] = LoopSender(loop, settings)
    return sender


def loop_senders(loop: asyncio.AbstractEventLoop) -> list[LoopSender]:
    """The senders of ``loop`` (one per server its bars talk to)."""
    return list(_loop_senders.get(loop, {}).values())
