"""A bar's state as a wire event: read from tqdm, cleaned and bounded so that the server takes it.

Every value a bar holds is turned into one that :func:`progressista.schema.parse_events` accepts
(a property test holds the two together): numbers become finite and non-negative, text is cut to
the schema's limits, and what UTF-8 cannot carry (a lone surrogate from a file name, say) is
replaced, bar by bar, so one odd bar never keeps the others from the server. Nothing here raises
into the caller's loop.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..schema import (
    MAX_ERROR_CHARS,
    MAX_META_BYTES,
    MAX_SEQ,
    MAX_TASK_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_UNIT_CHARS,
    Event,
    check_task_id,
)
from ..settings import ClientSettings
from .tuning import FULL_STATE_EVERY

__all__ = [
    "EventMaker",
    "build_meta",
    "clean_text",
    "default_task_id",
    "describe_exception",
    "encode_batch",
    "event_from",
    "given_task_id",
    "hostname",
    "progress_of",
]

log = logging.getLogger("progressista.client")

_bar_numbers = itertools.count(1)


def _without_surrogates(text: str) -> str:
    """``text`` with what UTF-8 cannot encode replaced by U+FFFD; surrogate pairs rejoined."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean_text(value: object, limit: int) -> str:
    """Any value as wire text: a string of at most ``limit`` characters that UTF-8 can carry."""
    if type(value) is not str:
        if value is None:
            return ""
        try:
            value = str(value)
        except Exception:  # a value whose __str__ fails must not take the bar down
            value = f"<{type(value).__name__}>"
    assert isinstance(value, str)
    if not value.isascii():
        value = _without_surrogates(value)
    return value[:limit]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in _without_surrogates(text))


def hostname() -> str:
    """This machine's name, without importing socket (which costs the client import time).

    Asked once per process: every bar carries it, and the system call cost a bar 10 µs.
    """
    global _hostname
    if _hostname is None:
        try:
            _hostname = os.uname().nodename
        except AttributeError:  # pragma: no cover - Windows
            import socket

            _hostname = socket.gethostname()
    return _hostname


_hostname: str | None = None


def _program() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return _printable(name)[:100] if name and name != "-c" else "python"


def default_task_id() -> str:
    """Unique per bar and readable: which program, which process, which bar, which machine."""
    task_id = f"{_program()}-{os.getpid()}-{next(_bar_numbers)}@{_printable(hostname())}"
    return task_id[:MAX_TASK_ID_CHARS]


def given_task_id(task_id: str) -> str:
    """A task id from the caller, with what UTF-8 cannot carry replaced; ValueError if invalid.

    A surrogate (a file name's undecodable byte) is repaired, since the id is otherwise fine;
    an empty, overlong or control-character id is the caller's mistake and is named.
    """
    if isinstance(task_id, str):
        task_id = _without_surrogates(task_id)
    problem = check_task_id(task_id)
    if problem is not None:
        raise ValueError(f"task_id {task_id!r} {problem}")
    return task_id


def _label(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value, MAX_META_BYTES)
    if type(value) is int and abs(value) <= MAX_SEQ:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    return clean_text(value, MAX_META_BYTES)


def build_meta(settings: ClientSettings, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bar's labels: host, pid and job, then the caller's; cut to fit the server's limit.

    Never raises: labels that cannot be read are left out (and logged), so a monitoring label
    cannot stop the caller's program.
    """
    meta: dict[str, Any] = {"host": clean_text(hostname(), 200), "pid": os.getpid()}
    if settings.job:
        meta["job"] = clean_text(settings.job, MAX_TEXT_CHARS)
    for labels in (settings.meta, extra or {}):
        try:
            items = list(labels.items())
        except Exception:
            log.warning("progressista: meta must be a mapping of labels, not %r", type(labels))
            continue
        for key, value in items:
            meta[clean_text(key, 200)] = _label(value)
    # The last labels go first rather than have every batch refused.
    while meta and not _fits(meta):
        meta.popitem()
    return meta


def _fits(meta: Mapping[str, Any]) -> bool:
    """Whether labels are within the server's limit, measured as it does (compact JSON)."""
    import json

    return len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()) <= (
        MAX_META_BYTES
    )


def _count(value: object) -> int | float:
    """A finite number ≥ 0 for the wire, whatever tqdm holds (it allows negative updates)."""
    number = _count_or_none(value)
    return 0 if number is None else number


def _count_or_none(value: object) -> int | float | None:
    """Like _count, with None for what is not a finite number ≥ 0."""
    if value is None:
        return None
    if type(value) is int:
        return min(value, MAX_SEQ) if value >= 0 else None
    try:
        number = float(value)  # type: ignore[arg-type]  # any number-like tqdm may hold; else caught
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def progress_of(bar: Any) -> tuple[int | float, int | float | None]:
    """A tqdm's (n, total) as the wire has them. ``Any``: a tqdm."""
    return _count(bar.n), _count_or_none(bar.total)


