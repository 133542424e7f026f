"""``make bench`` (dashboard part): the page in headless Chromium against a real server.

- First render of a 5,000-task page: from navigation start to DOMContentLoaded (the server's
  HTML parsed, the script attached), and to the first snapshot applied. Median of 5 loads.
- A patch changing 100 tasks, with 5,000 on the page: the script's DOM work per frame (it
  times every frame it draws), p50 and p95 over 200 patches.
- Memory across sustained patches (10 minutes; 1 with --quick): JS heap after a forced GC
  and DOM node count, sampled every 30 s, while 100 tasks change every 100 ms and others come
  and go.

Run ``python -m tests.bench.dashboard --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from typing import Any

from playwright.sync_api import Page, sync_playwright

from ..browser import CHROMIUM_ARGS, chromium_path
from ..server_process import ServerProcess, running_server


def post(url: str, events: list[dict[str, Any]]) -> None:
    ServerProcess.post_to(url, events)


def task(i: int, n: int) -> dict[str, Any]:
    kinds: list[dict[str, Any]] = [
        {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "total": 4_300_000_000},
        {"unit": "rows", "total": 100_000},
        {"unit": "page", "total": None},
    ]
    return {
        "task_id": f"job-{i % 40}/task-{i}",
        "desc": f"Processing shard {i}",
        "n": n,
        "elapsed": 12.5 + n / 1000,
        "rate": 98.7 + i % 7,
        "postfix": f"loss={1 / (n + 1):.3f}",
        "meta": {"job": f"job-{i % 40}", "host": f"worker-{i % 12}"},
        **kinds[i % 3],
    }


def fill(url: str, count: int) -> None:
    for start in range(0, count, 1000):
        post(url, [task(i, 100) for i in range(start, min(count, start + 1000))])


def first_render(page: Page, url: str, count: int) -> dict[str, float]:
    page.goto(url)
    # Functions, not strings: the page's CSP forbids eval, and it stays on while measuring.
    page.wait_for_function(
        "(count) => window.progressista && progressista.taskCount() >= count",
        arg=count,
        timeout=60_000,
    )
    page.wait_for_function("() => progressista.applyTimes.length > 0")
    timing = page.evaluate("""() => {
        const nav = performance.getEntriesByType("navigation")[0];
        const paint = performance.getEntriesByName("first-contentful-paint")[0];
        return {dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                paint: paint ? paint.startTime : null,
                cards: document.querySelectorAll("li.card").length};
    }""")
    return timing  # type: ignore[no-any-return]


def patch_frames(page: Page, url: str, patches: int) -> list[float]:
    page.evaluate("progressista.applyTimes.length = 0")
    for round_ in range(patches):
        start = (round_ * 100) % 4900
        post(url, [task(i, 200 + round_) for i in range(start, start + 100)])
        time.sleep(0.05)  # one patch per frame or so, as a busy server sends them
    page.wait_for_timeout(200)
    times: list[float] = page.evaluate("Array.from(progressista.applyTimes)")
    return times


def memory_over(page: Page, url: str, minutes: float) -> list[tuple[float, float, int]]:
    """(minutes, JS heap MiB after GC, DOM nodes), sampled while patches keep coming."""
    stop = threading.Event()

    def churn() -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            start = (round_ * 100) % 4900
            events = [task(i, 300 + round_) for i in range(start, start + 100)]
            # Tasks that come and go: created, closed, then discarded by the server's DELETE.
            events.append({**task(10_000 + round_ % 50, 1), "status": "close"})
            try:
                post(url, events)
                if round_ % 50 == 0:
                    urllib.request.urlopen(
                        urllib.request.Request(f"{url}tasks?state=completed", method="DELETE"),
                        timeout=30,
                    ).read()
            except OSError:
                pass
            stop.wait(0.1)

    client = page.context.new_cdp_session(page)
    samples: list[tuple[float, float, int]] = []
    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    started = time.monotonic()
    try:
        while True:
            elapsed = (time.monotonic() - started) / 60
            client.send("HeapProfiler.collectGarbage")
            heap = page.evaluate("performance.memory.usedJSHeapSize") / 1024**2
            nodes = page.evaluate("document.getElementsByTagName('*').length")
            samples.append((elapsed, heap, nodes))
            if elapsed >= minutes:
                break
            page.wait_for_timeout(min(30_000, max(1000, (minutes - elapsed) * 60_000)))
    finally:
        stop.set()
        worker.join()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=None)
    options = parser.parse_args()
    minutes = options.minutes or (1.0 if options.quick else 10.0)
    count = 5000
    with running_server(["--log-level", "warning"]) as server, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        fill(server.url, count)
        renders = []
        for _ in range(5):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            renders.append(first_render(page, server.url, count))
            page.close()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        first_render(page, server.url, count)
        frames = patch_frames(page, server.url, 40 if options.quick else 200)
        memory = memory_over(page, server.url, minutes)
        browser.close()
    dom_ms = statistics.median(r["dom"] for r in renders)
    paint_ms = statistics.median(r["paint"] for r in renders if r["paint"] is not None)
    frames.sort()
    p50 = frames[len(frames) // 2]
    p95 = frames[min(len(frames) - 1, int(0.95 * len(frames)))]
    heap_start, heap_end = memory[0][1], memory[-1][1]
    nodes_start, nodes_end = memory[0][2], memory[-1][2]
    flat = heap_end <= heap_start * 1.1 + 1 and nodes_end <= nodes_start * 1.05
    rows = [
        (
            f"first render, {count:,} tasks",
            f"{dom_ms:.0f} ms to DOMContentLoaded, first paint "
            f"at {paint_ms:.0f} ms ({renders[0]['cards']:,} cards)",
            "≤ 1 s",
            dom_ms <= 1000,
        ),
        (
            "patch of 100 tasks, 5,000 on the page",
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms of DOM work per frame ({len(frames)} frames)",
            "p95 ≤ 16 ms",
            p95 <= 16,
        ),
        (
            f"page memory over {minutes:g} min of patches",
            f"JS heap {heap_start:.1f} → "
            f"{heap_end:.1f} MiB, DOM nodes {nodes_start:,} → {nodes_end:,}",
            "flat",
            flat,
        ),
    ]
    print("| measure | result | target | met |")
    print("| --- | --- | --- | --- |")
    for name, result, target, met in rows:
        print(f"| {name} | {result} | {target} | {'yes' if met else 'NO'} |")
    print(
        "memory samples (minutes, heap MiB, nodes): "
        + ", ".join(f"({m:.1f}, {h:.1f}, {n})" for m, h, n in memory),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
