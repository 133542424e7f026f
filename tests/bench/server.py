"""``make bench``: the server as a real process, measured against the targets of the server issue.

Every figure is a median over repeats, taken in one run next to a bare aiohttp baseline (the
two alternate run by run), because this 2-core machine is shared and noisy: ratios from one run
mean more than absolute numbers. Issue 9's scale targets are in ``scale.py`` and ``fanout.py``.
The HTTP load comes from ``wrk`` (``apt-get install wrk``), which costs far less CPU per request
than any Python client and so leaves the server its core.

Run ``python -m tests.bench.server --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..server_process import ServerProcess, running_server
from .bare import running_bare
from .board import bar_event
from .load import ProducerPlan, ProducerResult, ViewerResult, run_producers, run_viewers
from .report import percentile
from .usage import cpu_seconds, rss_mib
from .wrk import FILE_SCRIPT, WrkRun, require_wrk, run_wrk


def event(task_id: str, n: int) -> dict[str, Any]:
    """What RemoteTqdm sends for a typical bar (tqdm's format_dict, plus labels), its
    ``elapsed`` fixed: these benchmarks' bodies keep one size whatever ``n``."""
    return {**bar_event(task_id, n), "elapsed": 12.5}


def median_run(runs: list[WrkRun]) -> WrkRun:
    def median(name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in runs))

    return WrkRun(
        requests_per_second=median("requests_per_second"),
        events_per_second=median("events_per_second"),
        p50_ms=median("p50_ms"),
        p99_ms=median("p99_ms"),
        max_ms=max(run.max_ms for run in runs),
        requests=sum(run.requests for run in runs),
        non_2xx=sum(run.non_2xx for run in runs),
        errors=sum(run.errors for run in runs),
        cpu_us_per_event=median("cpu_us_per_event"),
    )


def fill(url: str, count: int, prefix: str = "stored") -> None:
    for start in range(0, count, 1000):
        ServerProcess.post_to(
            url, [event(f"{prefix}/{i}", 1) for i in range(start, min(count, start + 1000))]
        )


@dataclass
class LatencyRun:
    events_per_second: float
    sent: int
    accepted: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    bytes_per_viewer_per_second: float
    server_cpu_percent: float


def run_latency(
    server: ServerProcess, viewers: int, plan_for: Callable[[float], ProducerPlan], duration: float
) -> LatencyRun:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        start_at = time.time() + 3.0 + viewers * 0.02
        plan = plan_for(start_at)
        watching = pool.submit(run_viewers, server.url, viewers, start_at, duration)
        producing = pool.submit(run_producers, plan)
        time.sleep(max(0.0, start_at - time.time()))
        before = cpu_seconds(server.process.pid)
        produced: ProducerResult = producing.result(timeout=duration + 60)
        used = cpu_seconds(server.process.pid) - before
        watched: ViewerResult = watching.result(timeout=duration + 60)
    latencies = watched.latencies or [float("nan")]
    return LatencyRun(
        events_per_second=produced.sent / duration,
        sent=produced.sent,
        accepted=produced.accepted,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies) * 1000,
        bytes_per_viewer_per_second=statistics.median(watched.bytes_received) / duration,
        server_cpu_percent=used / duration * 100,
    )


