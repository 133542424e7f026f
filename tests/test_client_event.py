"""What the client builds, the server takes: every event a bar can produce passes the schema.

The client cleans a bar's values into wire values (:mod:`progressista.client.event`); the schema
says what the server accepts. These properties hold the two together for any value tqdm may hold,
text UTF-8 cannot carry included, after encoding as the sender encodes.
"""

from __future__ import annotations

import json
import math
import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressista.client.event import (
    EventMaker,
    build_meta,
    default_task_id,
    describe_exception,
    encode_batch,
    event_from,
    given_task_id,
)
from progressista.schema import Event, check_task_id, parse_events
from progressista.settings import ClientSettings

#: Any text, lone surrogates (a file name's undecodable bytes) and control characters included.
TEXT = st.text(st.characters(exclude_categories=()), max_size=1200) | st.just("a\udc80b")
NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    TEXT,
)
LABELS = st.dictionaries(
    TEXT, st.one_of(NUMBERS, st.lists(st.integers(), max_size=3)), max_size=8
) | st.just({"file": "report\udcff.csv", "ok": True})


def accepted(event: Event) -> Event:
    """The event as the server gets it: encoded as the sender does, then validated."""
    body, bad = encode_batch([event])
    assert bad == []
    (parsed,) = parse_events(json.loads(body), 1000)
    return parsed


def complete(fields: Event, meta: dict[str, Any] | None = None) -> Event:
    return {
        **fields,
        "task_id": "t",
        "status": "update",
        "seq": 1,
        "timestamp": 1.5,
        "meta": meta or {},
    }


@settings(max_examples=300, deadline=None)
@given(
    n=NUMBERS,
    total=NUMBERS,
    prefix=TEXT | NUMBERS,
    postfix=TEXT | NUMBERS,
    unit=TEXT | NUMBERS,
    unit_scale=NUMBERS,
    unit_divisor=NUMBERS,
    elapsed=NUMBERS,
    rate=NUMBERS,
    initial=NUMBERS,
)
def test_any_format_dict_makes_an_event_the_server_accepts(**values: Any) -> None:
    format_dict = {"prefix" if k == "prefix" else k: v for k, v in values.items()}
    accepted(complete(event_from(format_dict)))


class FakeBar:
    """The attributes of a tqdm that EventMaker reads, each set by the test."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self.start_t = 100.0

    def _time(self) -> float:
        return 100.0 + float(self.__dict__["elapsed_"])

    def _ema_dn(self) -> Any:
        return self.__dict__["dn"]

    def _ema_dt(self) -> Any:
        return self.__dict__["dt"]


@settings(max_examples=300, deadline=None)
@given(
    n=NUMBERS,
    total=NUMBERS,
    desc=TEXT | NUMBERS,
    postfix=TEXT | NUMBERS,
    unit=TEXT | NUMBERS,
    unit_scale=NUMBERS,
    unit_divisor=NUMBERS,
    initial=NUMBERS,
    elapsed_=st.floats(min_value=0, max_value=1e9),
    dn=st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-5, max_value=5),
    dt=st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-5, max_value=5),
    labels=LABELS,
    status=st.sampled_from(["start", "update", "close", "error"]),
)
def test_any_bar_state_makes_an_event_the_server_accepts(
    labels: dict[str, Any], status: str, **values: Any
) -> None:
    meta = build_meta(ClientSettings(job="job\udc80"), labels)
    maker = EventMaker(default_task_id(), meta)
    event = maker.event(FakeBar(values), status)
    if status == "error":
        event["error"] = describe_exception(ValueError("bad \udc80 row"))
    parsed = accepted(event)
    assert parsed["seq"] == maker.seq


@settings(max_examples=200, deadline=None)
@given(labels=LABELS)
def test_labels_never_raise_and_always_fit(labels: dict[str, Any]) -> None:
    accepted(complete(event_from({}), build_meta(ClientSettings(), labels)))


def test_labels_that_cannot_even_be_listed_are_left_out() -> None:
    class Broken(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("no")

    meta = build_meta(ClientSettings(), Broken(a=1))
    assert set(meta) == {"host", "pid"}


def test_a_lone_surrogate_in_one_event_does_not_cost_the_others_their_update() -> None:
    good = complete(event_from({"n": 1, "prefix": "fine"}))
    odd = complete(event_from({"n": 2})) | {"desc": "name-\udc80.csv"}  # built by hand, uncleaned
    body, bad = encode_batch([good, odd, good])
    assert bad == []
    events = parse_events(json.loads(body), 1000)
    assert [event["n"] for event in events] == [1, 2, 1]
    assert events[1]["desc"] == "name-\ufffd.csv"


@pytest.mark.parametrize("program", ["etl\udc80.py", "tab\tname.py", "x" * 500])
def test_the_default_id_is_valid_whatever_the_program_is_called(
    program: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [program])
    assert check_task_id(default_task_id()) is None


def test_a_given_id_with_a_surrogate_is_repaired_and_a_control_character_refused() -> None:
    assert given_task_id("shard-\udc80") == "shard-\ufffd"
    with pytest.raises(ValueError, match="must not contain control"):
        given_task_id("a\nb")


def test_the_final_rate_is_the_one_the_console_prints() -> None:
    # At close tqdm drops its smoothed rate and prints the average since the start.
    event = event_from({"n": 3, "initial": 0, "elapsed": 10.92, "rate": None})
    assert event["rate"] == pytest.approx(3 / 10.92)
    assert not math.isclose(event["rate"], 1.0025)


def test_numbers_that_are_not_python_numbers_are_read_as_numbers() -> None:
    event = event_from({"n": Decimal("2.5"), "total": Decimal("10")})
    assert (event["n"], event["total"]) == (2.5, 10.0)


def test_updates_carry_what_changed_and_everything_after_a_failed_send() -> None:
    import io

    from tqdm import tqdm

    bar = tqdm(total=10, desc="Loading", file=io.StringIO(), mininterval=0)
    maker = EventMaker("t", {"host": "h"})
    start = maker.event(bar, "start", generation=0)
    assert {"desc", "total", "unit", "meta"} <= set(start)
    bar.update(1)
    update = maker.event(bar, "update", generation=0)
    assert set(update) == {"task_id", "n", "elapsed", "rate", "timestamp", "seq"}
    bar.set_description("Saving")
    assert maker.event(bar, "update", generation=0)["desc"] == "Saving"
    again = maker.event(bar, "update", generation=1)  # the outbox saw a failure meanwhile
    assert {"desc", "total", "unit", "meta", "postfix"} <= set(again)
    bar.close()
    final = maker.event(bar, "close", generation=1)
    assert final["status"] == "close" and final["meta"] == {"host": "h"}
    assert [start["seq"], update["seq"], again["seq"]] == sorted(
        {start["seq"], update["seq"], again["seq"]}
    )
