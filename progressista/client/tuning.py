"""The client's tuning constants, in one place: what each one bounds, and in which unit.

Settings a user may change (``push_every``, ``flush_timeout``, ``keepalive``) live in
:mod:`progressista.settings`; these are the fixed numbers behind the policy, chosen here so that
they can be read, and reasoned about, side by side.
"""

from __future__ import annotations

__all__ = [
    "BACKOFF_CAP",
    "FULL_STATE_EVERY",
    "MAX_BATCH",
    "MAX_PENDING_FINALS",
    "MIN_GAP",
    "REFUSED_BACKOFF_CAP",
    "REQUEST_TIMEOUT",
    "TENTATIVE_HOLD",
    "TERMINATE_FLUSH",
    "UNREACHABLE_EXIT_ATTEMPT",
    "UNREACHABLE_WARNING_AFTER",
]

#: Seconds one POST may take (connect, send, reply) before the attempt counts as failed.
REQUEST_TIMEOUT = 5.0

#: Seconds: sends closer together than this are merged, even when bars close one after another.
MIN_GAP = 0.05

#: Events in one POST: the server's default ``--max-batch``. A 413 halves it for that sender.
#: More changed bars than this go out as consecutive batches, back to back.
MAX_BATCH = 1000

#: Final states of closed bars that may wait at once while the server is away (about 1 KB
#: each). Open bars are never dropped: their pending slot is bounded by the bars that exist.
#: Past this, the oldest final state is dropped, and the user is told once.
MAX_PENDING_FINALS = 10_000

#: Seconds: an open bar's update carries only what changed (count, time, rate) but, at least
#: this often, every field, so that a server that lost the task (deleted on the dashboard)
#: has it whole again soon.
FULL_STATE_EVERY = 15.0

#: Seconds: the retry backoff never exceeds this, and neither does a server's ``Retry-After``.
BACKOFF_CAP = 30.0

#: Seconds: nor this while the connection is refused (a server restarting, or not started
#: yet). A refused connect costs both sides microseconds, and a 30 s backoff left every bar's
#: state that old after the server was back (9.6 s in one trial): long enough for a job with
#: a short ``--job-stall-after`` to be called stalled, then moving again.
REFUSED_BACKOFF_CAP = 2.0

#: Seconds a close that may still turn out to be a failure waits before it is sent as completed
#: (where the interpreter cannot tell ``break`` from an exception): time for an exception still
#: unwinding through ``finally`` blocks to reach the crash handler.
TENTATIVE_HOLD = 2.0

#: Seconds a terminated multiprocessing worker spends delivering its bars before it dies.
TERMINATE_FLUSH = 1.0

#: Seconds of failed sends before the one warning that the server cannot be reached.
UNREACHABLE_WARNING_AFTER = 10.0

#: Seconds the exit flush gives a server whose last attempt failed: one short attempt, since
#: the server may be back, and a refused connection answers in microseconds.
UNREACHABLE_EXIT_ATTEMPT = 0.5