def _desc(value: object) -> str:
    desc = clean_text(value, MAX_TEXT_CHARS + 2)
    if desc.endswith(": "):  # set_description() appends it; tqdm shows it either way
        desc = desc[:-2]
    return desc[:MAX_TEXT_CHARS]


def _scale(value: object) -> bool | int | float:
    return value if isinstance(value, bool) else _count(value)


def _divisor(value: object) -> int | float:
    divisor = _count_or_none(value)
    return divisor if divisor else 1000


def _console_rate(rate: object, n: int | float, initial: object, elapsed: object) -> object:
    """The rate tqdm prints: its smoothed one, else (as at close) the average since the start."""
    if rate is None and elapsed:
        try:
            return (n - _count(initial)) / elapsed  # type: ignore[operator]  # elapsed is a number
        except (TypeError, ZeroDivisionError, OverflowError):
            return None
    return rate


def event_from(format_dict: Mapping[str, Any]) -> Event:
    """The wire fields of a bar, from tqdm's ``format_dict``, always valid for the server."""
    n = _count(format_dict.get("n"))
    elapsed = format_dict.get("elapsed")
    rate = _console_rate(format_dict.get("rate"), n, format_dict.get("initial"), elapsed)
    return {
        "n": n,
        "total": _count_or_none(format_dict.get("total")),
        "desc": _desc(format_dict.get("prefix")),
        "postfix": clean_text(format_dict.get("postfix"), MAX_TEXT_CHARS),
        "unit": clean_text(format_dict.get("unit") or "it", MAX_UNIT_CHARS),
        "unit_scale": _scale(format_dict.get("unit_scale")),
        "unit_divisor": _divisor(format_dict.get("unit_divisor")),
        "elapsed": _count_or_none(elapsed),
        "rate": _count_or_none(rate),
    }


_INFINITY = math.inf


def _seconds(value: object) -> float | int | None:
    """A duration or rate for the wire (finite, ≥ 0) or None; the common case inline-fast."""
    if type(value) is float and 0.0 <= value < _INFINITY:
        return value
    return _count_or_none(value)


def _smoothed_rate(bar: Any) -> object:
    """tqdm's smoothed rate, ``_ema_dn() / _ema_dt()``, at a third of the cost.

    Both averages are fed together, so their bias corrections (``1 - beta ** calls``) are equal
    and cancel: the rate is the ratio of their last values. A closed bar's ``_ema_dt`` is a
    lambda (tqdm's way to print the overall average at close), hence the fallback.
    """
    try:
        dt = bar._ema_dt.last
        return bar._ema_dn.last / dt if dt else None
    except AttributeError:
        dt = bar._ema_dt()
        return bar._ema_dn() / dt if dt else None


