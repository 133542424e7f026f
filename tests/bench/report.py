"""The benchmarks' tables: per target, what was measured next to its reference from the same run.

Every figure is a median over repeats, with the spread (lowest-highest) beside it, because this
2-core machine is shared: a ratio from one interleaved run means more than any absolute number.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Row", "median_spread", "percentile", "print_table"]


@dataclass
class Row:
    """One line of a target's table; ``met`` is None for a row that only gives context."""

    measure: str
    measured: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median_spread(values: Sequence[float], fmt: Callable[[float], str] = "{:,.1f}".format) -> str:
    """``median (lowest-highest)``, or the one value."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


HEADERS = ("measure", "measured", "reference", "ratio", "target", "met")


def print_table(title: str, rows: Sequence[Row], headers: Sequence[str] = HEADERS) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + " --- |" * len(headers))
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        cells = (row.measure, row.measured, row.reference, row.ratio, row.target, met)
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()
