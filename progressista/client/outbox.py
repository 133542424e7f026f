"""What a sender still has to deliver, and when: the client's batching policy, free of I/O.

Both transports (the thread for :class:`RemoteTqdm`, the event-loop task for
:class:`AsyncRemoteTqdm`) drive one :class:`Outbox`: they ask it how long to wait, take a batch,
and report how the POST went. The outbox keeps one slot per bar, latest state wins, so memory is
bounded by the number of bars however many updates happen while the server is away. Clock and
randomness are injected, so tests walk it through failures without sleeping.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable, Collection
from types import CodeType
from typing import Protocol

from ..schema import Event
from .tuning import BACKOFF_CAP, MAX_BATCH, MAX_PENDING_FINALS, MIN_GAP, TENTATIVE_HOLD

__all__ = ["Bar", "FinalEvent", "Location", "Outbox", "Source", "WeakSource"]

#: Where code was running: ``(id(frame), frame.f_code, line)``.
Location = tuple[int, CodeType, int]


class Source(Protocol):
    """Something whose current state can be turned into an event: an open bar, or a final one."""

    def remote_event(self) -> Event: ...


class Bar(Source, Protocol):
    """What the outbox needs from an open bar (RemoteTqdm is one), and nothing more."""

    @property
    def remote_thread(self) -> int:
        """The id of the thread the bar was created in: an uncaught exception there ends it."""
        ...

    def remote_final_event(self, status: str = "close", error: str | None = None) -> Event:
        """The event that ends the bar; no update may follow it."""
        ...

    def remote_progress(self) -> tuple[int | float, int | float | None]:
        """Where the bar stands (n, total), to tell a finished bar from a cut-short one."""
        ...

    def remote_moved(self, outbox: Outbox) -> None:
        """From now on, send updates and the close to ``outbox`` (its transport lives on)."""
        ...


class FinalEvent:
    """The last state of a closed bar, frozen when it closed.

    ``tentative`` marks a close that may have been caused by an exception the bar could not see
    (an iteration abandoned with GeneratorExit, a bar garbage-collected): until it is sent, the
    crash handler may still turn it into a failure. ``origin`` is where the loop over the bar
    was when it was abandoned (frame id, code, line): the crash handler blames the bar only if
    the uncaught exception's traceback passes there, so a ``break`` followed later by an
    unrelated crash is not a failure. ``thread`` is the id of the thread the bar ran in.
    ``refinable`` marks a failure whose exception is not known yet (a loop seen to be unwound
    by one): the crash handler, if the exception reaches it, puts its text in.
    """

    __slots__ = ("created", "event", "origin", "refinable", "tentative", "thread")

    def __init__(
        self,
        event: Event,
        *,
        tentative: bool = False,
        thread: int | None = 0,
        origin: Location | None = None,
        refinable: bool = False,
    ) -> None:
        self.event = event
        self.tentative = tentative
        self.thread = thread
        self.origin = origin
        self.refinable = refinable
        #: When the outbox received it (its clock); a tentative close waits TENTATIVE_HOLD.
        self.created = 0.0

    def remote_event(self) -> Event:
        return self.event


class WeakSource:
    """An open bar as the outbox holds it: weakly, so a pending update never keeps a bar alive.

    tqdm closes an abandoned bar from ``__del__``; that must still happen while its latest
    state waits to be sent. A collected bar's close has queued its final state in its place.
    """

    __slots__ = ("_bar",)

    def __init__(self, bar: Bar) -> None:
        self._bar = weakref.ref(bar)

    def remote_event(self) -> Event:
        bar = self._bar()
        if bar is None:
            raise LookupError("the bar was garbage-collected")
        return bar.remote_event()


class Outbox:
    """Latest state per bar, the send schedule, retries with backoff, and warn-once errors.

    Thread-safe: bars put from any thread while the sender takes from its own.
    """

    def __init__(
        self,
        *,
        push_every: float,
        keepalive: float,
        clock: Callable[[], float],
        random: Callable[[], float],
        on_ready: Callable[[], None] = lambda: None,
        max_batch: int = MAX_BATCH,
        max_finals: int = MAX_PENDING_FINALS,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.push_every = push_every
        self.keepalive = keepalive
        #: The keepalive the worker asked for; a server may ask for less (see follow_server).
        self._own_keepalive = keepalive
        self.max_batch = max_batch
        self.max_finals = max_finals
        self.backoff_cap = backoff_cap
        self._clock = clock
        self._random = random
        #: Wakes the transport when there is newly something to send (it may be asleep).
        self._on_ready = on_ready
        # Re-entrant: a SIGTERM handler that flushes may run while this thread holds it.
        self._lock = threading.RLock()
        self._pending: dict[str, Source] = {}
        #: How many of the pending states are final ones (the only kind that is capped).
        self._finals = 0
        #: Keys whose pending state is a tentative close (held back a moment, see take()).
        self._tentative: set[str] = set()
        #: Open bars, weakly: an abandoned bar must stay collectable so tqdm's __del__ closes it.
        #: A plain dict of references under the lock, not a WeakValueDictionary: bars open and
        #: close from any thread (and from GC) while the sender walks this for keepalives.
        self._open: dict[str, weakref.ref[Bar]] = {}
        self._urgent = False
        self._everything_once = False
        self._failures = 0
        now = clock()
        self._next_send = now
        self._last_send = float("-inf")
        #: Bars still to send in the current round: its batches go back to back.
        self._round_left = 0
        #: Changes when the server may have lost what it was sent (a failed attempt, a new
        #: connection): bars then send every field again, not only what changed.
        self.generation = 0
        self._next_keepalive = now + keepalive
        self._warned: set[int] = set()
        #: Final states dropped because more than ``max_finals`` waited at once.
        self.dropped = 0
        self._dropped_told = False

    def renew_lock(self) -> None:
        """In a forked child: a fresh lock, since the parent's may have been held at the fork."""
        self._lock = threading.RLock()

    # Called by bars -------------------------------------------------------------------------

    def opened(self, key: str, bar: Bar) -> None:
        """Track an open bar for keepalives."""
        with self._lock:
            self._open[key] = weakref.ref(bar)
        self._on_ready()  # a sleeping sender must learn when the next keepalive is due

    def put(self, key: str, source: Source, *, urgent: bool = False) -> None:
        """Replace whatever was pending for ``key``; ``urgent`` asks for a send soon."""
        with self._lock:
            pending = self._pending
            wake = not pending or (urgent and not self._urgent)
            previous = pending.get(key)
            pending[key] = source
            self._finals += isinstance(source, FinalEvent) - isinstance(previous, FinalEvent)
            if isinstance(source, FinalEvent) and source.tentative:
                self._tentative.add(key)
            elif previous is not None:
                self._tentative.discard(key)
            if self._finals > self.max_finals:
                self._drop_oldest_final()
            if urgent:
                self._urgent = True
        if wake:
            self._on_ready()

    def _drop_oldest_final(self) -> None:
        """Memory stays bounded while the server is away: the oldest final state goes."""
        for key, source in self._pending.items():
            if isinstance(source, FinalEvent):
                del self._pending[key]
                self._tentative.discard(key)
                self._finals -= 1
                self.dropped += 1
                return

    def drop_news(self) -> int:
        """How many final states were dropped, the first time any were; 0 ever after.

        The transport warns with it: once, however long the outage lasts.
        """
        with self._lock:
            if not self.dropped or self._dropped_told:
                return 0
            self._dropped_told = True
            return self.dropped

    def closed(self, key: str, final: FinalEvent, *, urgent: bool) -> None:
        """Queue a bar's final state and stop keeping it alive."""
        self.forget(key)
        final.created = self._clock()
        self.put(key, final, urgent=urgent)

    def resolve_tentative(self, key: str, final: FinalEvent, error: str | None) -> bool:
        """Decide a close still waiting here: failed with ``error``, or completed (None).

        For a tentative close (loop abandoned, cause unknown) or a refinable one (an exception,
        not known which). False when it already went out (too late to change).
        """
        with self._lock:  # re-entrant: the check and the put are one step for the sender
            if self._pending.get(key) is not final:
                return False
            event = {k: v for k, v in final.event.items() if k != "error"}
            if error is None:
                event["status"] = "close"
            else:
                event.update(status="error", error=error)
            self.put(key, FinalEvent(event, thread=final.thread), urgent=True)
        return True

    # Called by the crash handler --------------------------------------------------------------

    def fail(
        self, thread: int | None, error: str, path: Collection[Location], *, open_bars: bool = True
    ) -> int:
        """Turn the bars of ``thread`` that an uncaught exception ended into failures.

        ``path`` holds the locations the exception's traceback passed through. Closes not sent
        yet whose loop was abandoned on that path, and (with ``open_bars``) every bar of the
        thread still open, get status ``error`` with ``error`` as their text. Returns how many
        bars were marked.
        """
        marked = 0
        with self._lock:
            for key, source in list(self._pending.items()):
                if (
                    isinstance(source, FinalEvent)
                    and (source.tentative or source.refinable)
                    and source.thread == thread
                    and (source.origin is None or source.origin in path)
                ):
                    event = dict(source.event, status="error", error=error)
                    self._pending[key] = FinalEvent(event, thread=thread)
                    self._tentative.discard(key)
                    marked += 1
        for key, bar in self.open_bars() if open_bars else ():
            if bar.remote_thread == thread:
                event = bar.remote_final_event("error", error)
                self.forget(key)
                self.put(key, FinalEvent(event, thread=thread), urgent=True)
                marked += 1
        return marked

    def open_bars(self) -> list[tuple[str, Bar]]:
        """The bars still open and alive, copied under the lock; dead references are pruned."""
        with self._lock:
            entries = list(self._open.items())
        alive = []
        for key, ref in entries:
            bar = ref()
            if bar is None:
                with self._lock:
                    if self._open.get(key) is ref:
                        del self._open[key]
            else:
                alive.append((key, bar))
        return alive

    def _has_open(self) -> bool:
        """Whether any open bar is alive: stops at the first, where open_bars() copies all.

        The sender asks on every wake; with thousands of open bars a copy each time would be
        work on the path that decides whether there is work.
        """
        with self._lock:
            entries = list(self._open.items())
        for key, ref in entries:
            if ref() is not None:
                return True
            with self._lock:
                if self._open.get(key) is ref:
                    del self._open[key]
        return False

    def take_tentative(self) -> dict[str, FinalEvent]:
        """Remove and return the tentative closes waiting here."""
        with self._lock:
            tentative = {
                key: source
                for key, source in self._pending.items()
                if isinstance(source, FinalEvent) and source.tentative
            }
            for key in tentative:
                del self._pending[key]
            self._finals -= len(tentative)
            self._tentative.clear()
        return tentative

    def adopt(self, key: str, source: Source) -> None:
        """Take over a pending state from another outbox, its age included."""
        self.put(key, source, urgent=not (isinstance(source, FinalEvent) and source.tentative))

    def forget(self, key: str) -> None:
        """Stop tracking an open bar (it moved to another outbox)."""
        with self._lock:
            self._open.pop(key, None)

    def close_open_bars(self, ending: Callable[[Bar], str | None]) -> None:
        """At exit: queue every bar still open, completed, or failed with what ``ending`` says."""
        for key, bar in self.open_bars():
            error = ending(bar)
            event = bar.remote_final_event("close" if error is None else "error", error)
            self.forget(key)
            self.put(key, FinalEvent(event), urgent=True)

    def move_open_bars(self, other: Outbox) -> None:
        """Give every open bar to ``other``: its updates and its close go there from now on."""
        for key, bar in self.open_bars():
            self.forget(key)
            bar.remote_moved(other)
            other.opened(key, bar)

    def hand_over(self, other: Outbox) -> None:
        """Move every pending state and open bar to ``other``, whose transport lives on."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._finals = 0
            self._tentative.clear()
        self.move_open_bars(other)
        for key, source in pending.items():
            other.put(key, source, urgent=True)

    # Called by the transport ------------------------------------------------------------------

    def delay(self) -> float | None:
        """Seconds until the next send should start; None when there is nothing to send.

        Zero while a round is under way: every bar that had changed when a round began goes out
        in consecutive batches, so no state waits more than about ``push_every`` however many
        bars change (as long as the server keeps up).
        """
        now = self._clock()
        if not self.pending:
            return max(0.0, self._next_keepalive - now) if self._has_open() else None
        with self._lock:
            if self._failures == 0:
                if self._round_left > 0:
                    return 0.0
                if self._urgent:
                    return max(0.0, self._last_send + MIN_GAP - now)
            return max(0.0, self._next_send - now)

    @property
    def idle(self) -> bool:
        """Nothing pending and no open bar: an event-loop sender may stop until the next bar."""
        return not self.pending and not self._has_open()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_keys(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def hurry(self) -> None:
        """Send everything pending as soon as the transport can (someone awaits delivery).

        Tentative closes go too: whoever asks has decided the program is not unwinding.
        """
        with self._lock:
            self._urgent = bool(self._pending)
            self._everything_once = True
        if self._failures == 0:
            self._next_send = self._clock()

    def take(self, everything: bool = False) -> dict[str, Source]:
        """The next batch (at most ``max_batch`` bars), removed from the pending set.

        The first batch of a round counts the bars pending then; the round's next batches
        (``delay()`` is zero until it is done) take the rest of those, oldest first, before any
        bar that changed again meanwhile. Tentative closes younger than TENTATIVE_HOLD stay
        behind unless ``everything``.
        """
        now = self._clock()
        if self._round_left <= 0 and now >= self._next_keepalive:
            self._next_keepalive = now + self.keepalive
            for key, bar in self.open_bars():
                with self._lock:
                    if key not in self._pending:
                        self._pending[key] = WeakSource(bar)
        with self._lock:
            pending = self._pending
            everything = everything or self._everything_once
            self._everything_once = False
            held: dict[str, Source] = {}
            if not everything and self._tentative:
                young = now - TENTATIVE_HOLD
                for key in self._tentative:
                    source = pending[key]
                    if isinstance(source, FinalEvent) and source.created > young:
                        held[key] = source
                if held:
                    pending = {key: s for key, s in pending.items() if key not in held}
            starting = self._round_left <= 0
            if starting:
                self._round_left = len(pending)
                self._next_send = now + self.push_every
            size = min(self.max_batch, self._round_left) if not everything else self.max_batch
            if len(pending) <= size:
                batch, self._pending = pending, held
            else:
                keys = list(itertools.islice(pending, size))
                batch = {key: pending.pop(key) for key in keys}
                self._pending = {**pending, **held} if held else pending
            self._round_left = max(0, self._round_left - len(batch)) if self._pending else 0
            self._finals -= sum(isinstance(source, FinalEvent) for source in batch.values())
            if self._tentative:
                self._tentative.difference_update(batch)
            self._urgent = self._urgent and bool(self._pending)
            self._last_send = now
        return batch

    def delivered(self, keepalive: float | None = None) -> None:
        """The last batch reached the server, which may have asked for a shorter ``keepalive``.

        A server whose ``stale_after`` is short suggests one with each reply, so that a slow
        bar does not flap to stale there; a worker's own shorter setting always wins.
        """
        self._failures = 0
        wanted = self._own_keepalive
        if keepalive is not None and MIN_GAP <= keepalive < wanted:
            wanted = keepalive
        if wanted != self.keepalive:
            with self._lock:
                self.keepalive = wanted
                self._next_keepalive = min(self._next_keepalive, self._clock() + wanted)

    def retry(
        self, batch: dict[str, Source], retry_after: float | None = None, cap: float | None = None
    ) -> float:
        """The server could not be reached or was overloaded: keep the batch, back off (at
        most ``cap`` seconds, if given, below the outbox's own cap).

        A bar that changed meanwhile keeps its newer state. Returns the backoff in seconds.
        """
        self.requeue(batch)
        return self._back_off(retry_after, cap)

    def _back_off(self, retry_after: float | None = None, cap: float | None = None) -> float:
        """Count a failure and push the next send back: capped, doubling, with jitter.

        The round ends: the next one, after the backoff, starts with whatever is pending then.
        """
        self._failures += 1
        self._round_left = 0
        self.generation += 1
        limit = self.backoff_cap if cap is None else min(cap, self.backoff_cap)
        # The exponent stops growing long before a float would overflow (a day-long outage).
        doubled = self.push_every * 2 ** min(self._failures - 1, 30)
        backoff: float = min(limit, doubled) * (0.5 + self._random())  # jitter
        if retry_after is not None and 0 <= retry_after:
            # The server's wish, within the same cap: a Retry-After of a day (or infinity) must
            # not silence every bar for the rest of the run once the server is back.
            backoff = max(backoff, min(retry_after, self.backoff_cap))
        self._next_send = self._clock() + backoff
        return backoff

    def requeue(self, batch: dict[str, Source]) -> None:
        """Put back a batch whose send was interrupted; newer states of its bars win."""
        with self._lock:
            pending = self._pending
            for key, source in batch.items():
                if key not in pending:
                    pending[key] = source
                    if isinstance(source, FinalEvent):
                        self._finals += 1
                        if source.tentative:
                            self._tentative.add(key)

    def shrink(self, batch: dict[str, Source]) -> None:
        """The server found the batch too large: retry at once in halves."""
        self.requeue(batch)
        self.max_batch = max(1, len(batch) // 2)
        self._round_left = 0
        self.generation += 1
        self._next_send = self._clock()

    def reconnected(self) -> None:
        """A new connection replaced one that had gone stale: the server may have restarted."""
        self.generation += 1

    def refused(self, status: int) -> bool:
        """The server rejected the batch for good (a 4xx): drop it, back off like a failure.

        Returns True the first time this status is seen, when the caller should warn.
        """
        self._back_off()
        if status in self._warned:
            return False
        self._warned.add(status)
        return True
