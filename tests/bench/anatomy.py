"""Where the server's time goes, in one process: the evidence behind the targets it misses.

Not a target of its own (``make bench`` does not run it): each line times one piece of the
server's own code on a board of 1k and of 1M tasks, alternating, by thread CPU time, so that this
busy machine's scheduling does not count. ``python -m tests.bench.anatomy`` takes about a minute.

- per event: decoding, merging (``apply_event``), staging a batch, and committing it to the
  table, with 1k and 1M tasks stored;
- per operation on a 1M-entry table: a plain dict against an ``OrderedDict`` (iterating one
  costs a hash lookup per key), with hot keys and with keys picked at random;
- the rebuild CPython does when a dict that keeps losing and gaining keys runs out of slots: one
  apply call then pays for every entry of the tables it touches;
- a filtered window following a flush's changes, per change;
- a full garbage collection with 1M tasks stored.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from progressista.server import feed
from progressista.server.event import Event, decode_events
from progressista.server.store import MemoryStore, stage
from progressista.server.task import FIELD_BIT, apply_event
from progressista.server.view import Query, Window

from .scale import active, closed, working_set_bodies

LOOP = asyncio.new_event_loop()


def board(
    count: int, make: Callable[[int], dict[str, Any]], max_tasks: int = 5_000_000
) -> MemoryStore:
    store = MemoryStore(max_tasks)
    for start in range(0, count, 1000):
        body = msgspec.json.encode([make(i) for i in range(start, min(count, start + 1000))])
        LOOP.run_until_complete(store.apply(decode_events(body, 1000), time.time()))
    return store


def cpu_us(run: Callable[[int], object], repeats: int, per: int) -> float:
    """Thread CPU microseconds per item for ``repeats`` calls of ``run`` of ``per`` items each."""
    started = time.thread_time()
    for i in range(repeats):
        run(i)
    return (time.thread_time() - started) / repeats / per * 1e6


def per_event() -> None:
    bodies = [msgspec.json.encode(body) for body in working_set_bodies()]
    events = [decode_events(body, 1000) for body in bodies]
    stores = {"1k": board(1000, closed("done")), "1M": board(1_000_000, closed("done"))}
    for store in stores.values():  # the working set's bars exist, as after a warm-up
        for batch in events:
            LOOP.run_until_complete(store.apply(batch, time.time()))
    now = time.time()
    pieces: dict[str, Callable[[MemoryStore], Callable[[int], object]]] = {
        "msgspec.json.decode, untyped (the bare handler)": lambda s: (
            lambda i: msgspec.json.decode(bodies[i % 50])
        ),
        "decode_events (typed, with the rules)": lambda s: (
            lambda i: decode_events(bodies[i % 50], 1000)
        ),
        "apply_event (copy, merge, derive)": lambda s: _applier(s, events, now),
        "stage (table.get + apply_event)": lambda s: (
            lambda i: stage(s.table.get, events[i % 50], now)
        ),
        "MemoryStore.apply (stage + commit)": lambda s: (
            lambda i: LOOP.run_until_complete(s.apply(events[i % 50], time.time()))
        ),
    }
    found: dict[tuple[str, str], list[float]] = {}
    for _ in range(7):
        for piece, make in pieces.items():
            for name, store in stores.items():
                found.setdefault((piece, name), []).append(cpu_us(make(store), 300, 100))
    print("\nPer event, batches of 100 over a working set of 1,000 bars (µs of CPU, median of 7):")
    for piece in pieces:
        small = statistics.median(found[(piece, "1k")])
        large = statistics.median(found[(piece, "1M")])
        print(f"  {piece:50s} 1k stored {small:5.2f}   1M stored {large:5.2f}")


def _applier(store: MemoryStore, events: list[list[Event]], now: float) -> Callable[[int], object]:
    tasks = store.table.tasks
    pairs = [[(tasks[e.task_id], e) for e in batch] for batch in events]
    return lambda i: [apply_event(task, event, now) for task, event in pairs[i % 50]]


def tables() -> None:
    count = 1_000_000
    keys = [f"live/{i}" for i in range(count)]
    plain = dict.fromkeys(keys)
    ordered = OrderedDict.fromkeys(keys)
    rng = random.Random(9)
    hot = [keys[i % 1000] for i in range(200_000)]
    scattered = [keys[rng.randrange(count)] for _ in range(200_000)]
    print("\nOne operation on a table of 1M keys (ns of CPU):")
    for label, chosen in (("1,000 hot keys", hot), ("keys at random", scattered)):
        started = time.thread_time()
        for key in chosen:
            plain.get(key)
        get = (time.thread_time() - started) / len(chosen) * 1e9
        started = time.thread_time()
        for key in chosen:
            ordered.move_to_end(key)
        move = (time.thread_time() - started) / len(chosen) * 1e9
        print(f"  {label:16s} dict.get {get:5.0f}   OrderedDict.move_to_end {move:5.0f}")
    listed = cpu_us(lambda _: list(plain), 3, 1) / 1000
    listed_ordered = cpu_us(lambda _: list(ordered), 3, 1) / 1000
    print(f"  list() of all keys: dict {listed:.0f} ms, OrderedDict {listed_ordered:.0f} ms")


def rebuild() -> None:
    """New bars into a full 1M store: the apply call during which the tables were rebuilt."""
    count = 1_000_000
    store = board(count, closed("done"), max_tasks=count)
    table = store.table
    new = closed("new")

    def sizes() -> tuple[int, int, int]:
        return (
            sys.getsizeof(table.tasks),
            sys.getsizeof(table.sections._chunk_of),
            sys.getsizeof(table._by_change),
        )

    times = []
    for batch in range(5000):
        body = msgspec.json.encode([new(batch * 100 + i) for i in range(100)])
        events = decode_events(body, 1000)
        before = sizes()
        started = time.thread_time()
        LOOP.run_until_complete(store.apply(events, time.time()))
        spent = (time.thread_time() - started) * 1000
        times.append(spent)
        if sizes() != before:
            print(
                f"\nNew ids into a full 1M store: after {batch * 100:,} new ids, one apply call "
                f"took {spent:.0f} ms of CPU while the tasks dict, the sections' locator and the "
                f"change order were rebuilt (median apply {statistics.median(times):.2f} ms)"
            )
            return
    print("\nNew ids into a full 1M store: no rebuild within 500k new ids")


def window_follow() -> None:
    store = board(1_000_000, closed("done"))
    make = active("storm")
    for start in range(0, 100_000, 1000):
        body = msgspec.json.encode([make(i) for i in range(start, start + 1000)])
        LOOP.run_until_complete(store.apply(decode_events(body, 1000), time.time()))
    table = store.table
    window = Window(table, Query("job=x"), 50)
    window.scan(table.order)
    window.finish()
    changes = {f"storm/{i}": FIELD_BIT["state"] | FIELD_BIT["eta"] for i in range(40_000)}
    started = time.thread_time()
    window.follow(changes)
    spent = (time.thread_time() - started) * 1000
    shown, counts = window.newest(), window.current_counts()
    started = time.thread_time()
    feed.view_patch(table, window.shown, shown, window.counts, counts, changes)
    patch = (time.thread_time() - started) * 1000
    print(
        f"\nA filtered window (job=x) following one flush of 40,000 changes at 1.1M stored: "
        f"Window.follow {spent:.0f} ms, view_patch {patch:.1f} ms of CPU, in one callback"
    )
    started = time.thread_time()
    gc.collect()
    spent = (time.thread_time() - started) * 1000
    print(f"\nA full garbage collection with 1.1M tasks stored: {spent:.0f} ms of CPU")


def main() -> int:
    per_event()
    tables()
    rebuild()
    window_follow()
    return 0


if __name__ == "__main__":
    sys.exit(main())
