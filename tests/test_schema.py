"""The wire format: what parse_events accepts, and exactly what it says about what it rejects."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressista import schema
from progressista.schema import FieldError, SchemaError, parse_events
from progressista.server.event import decode_events

FULL_EVENT: dict[str, Any] = {
    "task_id": "etl/2026-11-29/shard 7 ✓",
    "status": "update",
    "n": 12,
    "total": 100.0,
    "desc": "Loading",
    "postfix": "loss=0.5",
    "unit": "B",
    "unit_scale": True,
    "unit_divisor": 1024,
    "elapsed": 3.5,
    "rate": None,
    "seq": 7,
    "timestamp": -1.5,
    "meta": {"job": "etl", "pid": 42, "gpu": None, "ok": True, "ratio": 0.5},
}


def errors_of(payload: Any, max_batch: int = 1000) -> list[FieldError]:
    with pytest.raises(SchemaError) as caught:
        parse_events(payload, max_batch)
    return caught.value.details


def test_a_full_event_passes_unchanged() -> None:
    assert parse_events(dict(FULL_EVENT), 10) == [FULL_EVENT]


def test_status_defaults_to_update() -> None:
    assert parse_events({"task_id": "a"}, 10) == [{"task_id": "a", "status": "update"}]


def test_unknown_fields_are_dropped_so_newer_clients_still_work() -> None:
    assert parse_events([{"task_id": "a", "colour": "red"}], 10) == [
        {"task_id": "a", "status": "update"}
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", -1, "must be a finite number ≥ 0"),
        ("n", True, "must be a finite number ≥ 0"),
        ("n", "3", "must be a finite number ≥ 0"),
        ("n", math.nan, "must be a finite number ≥ 0"),
        ("n", math.inf, "must be a finite number ≥ 0"),
        ("n", 10**400, "must be a finite number ≥ 0"),
        ("n", None, "must be a finite number ≥ 0"),
        ("total", -0.5, "must be a finite number ≥ 0 or null"),
        ("total", -math.inf, "must be a finite number ≥ 0 or null"),
        ("elapsed", [], "must be a finite number ≥ 0 or null"),
        ("rate", math.nan, "must be a finite number ≥ 0 or null"),
        ("timestamp", math.inf, "must be a finite number"),
        ("timestamp", None, "must be a finite number"),
        ("seq", -1, "must be an integer between 0 and 2^63-1"),
        ("seq", 1.0, "must be an integer between 0 and 2^63-1"),
        ("seq", 2**63, "must be an integer between 0 and 2^63-1"),
        ("status", "done", "must be one of start, update, close, error"),
        ("status", None, "must be one of start, update, close, error"),
        ("desc", "x" * 1001, "must be a string of at most 1000 characters"),
        ("desc", 5, "must be a string of at most 1000 characters"),
        ("postfix", {"loss": 1}, "must be a string of at most 1000 characters"),
        ("unit", "x" * 33, "must be a string of at most 32 characters"),
        ("unit_scale", "yes", "must be true, false or a finite number ≥ 0"),
        ("unit_divisor", 0, "must be a finite number > 0"),
        ("meta", [], "must be an object of labels"),
        ("meta", {"nested": {"a": 1}}, "label 'nested' must be a string, number, boolean or null"),
        ("meta", {"x": math.nan}, "label 'x' must be a string, number, boolean or null"),
        ("task_id", "", "must be a string of 1 to 200 characters"),
        ("task_id", "x" * 201, "must be a string of 1 to 200 characters"),
        ("task_id", 7, "must be a string of 1 to 200 characters"),
        ("task_id", "a\nb", "must not contain control or other non-printable characters"),
        ("task_id", "a\x00", "must not contain control or other non-printable characters"),
        ("task_id", "..", "must not be '.' or '..'"),
    ],
)
def test_each_invalid_field_is_named(field: str, value: Any, message: str) -> None:
    assert errors_of({**FULL_EVENT, field: value}) == [FieldError(None, field, message)]


def test_meta_over_four_kib_is_rejected_with_its_size() -> None:
    meta = {"blob": "é" * 3000}
    size = len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode())
    assert errors_of({"task_id": "a", "meta": meta}) == [
        FieldError(None, "meta", f"must be at most 4096 bytes as JSON, not {size}")
    ]


def test_meta_just_under_the_limit_is_accepted() -> None:
    meta = {"blob": "x" * 4000}
    assert parse_events({"task_id": "a", "meta": meta}, 10)[0]["meta"] == meta


def test_error_text_is_only_allowed_when_the_status_is_error() -> None:
    assert parse_events({"task_id": "a", "status": "error", "error": "boom"}, 1)[0]["error"] == (
        "boom"
    )
    assert errors_of({"task_id": "a", "status": "close", "error": "boom"}) == [
        FieldError(None, "error", "is only allowed with status 'error'")
    ]


def test_a_batch_reports_every_bad_event_by_index_and_stores_nothing() -> None:
    with pytest.raises(SchemaError) as caught:
        parse_events([{"task_id": "ok"}, {"n": 1}, 3, {"task_id": "b", "n": -1}], 10)
    assert caught.value.summary == "3 events are invalid; nothing was stored"
    assert caught.value.details == [
        FieldError(1, "task_id", "is required"),
        FieldError(2, "", "an event must be a JSON object"),
        FieldError(3, "n", "must be a finite number ≥ 0"),
    ]
    assert not caught.value.too_large


def test_a_batch_over_the_limit_is_too_large() -> None:
    with pytest.raises(SchemaError) as caught:
        parse_events([{"task_id": "a"}] * 3, max_batch=2)
    assert caught.value.too_large
    assert caught.value.summary == "a batch may hold at most 2 events"


@pytest.mark.parametrize("payload", ["text", 5, None, True])
def test_a_body_that_is_neither_object_nor_array_is_rejected(payload: Any) -> None:
    assert errors_of(payload) == [FieldError(None, "", "expected a JSON object or array")]


def test_an_empty_batch_is_valid() -> None:
    assert parse_events([], 10) == []


# decode_events (msgspec, the hot path) and parse_events (the exact Python validator) must give
# the same verdict on every body, and the same events when they accept. Hypothesis throws
# near-valid events at both.
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 2**63 - 1, 2**63, 1e308, -1e308]),
    st.booleans(),
    st.none(),
)
_values = st.one_of(_numbers, st.text(max_size=40), st.lists(st.integers(), max_size=2))
_text = st.one_of(
    st.text(max_size=5),
    st.sampled_from(["x" * 32, "x" * 33, "é" * 1000, "x" * 1001, "x" * 4000, "x" * 4001]),
    _values,
)
_events = st.fixed_dictionaries(
    {
        "task_id": st.one_of(
            st.text(min_size=0, max_size=210),
            st.sampled_from([".", "..", "a\tb", "x" * 200, "é" * 201]),
            _numbers,
        ),
    },
    optional={
        **{
            name: _numbers
            for name in (
                "n",
                "total",
                "elapsed",
                "rate",
                "seq",
                "timestamp",
                "unit_scale",
                "unit_divisor",
            )
        },
        "status": st.one_of(st.sampled_from([*schema.STATUSES, "done"]), _values),
        "desc": _text,
        "postfix": _text,
        "unit": _text,
        "error": _text,
        "meta": st.one_of(
            st.dictionaries(st.text(max_size=5), _values, max_size=4),
            st.sampled_from([{"big": "y" * 4085}, {"big": "y" * 4086}, {"big": "é" * 2100}]),
            _values,
        ),
        "extra": _values,
    },
)


def _verdict(check: Any) -> tuple[bool, Any]:
    try:
        return True, check()
    except SchemaError as error:
        return False, error.details


@settings(max_examples=3000, deadline=None)
@given(st.lists(_events, min_size=1, max_size=3), st.booleans())
def test_the_fast_decoder_agrees_with_the_exact_validator(
    raws: list[dict[str, Any]], single: bool
) -> None:
    body = json.dumps(raws[0] if single else raws).encode()
    fast = _verdict(lambda: [event.fields() for event in decode_events(body, 10)])
    exact = _verdict(lambda: parse_events(json.loads(body), 10))
    assert fast == exact


def test_the_fast_decoder_refuses_what_is_not_json() -> None:
    for body in (b"{", b'{"task_id": "a", "n": NaN}', b"", b"\xff"):
        with pytest.raises(SchemaError) as caught:
            decode_events(body, 10)
        assert caught.value.summary.startswith("the body is not valid JSON: "), body


# Whatever the server accepts must render everywhere it is shown: the page (display.card), the
# API and the feed (JSON), `progressista watch` (terminal.render, as text only) and /metrics.
# Hypothesis throws valid events at the extremes of every field.
_LARGEST = 1.7976931348623157e308
_amounts = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.floats(min_value=0, max_value=_LARGEST),
    st.sampled_from([0, 5e-324, 1e-300, 0.5, 1, 1.5, 999.5, 1e15, 1e308, _LARGEST, 2**63 - 1]),
)
_positive = st.one_of(
    st.integers(min_value=1, max_value=2**63 - 1),
    st.floats(min_value=5e-324, max_value=_LARGEST),
    st.sampled_from([5e-324, 1e-300, 1, 1000, 1024, 1e308]),
)
_writers_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "\x1b]52;c;cm0gLXJmIH4K\x07",
            "\x1b[2J\x1b[H",
            "\x9b31m",
            "a\rb\x7f",
            "\u202eexe",
            "é" * 1000,
        ]
    ),
)
_accepted_events = st.fixed_dictionaries(
    {
        "task_id": st.text(min_size=1, max_size=200).filter(
            lambda text: text.isprintable() and text not in (".", "..")
        ),
    },
    optional={
        "status": st.sampled_from(schema.STATUSES),
        "n": _amounts,
        "total": st.one_of(st.none(), _amounts),
        "elapsed": st.one_of(st.none(), _amounts),
        "rate": st.one_of(st.none(), _amounts),
        "unit_scale": st.one_of(st.booleans(), _amounts),
        "unit_divisor": _positive,
        "seq": st.integers(min_value=0, max_value=2**63 - 1),
        "timestamp": st.floats(min_value=-_LARGEST, max_value=_LARGEST),
        "desc": _writers_text,
        "postfix": _writers_text,
        "unit": _writers_text.map(lambda text: text[:32]),
        "meta": st.dictionaries(
            _writers_text.map(lambda text: text[:20]),
            st.one_of(st.none(), st.booleans(), _amounts, _writers_text),
            max_size=3,
        ),
    },
)


def _with_error(event: dict[str, Any], error: str) -> dict[str, Any]:
    return {**event, "status": "error", "error": error} if event.get("status") == "error" else event


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_accepted_events, _writers_text), min_size=1, max_size=4))
def test_any_accepted_event_renders_on_the_page_in_watch_in_the_api_and_in_metrics(
    drafts: list[tuple[dict[str, Any], str]],
) -> None:
    import asyncio

    import msgspec

    from progressista.server import display
    from progressista.server.hub import Hub
    from progressista.server.metrics import ConnectionStats, IngestStats, exposition
    from progressista.server.store import MemoryStore
    from progressista.server.throttle import ThrottleStats
    from progressista.terminal import render

    from .test_terminal import terminal_safe

    raws = [_with_error(event, error) for event, error in drafts]
    try:
        events = decode_events(json.dumps(raws).encode(), 10)
    except SchemaError:  # labels over 4 KiB: the only way these drafts can be refused
        return
    now = 1_800_000_000.0

    async def shown() -> None:
        store = MemoryStore(100)
        hub = Hub(store.table, interval=0.025, viewer_timeout=10)
        await store.apply(events, now)
        tasks = store.table.tasks
        for task in tasks.values():
            display.card(task, now + 5)
        msgspec.json.encode(tasks)
        frame = render(msgspec.to_builtins(tasks), "http://dash", "live", 100, 40, now=now + 5)
        assert terminal_safe(frame), repr(frame)
        await exposition(
            IngestStats(), hub, store.table, 10, [], ConnectionStats(), ThrottleStats()
        )

    asyncio.run(shown())
