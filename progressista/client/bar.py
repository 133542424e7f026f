"""RemoteTqdm: a true tqdm, whose state also streams to the Progressista server.

Only ``display()`` (every throttled repaint, ``set_description``, ``set_postfix``, ``reset``) and
``close()`` are hooked, as tqdm's own front ends do: ``update()`` and ``__iter__`` are the hot
path and stay tqdm's. ``display()`` just marks the bar as changed in its sender's outbox; the
sender builds the event when it sends (:class:`.event.EventMaker`), so a repaint costs one dict
store.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

from tqdm import tqdm

from ..schema import MAX_ERROR_CHARS, Event
from ..settings import ClientSettings, SettingError, env_name
from . import nesting
from .ending import Site, is_failure, iteration_site, loop_release, watch_unwinding
from .event import (
    EventMaker,
    build_meta,
    default_task_id,
    describe_exception,
    given_task_id,
    progress_of,
)
from .lifecycle import report, sender_for, warn_once
from .outbox import FinalEvent, Location, Outbox, WeakSource

__all__ = ["RemoteTqdm", "trange"]

_TQDM_ITER = tqdm.__iter__.__code__

_VARIABLES = tuple(env_name(setting.name) for setting in dataclasses.fields(ClientSettings))

#: The settings the last bar was built with, and what they were read from: bars mostly share
#: them, and reading and checking every variable cost each bar 80 µs.
_last_settings: tuple[tuple[object, ...], ClientSettings] | None = None


#: Keyword values the memo compares: exactly these types (a Decimal equal to 1 parses
#: differently, and an array's == does not say yes or no).
_PLAIN = (type(None), str, int, float)


def _settings(**given: Any) -> ClientSettings:
    """``ClientSettings.from_env(os.environ, **given)``, the last bar's when nothing differs."""
    global _last_settings
    if any(type(value) not in _PLAIN for value in given.values()):
        return ClientSettings.from_env(os.environ, **given)
    key = (
        *map(os.environ.get, _VARIABLES),
        *((type(value), value) for value in given.values()),
    )
    last = _last_settings
    if last is not None and last[0] == key:
        return last[1]
    settings = ClientSettings.from_env(os.environ, **given)
    _last_settings = (key, settings)
    return settings


def _location(frame: FrameType | None) -> Location | None:
    return None if frame is None else (id(frame), frame.f_code, frame.f_lineno)


