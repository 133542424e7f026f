"""RemoteTqdm: a true tqdm, whose state also streams to the Progressista server.

Only ``display()`` (every throttled repaint, ``set_description``, ``set_postfix``, ``reset``) and
``close()`` are hooked, as tqdm's own front ends do: ``update()`` and ``__iter__`` are the hot
path and stay tqdm's. ``display()`` just marks the bar as changed in its sender's outbox; the
sender builds the event from ``format_dict`` when it sends, so a repaint costs one dict store.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

from ..schema import (
    MAX_ERROR_CHARS,
    MAX_META_BYTES,
    MAX_SEQ,
    MAX_TASK_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_UNIT_CHARS,
    Event,
)
from ..settings import ClientSettings
from .outbox import FinalEvent, Location, Outbox, WeakSource
from .sender import sender_for

__all__ = ["RemoteTqdm", "trange"]

_bar_numbers = itertools.count(1)


def hostname() -> str:
    """This machine's name, without importing socket (which costs the client import time)."""
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows
        import socket

        return socket.gethostname()


def _program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name != "-c" else "python"


def default_task_id() -> str:
    """Unique per bar and readable: which program, which process, which bar, which machine."""
    return f"{_program()}-{os.getpid()}-{next(_bar_numbers)}@{hostname()}"


def check_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not 1 <= len(task_id) <= MAX_TASK_ID_CHARS:
        raise ValueError(f"task_id must be a string of 1 to {MAX_TASK_ID_CHARS} characters")
    if not task_id.isprintable() or task_id in (".", ".."):
        raise ValueError(f"task_id {task_id!r} must be printable and not '.' or '..'")
    return task_id


def _label(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)


