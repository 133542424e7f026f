"""The client's batching policy, without I/O: a fake clock and fixed randomness."""

from __future__ import annotations

from typing import Any

import pytest

from progressista.client.outbox import FinalEvent, Outbox, WeakSource
from progressista.client.tuning import MIN_GAP, TENTATIVE_HOLD
from progressista.schema import Event

from .conftest import FakeClock


class Bar:
    """A stand-in for an open bar (an outbox.Bar): its state is whatever n says."""

    def __init__(self, n: int = 0, thread: int = 1) -> None:
        self.n = n
        self.remote_thread = thread
        self.outbox: Outbox | None = None

    def remote_event(self) -> Event:
        return {"task_id": "b", "n": self.n}

    def remote_final_event(self, status: str = "close", error: str | None = None) -> Event:
        event: Event = {"task_id": "b", "n": self.n, "status": status}
        if error is not None:
            event["error"] = error
        return event

    def remote_moved(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def remote_progress(self) -> tuple[int, int | None]:
        return self.n, None


def outbox(clock: FakeClock, **kwargs: Any) -> Outbox:
    settings: dict[str, Any] = {"push_every": 1.0, "keepalive": 15.0, "random": lambda: 0.5}
    return Outbox(clock=clock, **{**settings, **kwargs})


def test_one_slot_per_bar_latest_wins(clock: FakeClock) -> None:
    box = outbox(clock)
    first, second = Bar(1), Bar(2)
    for _ in range(10_000):
        box.put("a", first)
    box.put("a", second)
    box.put("b", first)
    assert box.pending == 2
    assert box.take() == {"a": second, "b": first}
    assert box.pending == 0


def test_sends_at_most_every_push_every(clock: FakeClock) -> None:
    box = outbox(clock)
    assert box.delay() is None
    box.put("a", Bar())
    assert box.delay() == 0.0
    box.take()
    box.delivered()
    box.put("a", Bar())
    assert box.delay() == 1.0
    clock.advance(0.4)
    assert box.delay() == pytest.approx(0.6)


def test_an_urgent_put_goes_after_a_short_gap(clock: FakeClock) -> None:
    box = outbox(clock)
    box.put("a", Bar())
    box.take()
    box.delivered()
    box.put("a", FinalEvent({"status": "close"}), urgent=True)
    assert box.delay() == pytest.approx(MIN_GAP)


def test_wakes_the_transport_when_work_appears(clock: FakeClock) -> None:
    wakes: list[int] = []
    box = outbox(clock, on_ready=lambda: wakes.append(1))
    box.put("a", Bar())
    box.put("b", Bar())  # already awake: no second wake
    box.put("c", Bar(), urgent=True)  # but urgency is news
    assert len(wakes) == 2


def test_retry_backs_off_exponentially_with_jitter_and_a_cap(clock: FakeClock) -> None:
    box = outbox(clock, push_every=1.0, backoff_cap=8.0, random=lambda: 0.0)
    bar = Bar()
    backoffs = []
    for _ in range(6):
        box.put("a", bar)
        backoffs.append(box.retry(box.take()))
    assert backoffs == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # (1, 2, 4, 8, 8, 8) times jitter 0.5
    high = outbox(clock, push_every=1.0, random=lambda: 0.999)
    high.put("a", bar)
    assert 1.49 < high.retry(high.take()) < 1.5
    box.delivered()
    box.put("a", bar)
    assert box.retry(box.take()) == 0.5  # success resets the backoff


def test_retry_after_from_the_server_is_honoured(clock: FakeClock) -> None:
    box = outbox(clock)
    box.put("a", Bar())
    assert box.retry(box.take(), retry_after=10.0) == 10.0
    assert box.delay() == 10.0


def test_a_failed_batch_comes_back_unless_the_bar_moved_on(clock: FakeClock) -> None:
    box = outbox(clock)
    old, new = FinalEvent({"n": 1}), FinalEvent({"n": 2})
    box.put("a", old)
    box.put("b", old)
    batch = box.take()
    box.put("a", new)
    box.retry(batch)
    assert box.take() == {"a": new, "b": old}


def test_413_halves_the_batch_and_retries_at_once(clock: FakeClock) -> None:
    box = outbox(clock, max_batch=8)
    for i in range(8):
        box.put(str(i), Bar())
    batch = box.take()
    box.shrink(batch)
    assert (box.max_batch, box.delay()) == (4, 0.0)
    assert list(box.take()) == ["0", "1", "2", "3"]


def test_a_refusal_warns_once_per_status_and_drops_the_batch(clock: FakeClock) -> None:
    box = outbox(clock)
    verdicts = []
    for status in (401, 401, 400, 401):
        box.put("a", Bar())
        box.take()
        verdicts.append(box.refused(status))
    assert verdicts == [True, False, True, False]
    assert box.pending == 0


def test_memory_is_bounded_by_bars_not_updates(clock: FakeClock) -> None:
    box = outbox(clock, max_finals=3)
    for i in range(5):
        box.put(f"bar-{i}", FinalEvent({"n": i}))
    assert box.pending == 3
    assert box.drop_news() == 2  # the transport warns, once
    box.put("bar-5", FinalEvent({"n": 5}))
    assert box.drop_news() == 0  # however many more go
    assert list(box.take()) == ["bar-3", "bar-4", "bar-5"]


def test_open_bars_are_never_dropped_however_many(clock: FakeClock) -> None:
    box = outbox(clock, max_finals=3)
    bars = [Bar(i) for i in range(20)]
    for i, open_bar in enumerate(bars):
        box.put(f"open-{i}", WeakSource(open_bar))
    box.put("closed", FinalEvent({"n": 1}))
    assert box.pending == 21
    assert box.drop_news() == 0


def test_open_bars_are_resent_as_keepalives(clock: FakeClock) -> None:
    box = outbox(clock, keepalive=15.0)
    bar = Bar()
    box.opened("a", bar)
    assert box.delay() == 15.0
    clock.advance(15)
    assert {key: source.remote_event() for key, source in box.take().items()} == {
        "a": bar.remote_event()
    }
    assert box.delay() == 15.0


def test_a_server_with_a_short_stale_after_gets_keepalives_as_often_as_it_asks(
    clock: FakeClock,
) -> None:
    box = outbox(clock, keepalive=15.0)
    bar = Bar()
    box.opened("a", bar)
    box.delivered(keepalive=2.0)  # the server's 202 asked for one every 2 s
    assert box.delay() == 2.0
    clock.advance(2)
    assert list(box.take()) == ["a"]
    box.delivered(keepalive=60.0)  # never more seldom than the worker's own setting
    assert box.keepalive == 15.0
    box.delivered(keepalive=0.0)  # nor absurdly often
    assert box.keepalive == 15.0
    box.delivered()  # a server that asks nothing gets the worker's own
    assert box.keepalive == 15.0


def test_a_pending_update_does_not_keep_a_bar_alive(clock: FakeClock) -> None:
    import gc
    import weakref

    box = outbox(clock)
    bar = Bar(3)
    box.put("a", WeakSource(bar))
    alive = weakref.ref(bar)
    del bar
    gc.collect()
    assert alive() is None
    with pytest.raises(LookupError):
        box.take()["a"].remote_event()


def test_closed_bars_are_not_kept_alive_and_open_ones_stay_collectable(clock: FakeClock) -> None:
    box = outbox(clock)
    bar = Bar()
    box.opened("a", bar)
    box.closed("a", FinalEvent({"status": "close"}), urgent=True)
    box.take()
    assert box.idle
    box.opened("b", Bar())  # no other reference: the outbox must not keep it alive
    assert box.idle


def test_a_crash_fails_open_bars_and_abandoned_loops_on_its_path(clock: FakeClock) -> None:
    box = outbox(clock)
    open_bar = Bar(thread=1)
    other_thread = Bar(thread=2)
    box.opened("open", open_bar)
    box.opened("other", other_thread)
    here, elsewhere = (1, Bar.remote_event.__code__, 10), (1, Bar.remote_event.__code__, 99)
    box.put("loop", FinalEvent({"status": "close"}, tentative=True, thread=1, origin=here))
    box.put("break", FinalEvent({"status": "close"}, tentative=True, thread=1, origin=elsewhere))
    box.put("clean", FinalEvent({"status": "close"}, thread=1))
    marked = box.fail(1, "KeyError: 'x'", {here})
    assert marked == 2
    sent = {key: source.remote_event() for key, source in box.take().items()}
    assert sent["loop"] == {"status": "error", "error": "KeyError: 'x'"}
    assert sent["open"] == {"task_id": "b", "n": 0, "status": "error", "error": "KeyError: 'x'"}
    assert sent["break"] == {"status": "close"}
    assert sent["clean"] == {"status": "close"}
    assert "other" not in sent


def test_at_exit_open_bars_are_closed(clock: FakeClock) -> None:
    box = outbox(clock)
    bar = Bar(5)
    box.opened("a", bar)
    box.close_open_bars(lambda b: None)
    assert box.take()["a"].remote_event() == {"task_id": "b", "n": 5, "status": "close"}
    assert box.idle


def test_every_changed_bar_goes_in_one_round_of_back_to_back_batches(clock: FakeClock) -> None:
    box = outbox(clock, push_every=0.5, max_batch=1000)
    bars = [Bar(i) for i in range(2500)]
    for i, each in enumerate(bars):
        box.put(f"b{i}", WeakSource(each))
    sizes = []
    while box.pending:
        assert box.delay() == 0.0  # no waiting between the batches of a round
        sizes.append(len(box.take()))
        box.delivered()
        clock.advance(0.01)
    assert sizes == [1000, 1000, 500]
    box.put("b0", WeakSource(bars[0]))
    assert box.delay() == pytest.approx(0.5 - 0.03)  # the next round, push_every after this one


def test_a_bar_that_changes_again_mid_round_waits_for_the_next_round(clock: FakeClock) -> None:
    box = outbox(clock, push_every=0.5, max_batch=2)
    bars = [Bar(i) for i in range(4)]
    for i, each in enumerate(bars):
        box.put(f"b{i}", WeakSource(each))
    assert list(box.take()) == ["b0", "b1"]
    box.put("b0", WeakSource(bars[0]))  # changed again while the round goes on
    assert box.delay() == 0.0
    assert list(box.take()) == ["b2", "b3"]
    assert box.delay() == pytest.approx(0.5)
    clock.advance(0.5)
    assert list(box.take()) == ["b0"]


def test_a_failure_ends_the_round_and_asks_for_every_field_again(clock: FakeClock) -> None:
    box = outbox(clock, push_every=0.5, max_batch=2, random=lambda: 0.5)
    for i in range(4):
        box.put(f"b{i}", Bar(i))
    generation = box.generation
    box.retry(box.take())
    assert box.generation == generation + 1
    assert box.delay() == pytest.approx(0.5)  # the backoff, not the rest of the round


@pytest.mark.parametrize("retry_after", [86400.0, float("inf"), 1e308])
def test_a_retry_after_past_the_cap_waits_the_cap(clock: FakeClock, retry_after: float) -> None:
    box = outbox(clock, backoff_cap=30.0)
    box.put("a", Bar())
    assert box.retry(box.take(), retry_after=retry_after) == 30.0
    assert box.delay() == 30.0


def test_a_day_long_outage_never_overflows_the_backoff(clock: FakeClock) -> None:
    box = outbox(clock, backoff_cap=30.0, random=lambda: 0.5)
    backoffs = []
    for _ in range(5000):  # a failure every 30 s for more than a day
        box.put("a", Bar())
        backoffs.append(box.retry(box.take()))
    assert backoffs[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(backoffs[6:]) == {30.0}


def test_a_tentative_close_waits_for_the_crash_handler_then_goes_as_completed(
    clock: FakeClock,
) -> None:
    box = outbox(clock)
    box.closed("loop", FinalEvent({"status": "close"}, tentative=True), urgent=True)
    clock.advance(TENTATIVE_HOLD / 2)
    assert box.take() == {}  # an exception may still be unwinding: held back
    assert box.pending == 1
    clock.advance(TENTATIVE_HOLD / 2)
    sent = box.take()
    assert sent["loop"].remote_event() == {"status": "close"}
    assert box.pending == 0


def test_a_refused_connection_is_tried_again_within_a_few_seconds(clock: FakeClock) -> None:
    """A server restarting refuses connections; at the 30 s cap its bars' states stayed that
    old once it was back (9.6 s in a trial, and a job called stalled). A refused connect
    costs microseconds: its backoff stops at REFUSED_BACKOFF_CAP."""
    from progressista.client.exchange import apply_failure
    from progressista.client.reachability import Reachability
    from progressista.client.tuning import REFUSED_BACKOFF_CAP

    box = outbox(clock, push_every=1.0, random=lambda: 0.999)
    reach = Reachability("http://127.0.0.1:9", 5.0, clock)
    waits: list[float] = []
    for _ in range(8):
        box.put("a", Bar())
        apply_failure(box, reach, box.take(), ConnectionRefusedError(111, "refused"))
        waits.append(box.delay() or 0.0)
        clock.advance(60)
    assert max(waits) < 1.5 * REFUSED_BACKOFF_CAP
    timeouts = outbox(clock, push_every=1.0, random=lambda: 0.999)
    for _ in range(8):
        timeouts.put("a", Bar())
        apply_failure(timeouts, reach, timeouts.take(), TimeoutError())
    assert (timeouts.delay() or 0.0) > 20  # a server that does not answer is left alone longer