class _TqdmLock:
    """``RemoteTqdm._lock``: tqdm's own lock, so plain and remote bars share one screen.

    It is an attribute of RemoteTqdm's own, as ``_lock`` is of tqdm, so code written for tqdm can
    replace it (``set_lock``) or delete it (tqdm's tests do) exactly as it would tqdm's.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return tqdm.get_lock()  # type: ignore[no-untyped-call]  # types-tqdm leaves it untyped


class RemoteTqdm(tqdm):  # type: ignore[type-arg]  # tqdm is generic only in the stubs
    """``tqdm.tqdm`` that also shows up on a Progressista server.

    Takes everything tqdm takes, plus keyword-only options, each defaulting to its
    ``PROGRESSISTA_*`` environment variable:

    ``remote``
        False makes this a plain tqdm bar.
    ``task_id``
        The bar's identity on the server; by default program, pid, a counter and the host.
    ``meta``
        Extra labels (string, number, boolean or null values) shown with the bar.
    ``url``, ``token``, ``push_every``, ``job``
        Which server, its write token, seconds between batches, and the job label.

    A disabled bar (``disable=True``) is not remote either. Network trouble never reaches the
    caller: failed sends are retried in the background, a refusal is one warning.
    """

    _lock = _TqdmLock()
    #: The bar's id on the server; None for a bar that is not remote.
    remote_task_id: str | None = None
    #: The thread the bar was created in (the crash handler fails that thread's bars).
    remote_thread: int = 0
    _remote_outbox: Outbox | None = None
    _remote_closed = False
    _remote_from_gc = False
    _remote_exit_error: BaseException | str | None = None
    #: A close not yet decided (tentative or refinable, see Outbox.resolve_tentative).
    _remote_final: FinalEvent | None = None
    #: Where the current loop over the bar asked for its iterator (see ending.loop_release).
    _remote_site: Site | None = None

    def __init__(
        self,
        *args: Any,
        remote: bool = True,
        task_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        url: str | None = None,
        token: str | None = None,
        push_every: float | None = None,
        job: str | None = None,
        **kwargs: Any,
    ) -> None:
        outbox = None
        settings = None
        if remote and kwargs.get("disable") is not True:  # a disabled bar is not remote either
            try:
                settings = _settings(url=url, token=token, push_every=push_every, job=job)
            except SettingError as error:
                # A monitoring setting must not stop the job: the bar stays a plain tqdm.
                warn_once(
                    f"{error}. Bars are not sent to a server until this is fixed; tqdm still "
                    "draws them."
                )
        if settings is not None:
            key = given_task_id(task_id) if task_id else default_task_id()
            self._remote_maker = EventMaker(key, build_meta(settings, meta))
            self.remote_thread = threading.get_ident()
            outbox = self._remote_outbox_for(settings)
        super().__init__(*args, **kwargs)
        if outbox is not None and not self.disable:
            nested = self._remote_nesting(meta)
            if nested:
                self._remote_maker.relabel(nested)
            self.remote_task_id = self._remote_maker.task_id
            self._remote_outbox = outbox
            self._remote_handle = WeakSource(self)
            outbox.opened(self.remote_task_id, self)
            outbox.put(self.remote_task_id, self._remote_handle)
            nesting.opened(self)
            report("open", self.remote_task_id)

    def _remote_nesting(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """``leave: false`` for a bar tqdm erases when it ends, and the ``parent`` it is nested
        in (:mod:`.nesting`), unless the caller's own labels say."""
        # tqdm's rule: leave=None keeps only the outermost bar.
        leave = bool(self.leave) if self.leave is not None else abs(getattr(self, "pos", 0)) == 0
        labels: dict[str, Any] = {}
        if not leave:
            labels["leave"] = False
        parent = nesting.parent_of(leave=leave)
        if parent is not None:
            labels["parent"] = parent
        return {key: value for key, value in labels.items() if key not in (given or {})}

    @staticmethod
    def _remote_outbox_for(settings: ClientSettings) -> Outbox:
        """The outbox this bar's state goes to: the process's sender thread for the server."""
        return sender_for(settings).outbox

    @classmethod
    def get_lock(cls) -> Any:
        """tqdm's ``get_lock``, keeping ``_lock`` an attribute of this class, as tqdm does.

        After ``del RemoteTqdm._lock`` tqdm would make a new lock for itself; here the class
        takes tqdm's lock again rather than the one it would otherwise inherit silently.
        """
        if "_lock" not in vars(cls):
            cls._lock = tqdm.get_lock()  # type: ignore[no-untyped-call]  # untyped in types-tqdm
        return cls._lock

    @property
    def remote_meta(self) -> dict[str, Any]:
        """The labels this bar carries on the server (empty for a bar that is not remote)."""
        return self._remote_maker.meta if self.remote_task_id is not None else {}

    def remote_relabel(self, **labels: str | int | float | bool | None) -> None:
        """Add or change labels of this bar on the server, with its next update."""
        if self.remote_task_id is not None:
            self._remote_maker.relabel(labels)

    # The outbox's view of the bar (outbox.Bar) ----------------------------------------------

    def remote_event(self) -> Event:
        """The open bar's current state as an event (called by the sender when it sends).

        Raises LookupError once the bar is closed: its final event, queued by close(), is the
        only one that may follow.
        """
        maker = self._remote_maker
        # No lock (this runs for every changed bar, every push): the seq is taken before the
        # check, and close() sets the flag before taking its own, so an update that passes the
        # check is always outranked by the close.
        seq = maker.next_seq()
        if self._remote_closed:
            raise LookupError("the bar is closed")
        outbox = self._remote_outbox
        generation = outbox.generation if outbox is not None else 0
        return maker.event(self, "update" if maker.started else "start", generation, seq)

    def remote_final_event(self, status: str = "close", error: str | None = None) -> Event:
        """The event that ends the bar, numbered after every event sent before it."""
        self._remote_closed = True
        event = self._remote_maker.event(self, status)
        if error is not None:
            event["error"] = error[:MAX_ERROR_CHARS]
        return event

    def remote_progress(self) -> tuple[int | float, int | float | None]:
        """Where the bar stands: (n, total), as the last event says."""
        return progress_of(self)

    @property
    def remote_is_open(self) -> bool:
        """Whether the bar is remote and not closed yet."""
        return self.remote_task_id is not None and not self._remote_closed

    def remote_moved(self, outbox: Outbox) -> None:
        """From now on this bar's updates and close go to ``outbox``."""
        self._remote_outbox = outbox

    # tqdm's hooks ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        """tqdm's own iterator, untouched (the hot path); only where the loop began is noted,
        once per loop, so that close() can tell ``break`` from an exception."""
        if self._remote_outbox is not None:
            self._remote_site = iteration_site()
            nesting.looping(self)
        return super().__iter__()

    def display(self, *args: Any, **kwargs: Any) -> Any:
        shown = super().display(*args, **kwargs)  # any front end's signature (notebook's too)
        outbox = self._remote_outbox
        if outbox is not None and not self._remote_closed:
            outbox.put(self._remote_maker.task_id, self._remote_handle)
        return shown

    def close(self) -> None:
        outbox = self._remote_outbox
        if outbox is None or self._remote_closed or getattr(self, "disable", True):
            super().close()
            return
        error = self._remote_exit_error
        tentative = self._remote_from_gc
        unwound: FrameType | None = None  # the frame an exception is unwinding, if one is
        origin = None
        if error is None and not tentative:
            in_flight = sys.exc_info()[1]
            if isinstance(in_flight, GeneratorExit):
                # The loop over this bar was abandoned: the frame releasing it says whether by
                # break or return (done), by an exception (failed), or cannot say (tentative:
                # the crash handler may still call it a failure).
                verdict, frame = loop_release(_TQDM_ITER, self._remote_site)
                origin = _location(frame)
                if verdict == "exception" and frame is not None:
                    unwound = frame
                    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                    error = f"an exception left the loop at {where}"
                tentative = verdict == "unknown"
            elif in_flight is not None and not isinstance(
                in_flight, StopIteration | StopAsyncIteration
            ):  # (tqdm_asyncio closes a finished bar inside `except StopIteration`)
                if is_failure(in_flight):
                    error = in_flight  # the wrapped iterable raised, or close() during an except
        self._remote_closed = True  # the repaint inside super().close() must not re-queue it
        super().close()
        if error is not None:
            reason = error if isinstance(error, str) else describe_exception(error)
            event = self.remote_final_event("error", reason)
        else:
            event = self.remote_final_event("close")
        final = FinalEvent(
            event,
            tentative=tentative and error is None,
            thread=self.remote_thread,
            origin=origin,
            refinable=unwound is not None,
        )
        if final.tentative or final.refinable:
            self._remote_final = final
        report("closed", self._remote_maker.task_id)
        # A refinable failure waits for the next round, time for its exception to be named.
        outbox.closed(
            self._remote_maker.task_id, final, urgent=not final.tentative and not final.refinable
        )
        if unwound is not None:
            key = self._remote_maker.task_id
            watch_unwinding(unwound, lambda exception: self._remote_unwound(key, final, exception))

    def _remote_unwound(self, key: str, final: FinalEvent, exception: BaseException) -> None:
        """The exception that left the loop is known (CPython 3.12+): name it, or, for
        ``sys.exit(0)``, take the failure back."""
        outbox = self._remote_outbox
        if outbox is not None:
            error = describe_exception(exception) if is_failure(exception) else None
            outbox.resolve_tentative(key, final, error)

    def fail(self, error: BaseException | str) -> None:
        """Close the bar as failed, with ``error`` (an exception, or a sentence) as the reason."""
        self._remote_exit_error = error
        self.close()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        # sys.exit(0) and GeneratorExit end a block without failing it; any other exception
        # (sys.exit(3) and Ctrl-C included) fails the bar.
        failed = isinstance(exc_value, BaseException) and is_failure(exc_value)
        if failed:
            self._remote_exit_error = exc_value
        final, outbox = self._remote_final, self._remote_outbox
        if final is not None and outbox is not None:
            # A loop over this bar inside the block was abandoned first (a close not decided
            # yet): the block's end says how. An exception leaving it fails the bar, with its
            # text; none completes it now.
            if failed or final.tentative:
                error = describe_exception(exc_value) if failed else None
                outbox.resolve_tentative(self._remote_maker.task_id, final, error)
            self._remote_final = None
        super().__exit__(exc_type, exc_value, traceback)

    def __del__(self) -> None:
        self._remote_from_gc = True
        super().__del__()


def trange(*args: Any, **kwargs: Any) -> RemoteTqdm:
    """``RemoteTqdm(range(*args), **kwargs)``, like ``tqdm.trange``."""
    return RemoteTqdm(range(*args), **kwargs)