def median_latency(runs: list[LatencyRun]) -> LatencyRun:
    def med(name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in runs))

    return LatencyRun(
        events_per_second=med("events_per_second"),
        sent=sum(run.sent for run in runs),
        accepted=sum(run.accepted for run in runs),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        max_ms=max(run.max_ms for run in runs),
        bytes_per_viewer_per_second=med("bytes_per_viewer_per_second"),
        server_cpu_percent=med("server_cpu_percent"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    repeats = 1 if options.quick else options.repeats
    wrk_seconds = 2 if options.quick else 5
    latency_seconds = 4.0 if options.quick else 8.0
    require_wrk()

    work = Path(tempfile.mkdtemp(prefix="progressista-bench-"))
    script = work / "post.lua"
    script.write_text(FILE_SCRIPT)
    singles = work / "single.jsonl"
    singles.write_text(
        "".join(json.dumps(event(f"job-{i % 10}/bar-{i}", i)) + "\n" for i in range(1000))
    )
    batches = work / "batch.jsonl"
    batches.write_text(
        "".join(
            json.dumps([event(f"job-{b % 10}/bar-{b * 100 + i}", b) for i in range(100)]) + "\n"
            for b in range(100)
        )
    )

    results: dict[str, Any] = {}
    print(f"measuring: {repeats} repeat(s); wrk {wrk_seconds} s per run", file=sys.stderr)
    # The server (as shipped: log level info, access log quiet) and the bare handler side by
    # side, alternating run by run, so that both see the same machine.
    wrk_runs: dict[str, list[WrkRun]] = {}
    with running_server() as server, running_bare() as bare:
        for _ in range(repeats):
            for name, target in (("bare", bare), ("", server)):
                for kind, bodies, per_request, connections in (
                    ("single", singles, 1, 16),
                    ("batch", batches, 100, 4),
                ):
                    run = run_wrk(
                        target.url,
                        target.process.pid,
                        script,
                        [str(bodies)],
                        per_request,
                        connections=connections,
                        seconds=wrk_seconds,
                    )
                    wrk_runs.setdefault(f"{name}_{kind}".strip("_"), []).append(run)
    for name, found in wrk_runs.items():
        results[name] = median_run(found)

    def busy(start_at: float, url: str) -> ProducerPlan:
        # 1,000 tasks, each updated 4 times a second, from 20 producers: 4,000 events/s.
        return ProducerPlan(
            url,
            producers=20,
            tasks_per_producer=50,
            events_per_post=50,
            post_interval=0.25,
            start_at=start_at,
            duration=latency_seconds,
        )

    def calm(start_at: float, url: str) -> ProducerPlan:
        # The same 1,000 tasks, 50 events/s in all.
        return ProducerPlan(
            url,
            producers=20,
            tasks_per_producer=50,
            events_per_post=1,
            post_interval=0.4,
            start_at=start_at,
            duration=latency_seconds,
        )

    for name, viewers, plan in [("busy_10_viewers", 10, busy), ("calm_100_viewers", 100, calm)]:
        runs = []
        for _ in range(repeats):
            with running_server() as server:
                runs.append(
                    run_latency(
                        server,
                        viewers,
                        lambda at, p=plan, s=server: p(at, s.url),  # type: ignore[misc]  # defaults bind the loop variables
                        latency_seconds,
                    )
                )
        results[name] = median_latency(runs)

    # A viewer's traffic with 100 and with 10,000 tasks stored, the same 200 changes a second.
    traffic = {}
    for stored in (100, 10_000):
        runs = []
        for _ in range(repeats):
            with running_server() as server:
                fill(server.url, stored)
                runs.append(
                    run_latency(
                        server,
                        1,
                        lambda at, s=server: ProducerPlan(  # type: ignore[misc]  # defaults bind the loop variables
                            s.url,
                            producers=10,
                            tasks_per_producer=2,
                            events_per_post=2,
                            post_interval=0.1,
                            start_at=at,
                            duration=latency_seconds,
                        ),
                        latency_seconds,
                    )
                )
        traffic[stored] = median_latency(runs)
    results["traffic"] = traffic

    rss = []
    for _ in range(repeats):
        with running_server() as server:
            fill(server.url, 10_000)
            time.sleep(0.5)
            rss.append(rss_mib(server.process.pid))
    results["rss_10k"] = statistics.median(rss)

    report(results)
    shutil.rmtree(work)
    return 0


def report(results: dict[str, Any]) -> None:
    single, batch = results["single"], results["batch"]
    bare_single, bare_batch = results["bare_single"], results["bare_batch"]
    busy, calm = results["busy_10_viewers"], results["calm_100_viewers"]
    small, large = results["traffic"][100], results["traffic"][10_000]
    rows = [
        (
            "one event per POST",
            f"{single.requests_per_second:,.0f} events/s",
            f"bare handler {bare_single.requests_per_second:,.0f}/s "
            f"({single.requests_per_second / bare_single.requests_per_second:.0%})",
            "≥ 12,000",
            single.requests_per_second >= 12_000 and single.non_2xx == 0,
        ),
        (
            "batches of 100",
            f"{batch.requests_per_second * 100:,.0f} events/s",
            f"bare parse-only {bare_batch.requests_per_second * 100:,.0f}/s "
            f"({batch.requests_per_second / bare_batch.requests_per_second:.0%})",
            "≥ 200,000",
            batch.requests_per_second * 100 >= 200_000 and batch.non_2xx == 0,
        ),
        (
            "server CPU per event",
            f"{single.cpu_us_per_event:.0f} µs single, {batch.cpu_us_per_event:.1f} µs batched",
            "",
            "",
            True,
        ),
        (
            "4,000 events/s, 1,000 tasks, 20 producers, 10 viewers",
            f"p50 {busy.p50_ms:.1f} ms, p99 {busy.p99_ms:.1f} ms",
            f"{busy.accepted:,}/{busy.sent:,} accepted; server CPU {busy.server_cpu_percent:.0f}%",
            "p99 ≤ 50 ms, all accepted",
            busy.p99_ms <= 50 and busy.accepted == busy.sent,
        ),
        (
            "50 events/s, 100 viewers",
            f"p50 {calm.p50_ms:.1f} ms, p99 {calm.p99_ms:.1f} ms",
            f"{calm.accepted:,}/{calm.sent:,} accepted; server CPU {calm.server_cpu_percent:.0f}%",
            "p99 ≤ 50 ms",
            calm.p99_ms <= 50 and calm.accepted == calm.sent,
        ),
        (
            "WebSocket bytes per viewer",
            f"{busy.bytes_per_viewer_per_second / 1024:,.0f} KiB/s at 4,000 events/s",
            f"{calm.bytes_per_viewer_per_second / 1024:,.1f} KiB/s at 50/s",
            "",
            True,
        ),
        (
            "viewer traffic vs tasks stored (200 changes/s)",
            f"{small.bytes_per_viewer_per_second / 1024:,.1f} KiB/s with 100 stored, "
            f"{large.bytes_per_viewer_per_second / 1024:,.1f} KiB/s with 10,000",
            f"ratio {large.bytes_per_viewer_per_second / small.bytes_per_viewer_per_second:.2f}",
            "grows with changes, not stored",
            large.bytes_per_viewer_per_second < 1.5 * small.bytes_per_viewer_per_second,
        ),
        (
            "server RSS, 10,000 live tasks",
            f"{results['rss_10k']:.1f} MiB",
            "",
            "≤ 60 MB",
            results["rss_10k"] * 1.048576 <= 60,
        ),
    ]
    print("| measure | result | context | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for name, result, context, target, met in rows:
        print(f"| {name} | {result} | {context} | {target} | {'yes' if met else 'NO'} |")
    print(
        f"\nmeasured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}; medians over repeats",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
