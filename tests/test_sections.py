"""The table's per-state order (``server/sections.py``) against OrderedDicts, its reference."""

from __future__ import annotations

import random
import sys
from collections import OrderedDict

import pytest

from progressista.server import sections as sections_module
from progressista.server.sections import Sections

STATES = ("active", "stale", "completed", "failed")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 8, sparse below 2: every path runs within a few dozen ids."""
    monkeypatch.setattr(sections_module, "CHUNK", 8)
    monkeypatch.setattr(sections_module, "_SPARSE", 2)
    monkeypatch.setattr(sections_module, "_SPARSE_BYTES", sys.getsizeof(dict.fromkeys(range(2))))


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("seed", range(20))
def test_sections_keep_the_order_ids_entered_each_state(seed: int) -> None:
    rng = random.Random(seed)
    sections = Sections(STATES)
    reference: dict[str, OrderedDict[str, None]] = {state: OrderedDict() for state in STATES}
    where: dict[str, str] = {}
    for step in range(600):
        roll = rng.random()
        if roll < 0.35 or not where:
            task_id, state = f"t{step}", rng.choice(STATES)
            sections.add(state, task_id)
            reference[state][task_id] = None
            where[task_id] = state
        elif roll < 0.8:
            task_id = rng.choice(sorted(where))
            old, new = where[task_id], rng.choice([s for s in STATES if s != where[task_id]])
            sections.move(task_id, old, new)
            del reference[old][task_id]
            reference[new][task_id] = None
            where[task_id] = new
        else:
            task_id = rng.choice(sorted(where))
            state = where.pop(task_id)
            sections.discard(task_id, state)
            del reference[state][task_id]
        for state in STATES:
            assert list(sections.oldest(state)) == list(reference[state]), (step, state)
            assert list(sections.newest(state)) == list(reversed(reference[state]))
            assert sections.size(state) == len(reference[state])
        assert len(sections) == len(where)
        # An emptied chunk goes, unless it is the one its state fills next.
        opened = {number for number, _ in sections._open.values()}
        assert all(chunk or number in opened for number, chunk in sections._chunks.items())


def test_a_few_long_lived_ids_do_not_keep_their_chunks_memory() -> None:
    """One bar in every thousand active for days, among short ones: each would pin a chunk of
    4,096 ids' memory (dicts never shrink) were sparse chunks not copied afresh."""
    sections = Sections(STATES)
    count = 40 * sections_module.CHUNK
    for index in range(count):  # they all start, filling chunks
        sections.add("active", f"t{index}")
    for index in range(count):  # all but one in a thousand finish and go
        if index % 1000:
            sections.move(f"t{index}", "active", "completed")
            sections.discard(f"t{index}", "completed")
    kept = [chunk for chunk in sections._chunks.values() if chunk]
    assert sections.size("active") == 164
    small = sys.getsizeof(dict.fromkeys(range(sections_module.CHUNK // 16)))
    assert all(sys.getsizeof(chunk) <= small for chunk in kept[:-1]), [
        sys.getsizeof(chunk) for chunk in kept
    ]
    assert list(sections.oldest("active")) == [f"t{i}" for i in range(0, count, 1000)]


def test_a_stale_storm_only_grows_small_dicts() -> None:
    """100k tasks changing state add nothing to the shared locator: no big dict resizes."""
    sections = Sections(STATES)
    for index in range(20_000):
        sections.add("active", f"t{index}")
    locator = sys.getsizeof(sections._chunk_of)
    for index in range(20_000):
        sections.move(f"t{index}", "active", "stale")
    assert sys.getsizeof(sections._chunk_of) == locator
    assert max(map(sys.getsizeof, sections._chunks.values())) <= sys.getsizeof(
        dict.fromkeys(range(sections_module.CHUNK))
    )
    assert sections.counts() == {"active": 0, "stale": 20_000, "completed": 0, "failed": 0}
