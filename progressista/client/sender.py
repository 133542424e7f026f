"""The threaded sender: one background thread per process and server, shared by every bar.

It sleeps until its outbox says a batch is due, POSTs it over one keep-alive connection
(``http.client``, imported in the thread so that importing the client stays as cheap as importing
tqdm), and reports the outcome back to the outbox. Nothing here can raise into or block the
worker: the thread is a daemon, at exit pending state gets ``flush_timeout`` seconds, and a
process that forks starts afresh in the child.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import sys
import threading
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

from ..schema import Event
from ..settings import ClientSettings
from .outbox import Outbox, Source

__all__ = ["ProgressistaWarning", "ThreadSender", "flush", "sender_for", "settle"]

log = logging.getLogger("progressista.client")

#: Seconds a request may take before the server counts as unreachable for this attempt.
REQUEST_TIMEOUT = 5.0


class ProgressistaWarning(UserWarning):
    """The server refused progress updates (a wrong token, say); issued once per cause."""


def request_headers(settings: ClientSettings) -> dict[str, str]:
    """What every POST /progress carries, from either transport."""
    headers = {"Content-Type": "application/json", "User-Agent": "progressista"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


def encode(events: list[Event]) -> bytes:
    return json.dumps(events, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()


def build_events(batch: dict[str, Source]) -> list[Event]:
    events = []
    for source in batch.values():
        try:
            events.append(source.remote_event())
        except Exception:  # a bar in an odd state must not keep the others from the server
            log.debug("could not read a bar's state", exc_info=True)
    return events


def retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def refusal_warning(url: str, status: int, reply: bytes) -> str:
    try:
        reason = json.loads(reply)["error"]
    except (ValueError, KeyError, TypeError):
        reason = reply[:200].decode(errors="replace") or "no reason given"
    return (
        f"progressista: the server at {url} refused progress updates with HTTP {status}: "
        f"{reason}. Bars keep working; their remote state is dropped until this is fixed."
    )


def _warn(message: str) -> None:
    try:
        warnings.warn(message, ProgressistaWarning, stacklevel=2)
    except Exception:  # warnings turned into errors must not kill the sender
        log.warning(message)


def settle(
    outbox: Outbox,
    url: str,
    batch: dict[str, Source],
    status: int,
    reply_after: str | None,
    reply: bytes,
) -> bool:
    """Tell the outbox how the server answered; False when the batch must be retried."""
    if status < 300:
        outbox.delivered()
    elif status == 413 and len(batch) > 1:
        outbox.shrink(batch)
    elif status == 429 or status >= 500:
        outbox.retry(batch, retry_after(reply_after))
        return False
    elif outbox.refused(status):
        _warn(refusal_warning(url, status, reply))
    return True


class ThreadSender:
    """Delivers one outbox to one server from a daemon thread."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
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
        self._connection: Any = None
        self._stopping = False
        #: A batch is being sent right now (flush() waits for it).
        self._busy = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progressista-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
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
                self._wake.wait(delay)
                self._wake.clear()
                return False
            self._busy = True
            try:
                self._send(self.outbox.take())
            finally:
                self._busy = False
            return False
        except Exception:
            # A bug here must neither take the worker down nor silence every bar for the rest
            # of the process: log it, pause, carry on.
            log.exception("progressista's sender hit an unexpected error; continuing")
            time.sleep(min(1.0, self.settings.push_every))
            return self._stopping

    def _send(self, batch: dict[str, Source]) -> bool:
        """POST one batch and tell the outbox how it went; False when it must be retried."""
        events = build_events(batch)
        if not events:
            self.outbox.delivered()
            return True
        try:
            status, reply_after, reply = self._post(encode(events))
        except Exception as error:  # OSError, http.client.HTTPException and kin
            log.debug("cannot reach %s: %r", self.settings.url, error)
            self.outbox.retry(batch)
            return False
        return settle(self.outbox, self.settings.url, batch, status, reply_after, reply)

    def _post(self, body: bytes) -> tuple[int, str | None, bytes]:
        """One request on the kept-alive connection; a stale one is replaced once."""
        for attempt in (1, 2):
            fresh = self._connection is None
            connection = self._connect()
            try:
                connection.request("POST", self._path, body, self._headers)
                response = connection.getresponse()
                reply = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._close_connection()
                return response.status, response.getheader("Retry-After"), reply
            except Exception:
                self._close_connection()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> Any:
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

    def stop(self) -> None:
        """Send what is pending (open bars count as closed) and end the thread."""
        self.outbox.close_open_bars(lambda bar: bar.remote_final_event())  # type: ignore[attr-defined]
        self._stopping = True
        self._wake.set()

    def wait(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still busy (say, with a hung server)."""
        return self._finished.wait(timeout)


_senders: dict[tuple[str, str | None], ThreadSender] = {}
#: Senders a flush has stopped that may still be delivering.
_stopping: list[ThreadSender] = []
_senders_lock = threading.Lock()
_hooks_installed = False


def sender_for(settings: ClientSettings) -> ThreadSender:
    """The process's sender for this server, started on first use."""
    key = (settings.url, settings.token)
    sender = _senders.get(key)
    if sender is None:
        with _senders_lock:
            sender = _senders.get(key)
            if sender is None:
                install_hooks()
                _install_worker_hooks()
                sender = _senders[key] = ThreadSender(settings)
    return sender


def flush(timeout: float | None = None, *, close_bars: bool = False) -> bool:
    """Deliver everything pending now, within ``timeout`` seconds (default: ``flush_timeout``).

    Bars stay open and keep streaming. With ``close_bars=True`` this is what runs at interpreter
    exit: every open bar is closed, and the senders stop; call it so before ``os._exit``.
    Returns False if some state could not be delivered in time.
    """
    if close_bars:
        return _finish(timeout)
    senders = list(_senders.values())
    if not senders:
        return True
    if timeout is None:
        timeout = max(sender.settings.flush_timeout for sender in senders)
    deadline = time.monotonic() + timeout
    for sender in senders:
        sender.outbox.hurry()
        sender._wake.set()
    while time.monotonic() < deadline:
        if all(sender.outbox.pending == 0 and not sender._busy for sender in senders):
            return True
        time.sleep(0.005)
    return False


def _finish(timeout: float | None = None) -> bool:
    """The exit flush: close every open bar, deliver, and stop the senders."""
    global _flushing
    aio = sys.modules.get("progressista.client.aio")
    if aio is not None:  # loops closed without cancelling their senders left work behind
        aio.release_closed_loops()
    if threading.current_thread() is not threading.main_thread():
        return _flush(timeout)
    _flushing = True
    try:
        return _flush(timeout)
    finally:
        _flushing = False
        if _terminate_after_flush:
            _die_by_sigterm()


def _die_by_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _flush(timeout: float | None) -> bool:
    senders = list(_senders.values())
    _senders.clear()
    for sender in senders:
        sender.stop()
    # A flush may interrupt another (a SIGTERM handler during the exit flush): it must wait for
    # the senders that one stopped, not find the registry empty and report success.
    _stopping.extend(senders)
    waiting = [sender for sender in _stopping if not sender.wait(0)]
    if not waiting:
        _stopping.clear()
        return all(sender.outbox.pending == 0 for sender in senders)
    if timeout is None:
        timeout = max(sender.settings.flush_timeout for sender in waiting)
    deadline = time.monotonic() + timeout
    done = True
    for sender in waiting:
        done = sender.wait(max(0.0, deadline - time.monotonic())) and done
        done = done and sender.outbox.pending == 0
    _stopping[:] = [sender for sender in _stopping if not sender.wait(0)]
    return done


def _fail_bars(thread: int | None, error: BaseException) -> None:
    """An exception escaped ``thread``: the bars it ended are failures."""
    from .bar import describe_exception

    text = describe_exception(error)
    path = set()
    tb = error.__traceback__
    while tb is not None:
        path.add((id(tb.tb_frame), tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    for sender in list(_senders.values()):
        sender.outbox.fail(thread, text, path, lambda bar: bar.remote_final_event())  # type: ignore[attr-defined]


def install_hooks() -> None:
    """Once per process: crash hooks, the exit flush, and a fresh start in forked children."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous_excepthook = sys.excepthook

    def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        try:
            _fail_bars(threading.main_thread().ident, error)
        finally:
            previous_excepthook(kind, error, tb)

    previous_thread_hook = threading.excepthook

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        try:
            if args.exc_value is not None and args.thread is not None:
                _fail_bars(args.thread.ident, args.exc_value)
        finally:
            previous_thread_hook(args)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    atexit.register(_finish)
    os.register_at_fork(after_in_child=_forget_parent_senders)


def _forget_parent_senders() -> None:
    # The parent's threads do not exist here, and its pending state is the parent's to send.
    # A lock the parent's sender thread held at the fork would stay held for ever in the child:
    # inherited outboxes and bars get fresh ones, so using an inherited bar cannot deadlock.
    global _worker_hooks_installed
    for sender in [*_senders.values(), *_stopping]:
        sender.outbox.renew_lock()
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        if hasattr(bar, "_remote_lock"):
            bar._remote_lock = threading.Lock()
    _senders.clear()
    _stopping.clear()
    _worker_hooks_installed = False


_worker_hooks_installed = False
#: The main thread is inside flush(), and a SIGTERM arrived meanwhile.
_flushing = False
_terminate_after_flush = False

#: Seconds a terminated multiprocessing worker spends delivering its bars before it dies.
TERMINATE_FLUSH = 1.0


def _install_worker_hooks() -> None:
    """In a multiprocessing worker, deliver at exit even though atexit will not run.

    A forked worker leaves through ``os._exit`` (multiprocessing runs its own finalizers, not
    atexit's), and ``with Pool(...)`` ends by terminating its workers with SIGTERM. So: a
    multiprocessing finalizer, and a SIGTERM handler (only where none is set) that flushes for
    at most TERMINATE_FLUSH seconds and then dies by SIGTERM as before.
    """
    global _worker_hooks_installed
    multiprocessing = sys.modules.get("multiprocessing")
    if _worker_hooks_installed or multiprocessing is None:
        return
    if multiprocessing.parent_process() is None:
        return
    _worker_hooks_installed = True
    from multiprocessing import util

    util.Finalize(None, _finish, exitpriority=100)
    import signal

    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):

        def terminated(signum: int, frame: Any) -> None:
            global _terminate_after_flush
            # Pool.terminate() and then the parent's exit each send SIGTERM: ignore the rest.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if _flushing:
                # The interrupted code is the exit flush itself (it may hold the very locks
                # a second flush would wait on): let it finish, then die as asked.
                _terminate_after_flush = True
                return
            # Flush from another thread, joined with a timeout: whatever lock the interrupted
            # code holds, this handler cannot deadlock on it, only time out.
            helper = threading.Thread(target=_finish, args=(TERMINATE_FLUSH,), daemon=True)
            helper.start()
            helper.join(TERMINATE_FLUSH + 0.5)
            _die_by_sigterm()

        signal.signal(signal.SIGTERM, terminated)
