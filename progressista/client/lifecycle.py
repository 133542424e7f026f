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
from .reachability import Reachability
from .sender import ThreadSender
from .tuning import TERMINATE_FLUSH
from .warning import warn

__all__ = [
    "before_exit",
    "flush",
    "install_hooks",
    "reachability_for",
    "report",
    "sender_for",
    "set_reporter",
    "warn_once",
]

#: A server as senders are shared: its URL and its token.
ServerKey = tuple[str, str | None]


def _amount(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _ending(terminated_by: str | None) -> Callable[[Bar], str | None]:
    """How a bar still open when the process ends is reported: None (completed) or the failure.

    A bar that reached its total is done. Otherwise it was cut short when the process was
    terminated, when its thread was still running (a daemon thread), or when it had a total it
    did not reach; a bar without a total whose thread had finished is taken as done.
    """
    running = {thread.ident for thread in threading.enumerate()}
    running.discard(threading.main_thread().ident)  # it is the one running the exit

    def ending(bar: Bar) -> str | None:
        # Ended here, by the exit: the runner of `progressista run` counts it closed.
        task_id = getattr(bar, "remote_task_id", None)
        if task_id is not None:
            report("closed", task_id)
        n, total = bar.remote_progress()
        if total is not None and n >= total:
            return None
        at = f"{_amount(n)}/{_amount(total)}" if total is not None else _amount(n)
        if terminated_by is not None:
            return f"cut short: the process was terminated ({terminated_by}) at {at}"
        if bar.remote_thread in running:
            return f"cut short: the process exited while its thread was still at {at}"
        if total is not None:
            return f"cut short: the process exited with the bar open at {at}"
        return None

    return ending


class Process:
    """The client's state in this process; a forked child starts from a fresh one."""

    def __init__(self) -> None:
        self.senders: dict[ServerKey, ThreadSender] = {}
        #: What is known of each server, shared by its thread and event-loop senders.
        self.servers: dict[ServerKey, Reachability] = {}
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
        #: Told when a bar opens or closes and when the exit flush is done (``progressista
        #: run`` listens, to fail the bars of a process that dies without its exit flush).
        self.reporter: Callable[[str, str | None], None] | None = None

    def sender_for(self, settings: ClientSettings) -> ThreadSender:
        key = (settings.url, settings.token)
        sender = self.senders.get(key)
        if sender is None:
            with self.lock:
                sender = self.senders.get(key)
                if sender is None:
                    install_hooks()
                    self.install_worker_hooks()
                    reach = self.reachability_for(settings)
                    sender = self.senders[key] = ThreadSender(settings, reach)
        return sender

    def reachability_for(self, settings: ClientSettings) -> Reachability:
        key = (settings.url, settings.token)
        reach = self.servers.get(key)
        if reach is None:
            reach = self.servers.setdefault(
                key, Reachability(settings.url, settings.flush_timeout, time.monotonic)
            )
        return reach

    def flush(self, timeout: float | None) -> bool:
        """Deliver what is pending now, bars staying open (see :func:`flush`).

        Waits only as long as the server's reachability allows: not at all while its last
        attempt failed, and within what is left of the shared ``flush_timeout`` budget.
        """
        senders = list(self.senders.values())
        if not senders:
            return True
        if timeout is None:
            timeout = max(sender.settings.flush_timeout for sender in senders)
        for sender in senders:
            sender.outbox.hurry()
            sender.wake()
        allowed = max(sender.reach.allowance(timeout) for sender in senders)
        if allowed <= 0:
            return not any(sender.undelivered for sender in senders)
        started = time.monotonic()
        while True:
            waiting = [sender for sender in senders if sender.undelivered]
            if not waiting:
                return True
            waited = time.monotonic() - started
            if waited >= allowed or all(sender.reach.known_down for sender in waiting):
                for sender in waiting:
                    sender.reach.spent(waited, delivered=False)
                return False
            time.sleep(0.005)

    def finish(self, timeout: float | None = None, terminated_by: str | None = None) -> bool:
        """The exit flush: end every open bar, deliver, and stop the senders.

        ``terminated_by`` names the signal that ends the process, if one does: its unfinished
        bars were cut short.
        """
        for callback in list(self.exit_callbacks):
            callback()
        ending = _ending(terminated_by)
        if threading.current_thread() is not threading.main_thread():
            try:
                return self.stop_senders(timeout, ending)
            finally:
                report("exit", None)
        self.flushing = True
        try:
            return self.stop_senders(timeout, ending)
        finally:
            report("exit", None)
            self.flushing = False
            if self.terminate_after_flush:
                _die_by_sigterm()
            if self.interrupted:
                _still_unhandled_interrupt()

    def stop_senders(self, timeout: float | None, ending: Callable[[Bar], str | None]) -> bool:
        """Stop every sender, giving each its last batch, and wait as long as allowed.

        The wait is ``timeout`` (default ``flush_timeout``) at most, less what earlier waits for
        an unresponsive server spent, and one short attempt when the server's last attempt
        failed. What cannot be delivered is reported once.
        """
        senders = list(self.senders.values())
        self.senders.clear()
        for sender in senders:
            sender.stop(ending)
        # A flush may interrupt another (a SIGTERM handler during the exit flush): it must wait for
        # the senders that one stopped, not find the registry empty and report success.
        self.stopping.extend(senders)
        waiting = [sender for sender in self.stopping if not sender.wait(0)]
        if timeout is None:
            timeout = max((sender.settings.flush_timeout for sender in waiting), default=0.0)
        started = time.monotonic()
        for sender in waiting:
            allowed = sender.reach.allowance(timeout, at_exit=True)
            finished = sender.wait(max(0.0, allowed - (time.monotonic() - started)))
            if not finished:
                sender.reach.spent(time.monotonic() - started, delivered=False)
        self.stopping[:] = [sender for sender in self.stopping if not sender.wait(0)]
        done = True
        for sender in {id(sender): sender for sender in [*senders, *waiting]}.values():
            lost = sender.undelivered
            if lost:
                done = False
                message = sender.reach.undelivered_at_exit(lost)
                if message is not None:
                    warn(message)
                    report("warned", sender.reach.url)  # the runner need not say it again
                if sender.reach.unresponsive:
                    # progressista run shares one waiting budget across its processes.
                    report("unresponsive", sender.reach.url)
        return done

    def fail_bars(
        self, thread: int | None, error: BaseException, *, open_bars: bool = True
    ) -> None:
        """An exception escaped ``thread``: the bars it ended are failures (and, with
        ``open_bars``, every bar the thread still has open: the thread is over)."""
        text = describe_exception(error)
        path: set[Location] = set()
        tb = error.__traceback__
        while tb is not None:
            path.add((id(tb.tb_frame), tb.tb_frame.f_code, tb.tb_lineno))
            tb = tb.tb_next
        for sender in list(self.senders.values()):
            sender.outbox.fail(thread, text, path, open_bars=open_bars)

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
        _watch_notebook_cells()
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


def _watch_notebook_cells() -> None:
    """In IPython (a notebook), a cell's uncaught exception never reaches ``sys.excepthook``;
    the shell reports it after the cell. The bars it ended get its text then. Bars still open
    stay open: the kernel lives on, and they may be used by the next cell."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return

    def after_cell(result: Any) -> None:
        error = getattr(result, "error_in_exec", None)
        if isinstance(error, BaseException):
            _process.fail_bars(threading.main_thread().ident, error, open_bars=False)

    shell.events.register("post_run_cell", after_cell)


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
    helper = threading.Thread(
        target=_process.finish, args=(TERMINATE_FLUSH, "SIGTERM"), daemon=True
    )
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
    child.interrupted = parent.interrupted
    child.reporter = parent.reporter
    _process = child


_process = Process()


def sender_for(settings: ClientSettings) -> ThreadSender:
    """The process's sender thread for this server, started on first use."""
    return _process.sender_for(settings)


def install_hooks() -> None:
    """Once per process: crash hooks, the exit flush, and a fresh start in forked children."""
    _process.install_hooks()


def reachability_for(settings: ClientSettings) -> Reachability:
    """What this process knows about the server ``settings`` name (one object per server)."""
    return _process.reachability_for(settings)


def before_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at the start of every exit flush (once registered, for good)."""
    if callback not in _process.exit_callbacks:
        _process.exit_callbacks.append(callback)


def set_reporter(reporter: Callable[[str, str | None], None] | None) -> None:
    """Have ``reporter(what, task_id)`` told "open"/"closed" for each bar and "exit" when the
    exit flush is done. For ``progressista run``; a reporter must be quick and never raise."""
    _process.reporter = reporter


def report(what: str, task_id: str | None) -> None:
    reporter = _process.reporter
    if reporter is not None:
        try:
            reporter(what, task_id)
        except Exception:  # a report is a courtesy to the runner, never worth a crash
            pass


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
