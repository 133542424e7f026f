"""The threaded sender: one background thread per process and server, shared by every bar.

It sleeps until its outbox says a batch is due, POSTs it over one keep-alive connection
(``http.client``, imported in the thread so that importing the client stays as cheap as importing
tqdm), and reports the outcome back to the outbox. Nothing here can raise into or block the
worker: the thread is a daemon, and the process's life cycle (:mod:`.lifecycle`) decides how long
anyone waits for it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..settings import ClientSettings
from .exchange import (
    apply_failure,
    apply_reply,
    build_body,
    report_dropped,
    request_headers,
)
from .outbox import Bar, Outbox, Source
from .reachability import Reachability
from .tuning import BACKOFF_CAP, REQUEST_TIMEOUT

if TYPE_CHECKING:
    from http.client import HTTPConnection

__all__ = ["ThreadSender"]

log = logging.getLogger("progressista.client")


#: Set once a sender thread has imported what sending needs (see ThreadSender._run).
_prepared = threading.Event()
_fork_guard_installed = False


def _before_fork() -> None:
    """Let a sender thread finish its imports before this process forks.

    An import holds its module's lock; forked in the middle of one, the child would find the
    lock held by a thread that does not exist there, and its own sender would wait on it for
    ever. The imports take milliseconds, once.
    """
    _prepared.wait(1.0)


class _StaleConnection(Exception):
    """A request on a kept-alive connection failed: it may just have been closed meanwhile."""


class ThreadSender:
    """Delivers one outbox to one server from a daemon thread."""

    def __init__(self, settings: ClientSettings, reach: Reachability) -> None:
        self.settings = settings
        #: What the process knows about this server (shared with its event-loop senders).
        self.reach = reach
        self._wake = threading.Event()
        self.outbox = Outbox(
            push_every=settings.push_every,
            keepalive=settings.keepalive,
            clock=time.monotonic,
            # A private generator: the caller's seeded `random` sequence must not move.
            random=random.Random().random,
            on_ready=self._wake.set,
        )
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/progress"
        self._headers = request_headers(settings)
        self._connection: HTTPConnection | None = None
        self._stopping = False
        #: Bars in the batch being sent right now (a flush waits for them).
        self.in_flight: set[str] = set()
        self._finished = threading.Event()
        global _fork_guard_installed
        if not _fork_guard_installed:
            _fork_guard_installed = True
            os.register_at_fork(before=_before_fork)
        self._thread = threading.Thread(target=self._run, name="progressista-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now rather than when its schedule says."""
        self._wake.set()

    def _run(self) -> None:
        try:
            try:
                # What every send needs, imported now rather than in the middle of an exit
                # flush: an import there may run exec, which has CPython forget an unhandled
                # Ctrl-C.
                import encodings.idna  # noqa: F401  # (what getaddrinfo imports on a first connect)
                import http.client  # noqa: F401

                import msgspec  # noqa: F401
            finally:
                # (Never set before 2026-12-02: every fork after a bar waited the full second,
                # and a pool of four workers took four seconds to start.)
                _prepared.set()
            while not self._step():
                pass
        finally:
            self._close_connection()
            self._finished.set()

    def _step(self) -> bool:
        """One turn of the sender's loop; True when the thread should end."""
        try:
            delay = self.outbox.delay()
            if self._stopping:
                # Exit flush: no waiting for the schedule, and one failure ends it.
                return self.outbox.pending == 0 or not self._send(self.outbox.take(everything=True))
            if delay is None or delay > 0:
                self._wake.wait(None if delay is None else min(delay, BACKOFF_CAP))
                self._wake.clear()
                return False
            self._send(self.outbox.take())
            return False
        except Exception:
            # A bug here must neither take the worker down nor silence every bar for the rest
            # of the process: log it, pause, carry on.
            log.exception("progressista's sender hit an unexpected error; continuing")
            time.sleep(min(1.0, self.settings.push_every))
            return self._stopping

    def _send(self, batch: dict[str, Source]) -> bool:
        """POST one batch and tell the outbox how it went; False when it must be retried."""
        report_dropped(self.outbox, self.settings.url)
        self.in_flight = set(batch)
        try:
            return self._deliver(batch)
        finally:
            self.in_flight = set()

    def _deliver(self, batch: dict[str, Source]) -> bool:
        body = build_body(batch)
        if body is None:
            self.outbox.delivered()
            return True
        try:
            try:
                status, retry_after, reply = self._post(body.data)
            except _StaleConnection:
                # The kept-alive connection had been closed (a server restart, an idle timeout):
                # a server that restarted has forgotten the bars, so they go again in full.
                self.outbox.reconnected()
                body = build_body(batch)
                if body is None:
                    self.outbox.delivered()
                    return True
                status, retry_after, reply = self._post(body.data)
        except Exception as error:  # OSError, http.client.HTTPException and kin
            apply_failure(self.outbox, self.reach, batch, error)
            return False
        return apply_reply(self.outbox, self.reach, batch, body, status, retry_after, reply)

    def _post(self, body: bytes) -> tuple[int, str | None, bytes]:
        """One request; raises _StaleConnection if a kept-alive connection turned out closed."""
        fresh = self._connection is None
        connection = self._connect()
        try:
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            reply = response.read()
        except Exception as error:
            self._close_connection()
            if fresh:
                raise
            raise _StaleConnection from error
        if response.getheader("Connection", "").lower() == "close":
            self._close_connection()
        return response.status, response.getheader("Retry-After"), reply

    def _connect(self) -> HTTPConnection:
        if self._connection is None:
            import http.client

            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=REQUEST_TIMEOUT)
        return self._connection

    def _close_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # pragma: no cover
                pass
            self._connection = None

    def stop(self, ending: Callable[[Bar], str | None]) -> None:
        """Send what is pending (open bars ended as ``ending`` says) and end the thread."""
        self.outbox.close_open_bars(ending)
        self._stopping = True
        self._wake.set()

    def wait(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still busy (say, with a hung server)."""
        return self._finished.wait(timeout)

    @property
    def undelivered(self) -> int:
        """Bars whose latest state is not delivered yet: pending, or in the batch being sent."""
        return len(self.outbox.pending_keys() | self.in_flight)
