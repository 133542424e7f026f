"""The client's life in one process: its senders, its exit, its crashes, its forks and signals.

One :class:`Process` object owns what used to be module globals: the thread sender per server,
the hooks installed once (``sys.excepthook``, ``threading.excepthook``, ``atexit``, the fork
handler, a multiprocessing worker's finalizer and SIGTERM handler), and the work other modules
register for the exit flush (the asyncio client's closed loops). The HTTP sending itself is
:mod:`.sender`'s; what a bar is, :mod:`.bar`'s.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..settings import ClientSettings
from .event import describe_exception
from .outbox import Bar, Location
from .sender import ThreadSender
from .tuning import TERMINATE_FLUSH
from .warning import warn

__all__ = ["before_exit", "flush", "install_hooks", "sender_for", "warn_once"]

#: A server as senders are shared: its URL and its token.
ServerKey = tuple[str, str | None]


def _ended_at_exit(bar: Bar) -> tuple[str, str | None]:
    """How a bar still open when the process exits is reported."""
    return "close", None


class Process:
    """The client's state in this process; a forked child starts from a fresh one."""

    def __init__(self) -> None:
        self.senders: dict[ServerKey, ThreadSender] = {}
        #: Senders an exit flush has stopped that may still be delivering.
        self.stopping: list[ThreadSender] = []
        self.lock = threading.Lock()
        self.hooks_installed = False
        self.worker_hooks_installed = False
        #: The main thread is inside the exit flush (a SIGTERM handler must not start another).
        self.flushing = False
        #: A SIGTERM arrived during the exit flush: die by it once the flush is done.
        self.terminate_after_flush = False
        #: Work to do before the exit flush (the asyncio client hands over closed loops' work).
        self.exit_callbacks: list[Callable[[], None]] = []
        self.warned: set[str] = set()
        #: The main thread ended with an uncaught KeyboardInterrupt (see finish()).
        self.interrupted = False

    def sender_for(self, settings: ClientSettings) -> ThreadSender:
        key = (settings.url, settings.token)
        sender = self.senders.get(key)
        if sender is None:
            with self.lock:
                sender = self.senders.get(key)
                if sender is None:
                    install_hooks()
                    self.install_worker_hooks()
                    sender = self.senders[key] = ThreadSender(settings)
        return sender

    def flush(self, timeout: float | None) -> bool:
        """Deliver what is pending now, bars staying open (see :func:`flush`)."""
        senders = list(self.senders.values())
        if not senders:
            return True
        if timeout is None:
            timeout = max(sender.settings.flush_timeout for sender in senders)
        deadline = time.monotonic() + timeout
        for sender in senders:
            sender.outbox.hurry()
            sender.wake()
        while time.monotonic() < deadline:
            if all(sender.outbox.pending == 0 and not sender.busy for sender in senders):
                return True
            time.sleep(0.005)
        return False

    def finish(self, timeout: float | None = None) -> bool:
        """The exit flush: close every open bar, deliver, and stop the senders."""
        for callback in list(self.exit_callbacks):
            callback()
        if threading.current_thread() is not threading.main_thread():
            return self.stop_senders(timeout)
        self.flushing = True
        try:
            return self.stop_senders(timeout)
        finally:
            self.flushing = False
            if self.terminate_after_flush:
                _die_by_sigterm()
            if self.interrupted:
                _still_unhandled_interrupt()

    def stop_senders(self, timeout: float | None) -> bool:
        """Stop every sender, giving each its last batch, and wait for them at most ``timeout``."""
        senders = list(self.senders.values())
        self.senders.clear()
        for sender in senders:
            sender.stop(_ended_at_exit)
        # A flush may interrupt another (a SIGTERM handler during the exit flush): it must wait for
        # the senders that one stopped, not find the registry empty and report success.
        self.stopping.extend(senders)
        waiting = [sender for sender in self.stopping if not sender.wait(0)]
        if not waiting:
            self.stopping.clear()
            return all(sender.outbox.pending == 0 for sender in senders)
        if timeout is None:
            timeout = max(sender.settings.flush_timeout for sender in waiting)
        deadline = time.monotonic() + timeout
        done = True
        for sender in waiting:
            done = sender.wait(max(0.0, deadline - time.monotonic())) and done
            done = done and sender.outbox.pending == 0
        self.stopping[:] = [sender for sender in self.stopping if not sender.wait(0)]
        return done

    def fail_bars(self, thread: int | None, error: BaseException) -> None:
        """An exception escaped ``thread``: the bars it ended are failures."""
        text = describe_exception(error)
        path: set[Location] = set()
        tb = error.__traceback__
        while tb is not None:
            path.add((id(tb.tb_frame), tb.tb_frame.f_code, tb.tb_lineno))
            tb = tb.tb_next
        for sender in list(self.senders.values()):
            sender.outbox.fail(thread, text, path)

    def install_hooks(self) -> None:
        """Once per process: crash hooks, the exit flush, and a fresh start in forked children."""
        if self.hooks_installed:
            return
        self.hooks_installed = True
        previous_excepthook = sys.excepthook

        def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
            try:
                _process.interrupted = kind is KeyboardInterrupt
                _process.fail_bars(threading.main_thread().ident, error)
            finally:
                previous_excepthook(kind, error, tb)

        previous_thread_hook = threading.excepthook

        def thread_excepthook(args: threading.ExceptHookArgs) -> None:
            try:
                if args.exc_value is not None and args.thread is not None:
                    _process.fail_bars(args.thread.ident, args.exc_value)
            finally:
                previous_thread_hook(args)

        sys.excepthook = excepthook
        threading.excepthook = thread_excepthook
        atexit.register(lambda: _process.finish())
        os.register_at_fork(after_in_child=_start_afresh_in_child)

    def install_worker_hooks(self) -> None:
        """In a multiprocessing worker, deliver at exit even though atexit will not run.

        A forked worker leaves through ``os._exit`` (multiprocessing runs its own finalizers, not
        atexit's), and ``with Pool(...)`` ends by terminating its workers with SIGTERM. So: a
        multiprocessing finalizer, and a SIGTERM handler (only where none is set) that flushes
        for at most TERMINATE_FLUSH seconds and then dies by SIGTERM as before.
        """
        multiprocessing = sys.modules.get("multiprocessing")
        if self.worker_hooks_installed or multiprocessing is None:
            return
        if multiprocessing.parent_process() is None:
            return
        self.worker_hooks_installed = True
        from multiprocessing import util

        util.Finalize(None, lambda: _process.finish(), exitpriority=100)
        import signal

        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM in a multiprocessing worker: deliver for a moment, then die by it as asked."""
    import signal

    # Pool.terminate() and then the parent's exit each send SIGTERM: ignore the rest.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _process.flushing:
        # The interrupted code is the exit flush itself (it may hold the very locks a second
        # flush would wait on): let it finish, then die as asked.
        _process.terminate_after_flush = True
        return
    # Flush from another thread, joined with a timeout: whatever lock the interrupted code holds,
    # this handler cannot deadlock on it, only time out.
    helper = threading.Thread(target=_process.finish, args=(TERMINATE_FLUSH,), daemon=True)
    helper.start()
    helper.join(TERMINATE_FLUSH + 0.5)
    _die_by_sigterm()


def _still_unhandled_interrupt() -> None:
    """Tell CPython again that a KeyboardInterrupt went unhandled, so the process dies by SIGINT.

    CPython remembers it in a flag that every ``exec`` or ``eval`` clears, and the exit flush may
    have run some (an import in the sender thread, racing the interrupt at start-up). Without the
    flag the process exits with status 1, and a shell, or ``progressista run``, would not know
    that the user pressed Ctrl-C. Evaluating a KeyboardInterrupt sets the flag again.
    """
    try:
        exec("raise KeyboardInterrupt")
    except KeyboardInterrupt:
        pass


def _die_by_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _start_afresh_in_child() -> None:
    """After a fork: the parent's threads do not exist here, and its pending state is its own.

    A lock the parent's sender thread held at the fork would stay held for ever in the child:
    inherited outboxes get fresh ones, so using an inherited bar cannot deadlock.
    """
    global _process
    parent = _process
    for sender in [*parent.senders.values(), *parent.stopping]:
        sender.outbox.renew_lock()
    child = Process()
    child.hooks_installed = parent.hooks_installed  # the hooks above call whatever is current
    child.exit_callbacks = parent.exit_callbacks
    child.warned = parent.warned
    _process = child


_process = Process()


def sender_for(settings: ClientSettings) -> ThreadSender:
    """The process's sender thread for this server, started on first use."""
    return _process.sender_for(settings)


def install_hooks() -> None:
    """Once per process: crash hooks, the exit flush, and a fresh start in forked children."""
    _process.install_hooks()


def before_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at the start of every exit flush (once registered, for good)."""
    if callback not in _process.exit_callbacks:
        _process.exit_callbacks.append(callback)


def warn_once(message: str) -> None:
    """Warn with ``message`` unless this process already did."""
    if message not in _process.warned:
        _process.warned.add(message)
        warn(message)


def flush(timeout: float | None = None, *, close_bars: bool = False) -> bool:
    """Deliver everything pending now, within ``timeout`` seconds (default: ``flush_timeout``).

    Bars stay open and keep streaming. With ``close_bars=True`` this is what runs at interpreter
    exit: every open bar is closed, and the senders stop; call it so before ``os._exit``.
    Returns False if some state could not be delivered in time.
    """
    if close_bars:
        return _process.finish(timeout)
    return _process.flush(timeout)


def thread_senders() -> list[ThreadSender]:
    """The thread senders running now (for tests and diagnostics)."""
    return list(_process.senders.values())
