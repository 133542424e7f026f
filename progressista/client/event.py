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
    """This machine's name, without importing socket (which costs the client import time)."""
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows
        import socket

        return socket.gethostname()


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
    import json

    # Compact JSON, as the server measures it; the last labels go first rather than have every
    # batch refused.
    while meta and len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()) > (
        MAX_META_BYTES
    ):
        meta.popitem()
    return meta


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


class EventMaker:
    """Builds one bar's events, cheaply: the sender asks for every changed bar every push.

    With ten thousand bars that is twenty thousand events a second on the worker's own
    interpreter, so this reads the few attributes ``format_dict`` would gather (the same ones,
    with the same meaning) and cleans a text only when the bar holds a new one. ``seq`` starts at
    the microseconds since the epoch, so a restarted worker's events rank above the old ones.
    """

    __slots__ = (
        "_desc",
        "_desc_of",
        "_postfix",
        "_postfix_of",
        "_unit",
        "_unit_of",
        "meta",
        "seq",
        "started",
        "task_id",
    )

    def __init__(self, task_id: str, meta: dict[str, Any]) -> None:
        self.task_id = task_id
        self.meta = meta
        self.seq = time.time_ns() // 1000
        #: Whether the server has been sent this bar's ``start``.
        self.started = False
        self._desc_of: object = None
        self._desc = ""
        self._postfix_of: object = None
        self._postfix = ""
        self._unit_of: object = None
        self._unit = "it"

    def event(self, bar: Any, status: str) -> Event:
        """The event for ``bar`` now, numbered after every earlier one. ``Any``: a tqdm."""
        try:
            fields = self._fields(bar)
        except Exception:  # a tqdm variant without these attributes: its public dict
            log.debug("reading a bar's attributes failed; using format_dict", exc_info=True)
            fields = event_from(bar.format_dict)
        self.seq += 1
        self.started = True
        fields["task_id"] = self.task_id
        fields["status"] = status
        fields["seq"] = self.seq
        fields["timestamp"] = time.time()
        fields["meta"] = self.meta
        return fields

    def _fields(self, bar: Any) -> Event:
        n = bar.n
        if type(n) is not int or n < 0 or n > MAX_SEQ:
            n = _count(n)
        desc = bar.desc
        if desc is not self._desc_of:
            self._desc, self._desc_of = _desc(desc), desc
        postfix = bar.postfix
        if postfix is not self._postfix_of:
            self._postfix, self._postfix_of = clean_text(postfix, MAX_TEXT_CHARS), postfix
        unit = bar.unit
        if unit is not self._unit_of:
            self._unit, self._unit_of = clean_text(unit or "it", MAX_UNIT_CHARS), unit
        elapsed = bar._time() - bar.start_t
        dt = bar._ema_dt()
        rate = bar._ema_dn() / dt if dt else None
        if rate is None and elapsed:
            rate = _console_rate(None, n, bar.initial, elapsed)
        total = bar.total
        return {
            "n": n,
            "total": total
            if type(total) is int and 0 <= total <= MAX_SEQ
            else _count_or_none(total),
            "desc": self._desc,
            "postfix": self._postfix,
            "unit": self._unit,
            "unit_scale": _scale(bar.unit_scale),
            "unit_divisor": _divisor(bar.unit_divisor),
            "elapsed": _count_or_none(elapsed),
            "rate": _count_or_none(rate),
        }


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
