"""The wire format of progress events, and its validation (pure: no I/O, no aiohttp).

Events carry absolute state, so the server may merge, drop or re-apply any of them safely. This
module decides what a valid event is; the server's task module decides what an event does to a
task.

:func:`parse_events` is the reference validator: plain Python that names every bad field. The
server's hot path decodes with msgspec types that mirror these rules
(:mod:`progressista.server.decoder`) and falls back to this module to explain a refusal; a
property test holds the two to the same verdicts. Importing this module costs the client
nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_META_BYTES",
    "MAX_TASK_ID_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_UNIT_CHARS",
    "STATES",
    "STATUSES",
    "Event",
    "FieldError",
    "SchemaError",
    "check_task_id",
    "parse_events",
]

#: One validated event: only known fields, each checked. JSON types, hence ``Any``.
Event = dict[str, Any]

STATUSES = ("start", "update", "close", "error")
STATES = ("active", "stale", "completed", "failed")

MAX_TASK_ID_CHARS = 200
MAX_TEXT_CHARS = 1000
MAX_UNIT_CHARS = 32
MAX_ERROR_CHARS = 4000
MAX_META_BYTES = 4096
MAX_SEQ = 2**63 - 1

_FINITE_NUMBER = "must be a finite number"
_NON_NEGATIVE = "must be a finite number ≥ 0"
_NON_NEGATIVE_OR_NULL = "must be a finite number ≥ 0 or null"


@dataclass(frozen=True)
class FieldError:
    """What was wrong with one field of one event; ``index`` is None for a single event body."""

    index: int | None
    field: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class SchemaError(ValueError):
    """A request body that must be rejected as a whole.

    ``too_large`` marks a batch with more events than allowed, which HTTP reports as 413 rather
    than 400.
    """

    def __init__(self, summary: str, details: list[FieldError], *, too_large: bool = False):
        super().__init__(summary)
        self.summary = summary
        self.details = details
        self.too_large = too_large


def _is_number(value: Any) -> bool:
    """A finite float, or an int within ±(2^63-1); never a bool, which is not a count of anything.

    Integers beyond 64 bits are refused rather than rounded: no progress counter gets there, and
    a value that size is far more likely a bug worth hearing about.
    """
    kind = type(value)
    if kind is float:
        return bool(value - value == 0.0)  # False for NaN and ±Infinity
    return kind is int and -MAX_SEQ <= value <= MAX_SEQ


def _check_non_negative(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else _NON_NEGATIVE


def _check_non_negative_or_null(value: Any) -> str | None:
    return None if value is None or (_is_number(value) and value >= 0) else _NON_NEGATIVE_OR_NULL


def _check_number(value: Any) -> str | None:
    return None if _is_number(value) else _FINITE_NUMBER


def _check_positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "must be a finite number > 0"


def _check_unit_scale(value: Any) -> str | None:
    if value is True or value is False or (_is_number(value) and value >= 0):
        return None
    return "must be true, false or a finite number ≥ 0"


def _text_check(limit: int) -> Callable[[Any], str | None]:
    message = f"must be a string of at most {limit} characters"

    def check(value: Any) -> str | None:
        return None if type(value) is str and len(value) <= limit else message

    return check


def check_task_id(value: Any) -> str | None:
    """Why ``value`` cannot be a task id, or None when it can (every side checks ids here)."""
    if type(value) is not str or not 1 <= len(value) <= MAX_TASK_ID_CHARS:
        return f"must be a string of 1 to {MAX_TASK_ID_CHARS} characters"
    if not value.isprintable():
        return "must not contain control or other non-printable characters"
    if value in (".", ".."):
        # Browsers and HTTP libraries rewrite these path segments, so /tasks/{id} could never
        # reach such a task.
        return "must not be '.' or '..'"
    return None


def _check_status(value: Any) -> str | None:
    return (
        None
        if value in STATUSES and type(value) is str
        else ("must be one of " + ", ".join(STATUSES))
    )


def _check_seq(value: Any) -> str | None:
    if type(value) is int and 0 <= value <= MAX_SEQ:
        return None
    return "must be an integer between 0 and 2^63-1"


def _check_meta(value: Any) -> str | None:
    if type(value) is not dict:
        return "must be an object of labels"
    # Sum an upper bound of the JSON size first: labels are almost always small, and serialising
    # them on every event would double the cost of validation.
    estimate = 2
    for key, item in value.items():
        if type(key) is not str:
            return "keys must be strings"
        kind = type(item)
        if kind is str:
            estimate += len(key) + len(item) + 6
        elif item is None or kind is bool or _is_number(item):
            estimate += len(key) + 28
        else:
            return f"label {key[:50]!r} must be a string, number, boolean or null"
    if estimate * 6 > MAX_META_BYTES:  # \uXXXX escapes are at most 6 bytes per character
        import msgspec  # here: the same encoder as the server's decoder, so both agree on size

        size = len(msgspec.json.encode(value))
        if size > MAX_META_BYTES:
            return f"must be at most {MAX_META_BYTES} bytes as JSON, not {size}"
    return None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "task_id": check_task_id,
    "status": _check_status,
    "n": _check_non_negative,
    "total": _check_non_negative_or_null,
    "desc": _text_check(MAX_TEXT_CHARS),
    "postfix": _text_check(MAX_TEXT_CHARS),
    "unit": _text_check(MAX_UNIT_CHARS),
    "unit_scale": _check_unit_scale,
    "unit_divisor": _check_positive,
    "elapsed": _check_non_negative_or_null,
    "rate": _check_non_negative_or_null,
    "seq": _check_seq,
    "timestamp": _check_number,
    "meta": _check_meta,
    "error": _text_check(MAX_ERROR_CHARS),
}


def _validate(raw: Any, index: int | None, errors: list[FieldError]) -> Event:
    if type(raw) is not dict:
        errors.append(FieldError(index, "", "an event must be a JSON object"))
        return {}
    known = 0
    for key, value in raw.items():
        check = _CHECKS.get(key)
        if check is None:
            continue
        known += 1
        message = check(value)
        if message is not None:
            errors.append(FieldError(index, key, message))
    if "task_id" not in raw:
        errors.append(FieldError(index, "task_id", "is required"))
    event = raw if known == len(raw) else {k: v for k, v in raw.items() if k in _CHECKS}
    status = event.setdefault("status", "update")
    if "error" in event and status != "error":
        errors.append(FieldError(index, "error", "is only allowed with status 'error'"))
    return event


def parse_events(payload: Any, max_batch: int) -> list[Event]:
    """Validate a decoded ``POST /progress`` body: one event object or a list of them.

    All or nothing: raises :class:`SchemaError` listing every invalid field if any event is
    invalid, so a request never half-applies. Unknown fields are dropped.
    """
    errors: list[FieldError] = []
    if type(payload) is dict:
        event = _validate(payload, None, errors)
        if errors:
            raise SchemaError("the event is invalid", errors)
        return [event]
    if type(payload) is not list:
        raise SchemaError(
            "the body must be an event object or an array of events",
            [FieldError(None, "", "expected a JSON object or array")],
        )
    if len(payload) > max_batch:
        raise SchemaError(
            f"a batch may hold at most {max_batch} events",
            [FieldError(None, "", f"{len(payload)} events sent")],
            too_large=True,
        )
    events = [_validate(raw, index, errors) for index, raw in enumerate(payload)]
    if errors:
        count = len({error.index for error in errors})
        noun = "event is" if count == 1 else "events are"
        raise SchemaError(f"{count} {noun} invalid; nothing was stored", errors)
    return events
