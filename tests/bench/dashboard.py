"""``make bench`` (dashboard part): the windowed page in headless Chromium against real servers
with 50k and 200k tasks (issue 9, target 6).

Each board is 10% active, 5% failed and 85% completed bars, on a server with ``--max-tasks`` at
the board's size (so new bars evict the longest-closed) and ``--stale-after 1h`` (so the active
ones stay active through the run). The page is opened as ``/?limit=100``: 100 cards per state,
the true counts for everything.

- Interactive: from navigation start to DOMContentLoaded, to the first contentful paint, to
  the page saying ``live`` (its WebSocket open), and to the first frame drawn from the server's
  view. The first load (cold) and the median of 5 more.
- A patch of 100 tasks: the 100 active cards on the page change together every 50 ms; the page
  times the DOM work of every frame it draws (``progressista.applyTimes``): p50 and p95 over
  200 patches.
- Memory over 10 minutes of churn (``--minutes``; 1 with ``--quick``), both boards at once: every
  100 ms the 100 shown active bars move and 5 new bars start and finish (each evicting one),
  which reshapes the completed section. JS heap after a forced garbage collection and DOM
  elements, every 30 s; growth counts from one minute in (half the run with ``--quick``), once
  the churn's jobs and bars have taken their places on the page.

Run ``python -m tests.bench.dashboard --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from ..browser import CHROMIUM_ARGS, chromium_path
from ..server_process import ServerProcess, running_server
from .board import fill, post
from .report import Row, median_spread, percentile, print_table

SHOWN = 100
#: Records when the page went live and when it drew its first frame, before any page script.
TIMING_SCRIPT = """
window.__bench = {live: null, drawn: null};
new MutationObserver(() => {
  const el = document.getElementById("connection");
  if (el && el.dataset.state === "live" && window.__bench.live === null) {
    window.__bench.live = performance.now();
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state"]});
(function watch() {
  const p = window.progressista;
  if (p && p.applyTimes.length > 0) { window.__bench.drawn = performance.now(); return; }
  requestAnimationFrame(watch);
})();
"""


def task(i: int, n: int, status: str = "update") -> dict[str, Any]:
    kinds: list[dict[str, Any]] = [
        {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "total": 4_300_000_000},
        {"unit": "rows", "total": 100_000},
        {"unit": "page", "total": None},
    ]
    event = {
        "task_id": f"job-{i % 40}/task-{i}",
        "status": status,
        "desc": f"Processing shard {i}",
        "n": n,
        "elapsed": 12.5 + n / 1000,
        "rate": 98.7 + i % 7,
        "postfix": f"loss={1 / (n + 1):.3f}",
        "meta": {"job": f"job-{i % 40}", "host": f"worker-{i % 12}"},
        **kinds[i % 3],
    }
    if status == "error":
        event["error"] = "RuntimeError: shard unreadable"
    return event


def stored(i: int) -> dict[str, Any]:
    """The ``i``-th bar of the board: 10% active, 5% failed, the rest completed."""
    if i % 10 == 0:
        return task(i, 100)
    return task(i, 100, "error" if i % 20 == 1 else "close")


def visible_active(count: int) -> list[int]:
    """The active bars a ``limit=100`` page shows: the newest 100 to become active."""
    return [i for i in range(count) if i % 10 == 0][-SHOWN:]


@dataclass
class Load:
    dom_ms: float
    paint_ms: float
    live_ms: float
    drawn_ms: float
    cards: int


@dataclass
class BoardResult:
    count: int
    loads: list[Load] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)
    memory: list[tuple[float, float, int]] = field(default_factory=list)
    #: The newest completed card at the end: a bar the churn created, if the page kept up.
    newest_completed: str = ""


def load_page(browser: Browser, url: str) -> tuple[Page, Load]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.add_init_script(TIMING_SCRIPT)
    page.goto(f"{url}?limit={SHOWN}")
    # Functions, not strings: the page's CSP forbids eval, and it stays on while measuring.
    page.wait_for_function(
        "() => window.__bench.live !== null && window.__bench.drawn !== null", timeout=60_000
    )
    timing: dict[str, Any] = page.evaluate("""() => {
        const nav = performance.getEntriesByType("navigation")[0];
        const paint = performance.getEntriesByName("first-contentful-paint")[0];
        return {dom: nav.domContentLoadedEventEnd, paint: paint ? paint.startTime : NaN,
                live: window.__bench.live, drawn: window.__bench.drawn,
                cards: document.querySelectorAll("li.card").length};
    }""")
    return page, Load(
        timing["dom"], timing["paint"], timing["live"], timing["drawn"], timing["cards"]
    )


def patch_frames(page: Page, url: str, shown: list[int], patches: int) -> list[float]:
    page.evaluate("progressista.applyTimes.length = 0")
    for round_ in range(patches):
        post(url, [task(i, 200 + round_) for i in shown])
        time.sleep(0.05)  # one patch per frame or so, as a busy server sends them
    page.wait_for_timeout(300)
    times: list[float] = page.evaluate("Array.from(progressista.applyTimes)")
    return times


def churn(url: str, shown: list[int], stop: threading.Event) -> None:
    round_ = 0
    while not stop.is_set():
        round_ += 1
        events = [task(i, 300 + round_) for i in shown]
        for k in range(5):  # new bars that start and finish: each evicts the longest-closed
            new = 10_000_000 + round_ * 5 + k
            events.append(task(new, 1, "update"))
            events.append(task(new, 100, "close"))
        try:
            post(url, events)
        except (OSError, RuntimeError) as error:
            print(f"churn: {error}", file=sys.stderr)
        stop.wait(0.1)


def memory_over(pages: list[tuple[Page, str, list[int]]], minutes: float) -> list[list[Any]]:
    """Per page: (minutes, JS heap MiB after GC, DOM elements), sampled while churn runs."""
    stop = threading.Event()
    workers = [
        threading.Thread(target=churn, args=(url, shown, stop), daemon=True)
        for _, url, shown in pages
    ]
    sessions = [page.context.new_cdp_session(page) for page, _, _ in pages]
    samples: list[list[Any]] = [[] for _ in pages]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    try:
        while True:
            elapsed = (time.monotonic() - started) / 60
            for (page, _, _), session, found in zip(pages, sessions, samples, strict=True):
                session.send("HeapProfiler.collectGarbage")
                heap = page.evaluate("performance.memory.usedJSHeapSize") / 1024**2
                nodes = page.evaluate("document.getElementsByTagName('*').length")
                found.append((elapsed, heap, nodes))
            if elapsed >= minutes:
                break
            pages[0][0].wait_for_timeout(min(30_000, max(1000, (minutes - elapsed) * 60_000)))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--sizes", default="50000,200000")
    options = parser.parse_args()
    minutes = options.minutes or (1.0 if options.quick else 10.0)
    sizes = [int(size) for size in options.sizes.split(",")]
    results = [BoardResult(count) for count in sizes]
    with ExitStack() as stack:
        driver = stack.enter_context(sync_playwright())
        browser = driver.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        servers: list[ServerProcess] = []
        for result in results:
            server = stack.enter_context(
                running_server(
                    [
                        "--log-level",
                        "warning",
                        "--max-tasks",
                        str(result.count),
                        "--stale-after",
                        "1h",
                    ]
                )
            )
            started = time.monotonic()
            fill(server.url, range(result.count), stored)
            print(
                f"dashboard: {result.count:,} tasks stored in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            servers.append(server)
        live_pages: list[tuple[Page, str, list[int]]] = []
        for result, server in zip(results, servers, strict=True):
            for _ in range(6):
                page, load = load_page(browser, server.url)
                result.loads.append(load)
                page.close()
            page, _ = load_page(browser, server.url)
            shown = visible_active(result.count)
            result.frames = patch_frames(page, server.url, shown, 40 if options.quick else 200)
            live_pages.append((page, server.url, shown))
            print(
                f"  {result.count:,}: first load {result.loads[0]}; "
                f"{len(result.frames)} frames timed",
                file=sys.stderr,
                flush=True,
            )
        for result, samples in zip(results, memory_over(live_pages, minutes), strict=True):
            result.memory = samples
        for result, (page, _, _) in zip(results, live_pages, strict=True):
            result.newest_completed = page.evaluate(
                """() => document.querySelector('section[data-state="completed"] li.card')
                    .dataset.taskId"""
            )
        browser.close()
    report(results, minutes)
    return 0


def report(results: list[BoardResult], minutes: float) -> None:
    rows: list[Row] = []
    for result in results:
        name = f"{result.count // 1000}k tasks"
        cold, warm = result.loads[0], result.loads[1:]

        def ms(values: list[float]) -> str:
            return median_spread(values, "{:.0f}".format) + " ms"

        worst_ready = max(cold.dom_ms, cold.live_ms, statistics.median(w.live_ms for w in warm))
        rows.append(
            Row(
                f"{name}: DOMContentLoaded / first paint / live / first frame drawn",
                f"{ms([w.dom_ms for w in warm])} / {ms([w.paint_ms for w in warm])} / "
                f"{ms([w.live_ms for w in warm])} / {ms([w.drawn_ms for w in warm])}",
                f"cold load {cold.dom_ms:.0f} / {cold.paint_ms:.0f} / {cold.live_ms:.0f} / "
                f"{cold.drawn_ms:.0f} ms; {cold.cards} cards",
                "",
                "≤ 1 s",
                worst_ready <= 1000,
            )
        )
        p95 = percentile(result.frames, 0.95)
        rows.append(
            Row(
                f"{name}: patch of {SHOWN} shown tasks, DOM work per frame",
                f"p50 {percentile(result.frames, 0.5):.1f} ms, p95 {p95:.1f} ms",
                f"{len(result.frames)} frames, max {max(result.frames):.1f} ms",
                "",
                "p95 ≤ 16 ms",
                p95 <= 16,
            )
        )
        memory = result.memory
        # The churn's first seconds change what the page holds (its jobs fill the overview, its
        # bars the sections): growth is judged from when that shape is reached, a minute in.
        warm_up = min(1.0, minutes / 2)
        settled = next(sample for sample in memory if sample[0] >= warm_up)
        heap_start, heap_end = settled[1], memory[-1][1]
        nodes_start, nodes_end = settled[2], memory[-1][2]
        heaps = [sample[1] for sample in memory if sample[0] >= warm_up]
        flat = heap_end <= heap_start * 1.1 + 1 and nodes_end <= nodes_start * 1.05
        rows.append(
            Row(
                f"{name}: JS heap after GC over {minutes:g} min of churn",
                f"{heap_start:.1f} → {heap_end:.1f} MiB from {settled[0]:.1f} min "
                f"(range {min(heaps):.1f}-{max(heaps):.1f})",
                f"before churn {memory[0][1]:.1f} MiB, {memory[0][2]:,} elements; DOM elements "
                f"{nodes_start:,} → {nodes_end:,}; newest completed card at the end "
                f"{result.newest_completed} (churn's bars are numbered from 10,000,000)",
                "",
                "flat (≤ +10% +1 MiB)",
                flat,
            )
        )
        print(
            f"{name} memory samples (minutes, heap MiB, elements): "
            + ", ".join(f"({m:.1f}, {h:.1f}, {n})" for m, h, n in memory),
            file=sys.stderr,
        )
    print_table(
        f"Target 6: the dashboard in headless Chromium (/?limit={SHOWN}; 5 warm loads after a cold "
        "one; both boards churned at once)",
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
