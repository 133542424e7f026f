"""What a process knows about one server: does it answer, since when not, and how much longer
the program may wait for it. Free of I/O, with the clock injected.

Monitoring must never slow the program it monitors. So every wait for delivery (``flush()``,
``await bar.aclose()``, an event loop shutting down, the exit flush) asks here first:

- while the last attempt failed (refused, timed out, 5xx), nobody waits, except the exit flush,
  which makes one short attempt (the server may be back; a refused connection costs
  microseconds);
- otherwise a wait may last what is left of ``flush_timeout``, a budget shared by every wait
  until a send succeeds again: against a server that accepts connections and never answers, a
  whole program, exit included, waits ``flush_timeout`` at most, however many bars and blocks.

It also decides when to say so: one warning once sends have failed for a while (or when the
exit flush could not deliver), and one line when the server answers again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .tuning import UNREACHABLE_EXIT_ATTEMPT, UNREACHABLE_WARNING_AFTER

__all__ = ["Reachability"]


class Reachability:
    """Shared by every sender (thread or event loop) of one process for one server."""

    def __init__(self, url: str, flush_timeout: float, clock: Callable[[], float]) -> None:
        self.url = url
        self.flush_timeout = flush_timeout
        self._clock = clock
        self._lock = threading.Lock()
        #: When sends started failing (None: the last attempt succeeded, or none was made).
        self.down_since: float | None = None
        #: Why the last attempt failed, in a few words.
        self.reason = ""
        #: Seconds waited for delivery since the last success (the budget's spent part).
        self.waited = 0.0
        #: A wait ran out without the server answering: it accepts and never replies.
        self.unresponsive = False
        self._warned = False
        self._told_exit = False

    # Outcomes, from the transports ------------------------------------------------------------

    def succeeded(self) -> str | None:
        """The server answered; returns the line to say if it had been reported unreachable."""
        with self._lock:
            told = self._warned
            self.down_since = None
            self.unresponsive = False
            self.waited = 0.0
            self._warned = False
        if told:
            return f"the server at {self.url} answers again; bars' states are being delivered."
        return None

    def failed(self, reason: str) -> str | None:
        """An attempt failed; returns the warning to give, once, when failures have lasted."""
        now = self._clock()
        with self._lock:
            self.reason = reason
            if self.down_since is None:
                self.down_since = now
            if self._warned or now - self.down_since < UNREACHABLE_WARNING_AFTER:
                return None
            self._warned = True
        return (
            f"progress updates have not reached the server at {self.url} for "
            f"{now - self.down_since:.0f} s ({reason}). Bars keep working here; their state "
            "is sent when the server answers again. Is it running, and is PROGRESSISTA_URL "
            "its address?"
        )

    def told_elsewhere(self) -> None:
        """Another process of the run already said, at its exit, that this server did not
        take its bars: the runner's own line for its task would only repeat it."""
        with self._lock:
            self._told_exit = self._warned = True

    def undelivered_at_exit(self, bars: int) -> str | None:
        """The exit flush could not deliver ``bars`` states; the warning, once. Said even after
        the outage's warning: that one promised delivery when the server answers again, and the
        program is ending without it (the bars stay as last delivered on the server)."""
        with self._lock:
            if self._told_exit or bars == 0:
                return None
            self._told_exit = self._warned = True
            reason = self.reason or "it did not answer in time"
        return (
            f"the final state of {bars} bar{'s' if bars != 1 else ''} could not be delivered "
            f"to the server at {self.url} ({reason})."
        )

    # Waiting ----------------------------------------------------------------------------------

    @property
    def known_down(self) -> bool:
        """The last attempt failed, or a wait ran out: waiting again would only cost time."""
        return self.down_since is not None or self.unresponsive

    def allowance(self, requested: float, *, at_exit: bool = False) -> float:
        """How long a wait for delivery may last now (at most ``requested`` seconds)."""
        with self._lock:
            left = max(0.0, self.flush_timeout - self.waited)
            if self.known_down:
                return min(requested, left, UNREACHABLE_EXIT_ATTEMPT) if at_exit else 0.0
            return min(requested, left)

    def spent(self, seconds: float, *, delivered: bool) -> None:
        """A wait took ``seconds``; one that ended undelivered marks the server unresponsive."""
        with self._lock:
            if not delivered:
                self.waited += max(0.0, seconds)
                self.unresponsive = True
