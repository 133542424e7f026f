"""Which bar a new bar nests in (``client/nesting.py``), against a list walked whole, its model."""

from __future__ import annotations

import contextvars
import random

import pytest

from progressista.client import nesting


class FakeBar:
    """A bar as nesting sees it; counts how often it is asked whether it is open."""

    asked = 0

    def __init__(self, task_id: str) -> None:
        self.remote_task_id = task_id
        self.closed = False

    @property
    def remote_is_open(self) -> bool:
        FakeBar.asked += 1
        return not self.closed


def model_parent(entries: list[tuple[FakeBar, bool]], leave: bool) -> str | None:
    """The rule, read plainly: the newest open bar on this context's stack; a bar that is
    not ``leave=False`` skips those that were only opened, not looped over."""
    for bar, loop in reversed(entries):
        if not bar.closed and (loop or not leave):
            return bar.remote_task_id
    return None


@pytest.mark.parametrize("seed", range(20))
def test_parents_are_those_of_the_whole_list_walked(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nesting, "SWEEP_SLACK", 2)  # sweeps within a few dozen bars
    rng = random.Random(seed)
    entries: list[tuple[FakeBar, bool]] = []
    bars: list[FakeBar] = []

    def run() -> None:
        for step in range(400):
            roll = rng.random()
            if roll < 0.4 or not bars:
                bar = FakeBar(f"b{step}")
                bars.append(bar)
                entries.append((bar, False))
                nesting.opened(bar)
            elif roll < 0.55:
                bar = rng.choice(bars)
                entries.append((bar, True))
                nesting.looping(bar)
            else:
                rng.choice(bars).closed = True
            for leave in (True, False):
                assert nesting.parent_of(leave=leave) == model_parent(entries, leave)

    contextvars.copy_context().run(run)


def test_ten_thousand_bars_side_by_side_open_in_linear_time() -> None:
    """Each new bar once asked every open bar whether it was open: 10,000 bars took 45 s."""

    def run() -> None:
        outer = FakeBar("outer")
        nesting.opened(outer)
        nesting.looping(outer)  # a loop far below: every side bar's parent lookup passes them
        beside = [FakeBar(f"b{i}") for i in range(10_000)]
        FakeBar.asked = 0
        for bar in beside:
            assert nesting.parent_of(leave=True) == "outer"
            nesting.opened(bar)
        assert nesting.parent_of(leave=False) == "b9999"
        assert FakeBar.asked <= 4 * len(beside)  # 50 million, walking every bar each time

    contextvars.copy_context().run(run)


def test_closed_bars_under_open_ones_are_swept_out() -> None:
    def run() -> None:
        keep = FakeBar("keep")
        nesting.opened(keep)
        for i in range(5_000):
            bar = FakeBar(f"short-{i}")
            nesting.opened(bar)
            above = FakeBar(f"above-{i}")
            nesting.opened(above)
            bar.closed = True  # buried under an open bar: not skipped from the top
            above.closed = True
        top = nesting._TOP.get()
        assert top is not None
        assert top.depth <= 2 * 2 + nesting.SWEEP_SLACK + 2
        assert nesting.parent_of(leave=False) == "keep"

    contextvars.copy_context().run(run)


def test_a_context_does_not_see_the_bars_of_the_contexts_it_started() -> None:
    def run() -> None:
        outer = FakeBar("outer")
        nesting.opened(outer)
        nesting.looping(outer)

        def child() -> str | None:
            inner = FakeBar("inner")
            nesting.opened(inner)
            nesting.looping(inner)
            return nesting.parent_of(leave=True)

        assert contextvars.copy_context().run(child) == "inner"  # it sees its own, and ours
        assert nesting.parent_of(leave=True) == "outer"  # ours is as it was

    contextvars.copy_context().run(run)


def test_loops_ended_under_bars_kept_open_are_passed_once() -> None:
    """A bar opened in each round of a loop, and kept: each new round's bar looked for its
    parent past every loop ended before (17.5 million checks for 16,000 rounds)."""

    def run() -> None:
        kept = []
        FakeBar.asked = 0
        for number in range(4000):
            loop = FakeBar(f"loop-{number}")
            assert nesting.parent_of(leave=True) is None
            nesting.opened(loop)
            nesting.looping(loop)
            inner = FakeBar(f"inner-{number}")
            assert nesting.parent_of(leave=True) == f"loop-{number}"
            nesting.opened(inner)
            kept += [inner, loop]  # the loop's bar too: closed, not collected
            loop.closed = True
        assert FakeBar.asked <= 20 * 4000  # a million, walking every ended loop each time

    contextvars.copy_context().run(run)