def build_meta(settings: ClientSettings, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bar's labels: host, pid and job, then the caller's; cut to fit the server's limit."""
    meta: dict[str, Any] = {"host": hostname(), "pid": os.getpid()}
    if settings.job:
        meta["job"] = settings.job
    for labels in (settings.meta, extra or {}):
        for key, value in labels.items():
            meta[str(key)] = _label(value)
    import json

    while meta and len(json.dumps(meta, ensure_ascii=False).encode()) > MAX_META_BYTES:
        meta.popitem()  # drop the last labels rather than have every batch refused
    return meta


def _count(value: Any) -> int | float:
    """A finite number ≥ 0 for the wire, whatever tqdm holds (it allows negative updates)."""
    number = _count_or_none(value)
    return 0 if number is None else number


def _count_or_none(value: Any) -> int | float | None:
    """Like _count, with None for what is not a finite number ≥ 0."""
    if value is None:
        return None
    if type(value) is int:
        return min(value, MAX_SEQ) if value >= 0 else None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text[:limit]


def event_from(format_dict: Mapping[str, Any]) -> Event:
    """The wire fields of a bar, from tqdm's ``format_dict``, always valid for the server."""
    desc = _text(format_dict.get("prefix"), MAX_TEXT_CHARS + 2)
    if desc.endswith(": "):  # set_description() appends it; tqdm shows it either way
        desc = desc[:-2]
    unit_scale = format_dict.get("unit_scale")
    divisor = _count_or_none(format_dict.get("unit_divisor"))
    return {
        "n": _count(format_dict.get("n")),
        "total": _count_or_none(format_dict.get("total")),
        "desc": desc[:MAX_TEXT_CHARS],
        "postfix": _text(format_dict.get("postfix"), MAX_TEXT_CHARS),
        "unit": _text(format_dict.get("unit") or "it", MAX_UNIT_CHARS),
        "unit_scale": unit_scale if isinstance(unit_scale, bool) else _count(unit_scale),
        "unit_divisor": divisor if divisor else 1000,
        "elapsed": _count_or_none(format_dict.get("elapsed")),
        "rate": _count_or_none(format_dict.get("rate")),
    }


_TQDM_ITER = tqdm.__iter__.__code__


def _loop_location() -> Location | None:
    """Where the ``for`` loop over a bar stood when it abandoned the bar's generator."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not _TQDM_ITER:
        frame = frame.f_back  # type: ignore[assignment]
    consumer = frame.f_back if frame is not None else None
    if consumer is None:
        return None
    return (id(consumer), consumer.f_code, consumer.f_lineno)


def describe_exception(error: BaseException) -> str:
    """One line naming the exception, as the dashboard shows it for a failed bar."""
    import traceback  # only when a bar fails: not worth its import time for every worker

    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text[:MAX_ERROR_CHARS]


class _TqdmLock:
    """``RemoteTqdm._lock``: tqdm's own lock, so plain and remote bars share one screen.

    It is an attribute of RemoteTqdm's own, as ``_lock`` is of tqdm, so code written for tqdm can
    replace it (``set_lock``) or delete it (tqdm's tests do) exactly as it would tqdm's.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return tqdm.get_lock()  # type: ignore[no-untyped-call]


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
    remote_task_id: str | None = None
    remote_thread: int = 0
    _remote_outbox: Outbox | None = None
    _remote_closed = False
    _remote_started = False
    _remote_from_gc = False
    _remote_exit_error: BaseException | str | None = None
    #: A tentative close not yet settled (see Outbox.settle_tentative).
    _remote_final: FinalEvent | None = None

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
        if remote and kwargs.get("disable") is not True:  # a disabled bar is not remote either
            settings = ClientSettings.from_env(
                os.environ, url=url, token=token, push_every=push_every, job=job
            )
            self.remote_task_id = check_task_id(task_id) if task_id else default_task_id()
            self._remote_meta = build_meta(settings, meta)
            # Microseconds since the epoch: a restarted worker's events rank above the old ones.
            self._remote_seq = time.time_ns() // 1000
            # Orders the sender thread's reads against close(): no update may outrank the end.
            self._remote_lock = threading.Lock()
            self.remote_thread = threading.get_ident()
            outbox = self._remote_outbox_for(settings)
        super().__init__(*args, **kwargs)
        if outbox is not None and self.remote_task_id is not None and not self.disable:
            self._remote_outbox = outbox
            self._remote_handle = WeakSource(self)
            outbox.opened(self.remote_task_id, self)
            outbox.put(self.remote_task_id, self._remote_handle)

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
            cls._lock = tqdm.get_lock()  # type: ignore[no-untyped-call]
        return cls._lock

    def remote_event(self) -> Event:
        """The open bar's current state as an event (called by the sender when it sends).

        Raises LookupError once the bar is closed: its final event, queued by close(), is the
        only one that may follow.
        """
        with self._remote_lock:
            if self._remote_closed:
                raise LookupError("the bar is closed")
            return self._next_event("update" if self._remote_started else "start")

    def remote_final_event(self, status: str = "close", error: str | None = None) -> Event:
        """The event that ends the bar, numbered after every event sent before it."""
        with self._remote_lock:
            self._remote_closed = True
            event = self._next_event(status)
        if error is not None:
            event["error"] = error
        return event

    def _next_event(self, status: str) -> Event:
        event = event_from(self.format_dict)
        self._remote_seq += 1
        event["task_id"] = self.remote_task_id
        event["status"] = status
        event["seq"] = self._remote_seq
        event["timestamp"] = time.time()
        event["meta"] = self._remote_meta
        self._remote_started = True
        return event

    def display(self, *args: Any, **kwargs: Any) -> Any:
        shown = super().display(*args, **kwargs)  # any front end's signature (notebook's too)
        outbox = self._remote_outbox
        if outbox is not None and not self._remote_closed:
            outbox.put(self.remote_task_id, self._remote_handle)  # type: ignore[arg-type]
        return shown

    def close(self) -> None:
        outbox = self._remote_outbox
        if outbox is None or self._remote_closed or getattr(self, "disable", True):
            super().close()
            return
        error = self._remote_exit_error
        tentative = self._remote_from_gc
        origin = None
        if error is None and not tentative:
            in_flight = sys.exc_info()[1]
            if isinstance(in_flight, GeneratorExit):
                # The loop over this bar was abandoned: by break, or by an exception in the loop
                # body that tqdm cannot see. Wait for the crash handler before calling it done.
                tentative = True
                origin = _loop_location()
            elif in_flight is not None and not isinstance(
                in_flight, StopIteration | StopAsyncIteration
            ):  # (tqdm_asyncio closes a finished bar inside `except StopIteration`)
                error = in_flight  # the wrapped iterable raised, or close() during an except
        self._remote_closed = True  # the repaint inside super().close() must not re-queue it
        super().close()
        if error is not None:
            reason = error if isinstance(error, str) else describe_exception(error)
            event = self.remote_final_event("error", reason[:MAX_ERROR_CHARS])
        else:
            event = self.remote_final_event("close")
        final = FinalEvent(
            event,
            tentative=tentative and error is None,
            thread=self.remote_thread,
            origin=origin,
        )
        if final.tentative:
            self._remote_final = final
        outbox.closed(self.remote_task_id, final, urgent=not final.tentative)  # type: ignore[arg-type]

    def fail(self, error: BaseException | str) -> None:
        """Close the bar as failed, with ``error`` (an exception, or a sentence) as the reason."""
        self._remote_exit_error = error
        self.close()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        failed = isinstance(exc_value, BaseException) and not isinstance(exc_value, GeneratorExit)
        if failed:
            self._remote_exit_error = exc_value
        final, outbox = self._remote_final, self._remote_outbox
        if final is not None and outbox is not None and self.remote_task_id is not None:
            # A loop over this bar inside the block was abandoned first (a tentative close): the
            # block's end says how. An exception leaving it fails the bar; none completes it now.
            error = describe_exception(exc_value) if failed else None
            outbox.settle_tentative(self.remote_task_id, final, error)
            self._remote_final = None
        super().__exit__(exc_type, exc_value, traceback)

    def __del__(self) -> None:
        self._remote_from_gc = True
        super().__del__()


def trange(*args: Any, **kwargs: Any) -> RemoteTqdm:
    """``RemoteTqdm(range(*args), **kwargs)``, like ``tqdm.trange``."""
    return RemoteTqdm(range(*args), **kwargs)