class EventMaker:
    """Builds one bar's events, cheaply: the sender asks for every changed bar every push.

    With ten thousand bars that is twenty thousand events a second on the worker's own
    interpreter, so this reads the few attributes ``format_dict`` would gather (the same ones,
    with the same meaning), cleans a text only when the bar holds a new one, and sends the
    fields that rarely change (description, postfix, total, unit, labels) only when they did:
    the server keeps what an event leaves out. Every field goes again after a failed or
    reconnected send (the server may have restarted and forgotten the bar), when the caller's
    ``generation`` says so, and at least every ``FULL_STATE_EVERY`` seconds (a task deleted
    on the dashboard comes back whole). ``seq`` starts at the microseconds since the epoch, so a
    restarted worker's events rank above the old ones.
    """

    __slots__ = (
        "_desc",
        "_desc_of",
        "_full_at",
        "_generation",
        "_postfix",
        "_postfix_of",
        "_seqs",
        "_total_of",
        "_unit_of",
        "_units",
        "meta",
        "seq",
        "started",
        "task_id",
    )

    def __init__(self, task_id: str, meta: dict[str, Any]) -> None:
        self.task_id = task_id
        self.meta = meta
        #: The last seq given out; ``next_seq()`` is atomic, so two threads never share one.
        self.seq = time.time_ns() // 1000
        self._seqs = itertools.count(self.seq + 1)
        #: Whether the server has been sent this bar's ``start``.
        self.started = False
        self._generation = -1
        self._full_at = -_INFINITY
        self._desc_of: object = _UNSET
        self._desc = ""
        self._postfix_of: object = _UNSET
        self._postfix = ""
        self._total_of: object = _UNSET
        self._unit_of: tuple[object, object, object] | None = None
        self._units: Event = {}

    def relabel(self, labels: Mapping[str, Any]) -> None:
        """Add or change labels; the next event carries them (and every other field)."""
        meta = dict(self.meta)
        for key, value in labels.items():
            meta[clean_text(key, 200)] = _label(value)
        if _fits(meta):
            self.meta = meta
            self._full_at = -_INFINITY

    def next_seq(self) -> int:
        """The next event's ``seq``: taken first, so an event that lost a race is outranked."""
        self.seq = seq = next(self._seqs)
        return seq

    def event(self, bar: Any, status: str, generation: int = 0, seq: int | None = None) -> Event:
        """The event for ``bar`` now, numbered ``seq`` (by default the next). ``Any``: a tqdm.

        ``status`` other than ``update`` (start, close, error) carries every field. Written as
        one function, its common path inline: it runs for every changed bar, every push.
        """
        try:
            now = time.time()
            everything = (
                status != "update"
                or generation != self._generation
                or now - self._full_at > FULL_STATE_EVERY
            )
            n = bar.n
            if type(n) is not int or n < 0 or n > MAX_SEQ:
                n = _count(n)
            elapsed = bar._time() - bar.start_t
            try:  # tqdm's smoothed rate, _ema_dn() / _ema_dt(), see _smoothed_rate
                dt = bar._ema_dt.last
                rate = bar._ema_dn.last / dt if dt else None
            except AttributeError:
                rate = _smoothed_rate(bar)
            if rate is None and elapsed:
                rate = _console_rate(None, n, bar.initial, elapsed)
            if type(elapsed) is not float or not 0.0 <= elapsed < _INFINITY:
                elapsed = _count_or_none(elapsed)
            if type(rate) is not float or not 0.0 <= rate < _INFINITY:
                rate = _count_or_none(rate)
            event: Event = {
                "task_id": self.task_id,
                "n": n,
                "elapsed": elapsed,
                "rate": rate,
                "timestamp": now,
            }
            total = bar.total
            if everything or total != self._total_of:
                self._total_of = total
                event["total"] = (
                    total if type(total) is int and 0 <= total <= MAX_SEQ else _count_or_none(total)
                )
            # The caches below save cleaning a text per event; a full event (a close, say,
            # which may run in another thread than the sender's) cleans afresh.
            desc = bar.desc
            if everything or desc is not self._desc_of:
                event["desc"] = self._desc = _desc(desc)
                self._desc_of = desc
            postfix = bar.postfix
            if everything or postfix is not self._postfix_of:
                event["postfix"] = self._postfix = clean_text(postfix, MAX_TEXT_CHARS)
                self._postfix_of = postfix
            units = (bar.unit, bar.unit_scale, bar.unit_divisor)
            if everything or units != self._unit_of:
                self._units = {
                    "unit": clean_text(units[0] or "it", MAX_UNIT_CHARS),
                    "unit_scale": _scale(units[1]),
                    "unit_divisor": _divisor(units[2]),
                }
                self._unit_of = units
                event.update(self._units)
            if everything:
                self._full_at = now
                event["meta"] = self.meta
        except Exception:  # a tqdm variant without these attributes: its public dict
            log.debug("reading a bar's attributes failed; using format_dict", exc_info=True)
            event = event_from(bar.format_dict)
            event["task_id"] = self.task_id
            event["meta"] = self.meta
            self._desc_of = self._postfix_of = self._total_of = _UNSET  # all of it next time
            self._unit_of = None
        self._generation = generation
        self.started = True
        if status != "update":  # the server's default: left out of most events
            event["status"] = status
        event["seq"] = self.next_seq() if seq is None else seq
        return event


#: Never equal to what a bar holds: the first event carries the field.
_UNSET = object()


def describe_exception(error: BaseException) -> str:
    """One line naming the exception, as ``traceback.format_exception_only`` would.

    Written out rather than imported: the crash handler calls this while an uncaught exception
    is on its way out, and importing ``traceback`` then runs ``exec`` (dataclasses), which makes
    CPython forget that a KeyboardInterrupt was unhandled: the process would exit with status 1
    instead of dying by SIGINT, as the shell and ``progressista run`` expect.
    """
    kind = type(error)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(error)
    except Exception:
        text = "<exception str() failed>"
    return clean_text(f"{name}: {text}" if text else name, MAX_ERROR_CHARS)


def encode_batch(events: list[Event]) -> tuple[bytes, list[int]]:
    """The POST body for ``events``, and the indexes of those that could not be encoded.

    One encoder call for the whole batch (msgspec, in C: ten times the standard library's speed,
    imported by the sender on its first batch, never by ``import progressista.client``). If it
    fails, each event is encoded alone and the ones that still fail, after their text is
    repaired, are left out: one bar's odd value never costs the others their update.
    """
    import msgspec

    try:
        return msgspec.json.encode(events), []
    except Exception:
        pass
    parts: list[bytes] = []
    bad: list[int] = []
    for index, event in enumerate(events):
        try:
            parts.append(msgspec.json.encode(event))
        except Exception:
            try:
                parts.append(msgspec.json.encode(_repaired(event)))
            except Exception:
                log.warning("progressista: a bar's state cannot be sent: %r", event.get("task_id"))
                bad.append(index)
    return b"[" + b",".join(parts) + b"]", bad


def _repaired(value: Any) -> Any:
    """``value`` with every string UTF-8 cannot carry repaired and every number made finite."""
    if isinstance(value, str):
        return _without_surrogates(value)
    if isinstance(value, dict):
        return {_repaired(str(key)): _repaired(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
