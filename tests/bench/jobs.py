"""``make bench``, jobs part: what keeping job figures and task histories costs, and how soon a
job's change reaches viewers, at 1,000 tasks in 20 jobs.

- Batched ingest (wrk, batches of 100) with every task labelled with one of 20 jobs, against the
  same events without job labels, runs alternated on one server build: the jobs' share.
- A task's history is sampled at most once a second, so its share is measured in-process: the
  store's apply with sampling on and off, alternated.
- Latency: producers post to the server; one windowed viewer notes when each change arrives as
  a task patch and when its job's figures arrive as a jobs message.

Run ``python -m tests.bench.jobs --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec

from ..server_process import ServerProcess, running_server
from .report import Row, percentile, print_table
from .server import event
from .wrk import FILE_SCRIPT, run_wrk

ARGS = ["--log-level", "warning", "--stale-after", "1h", "--max-tasks", "100000"]


def bodies(path: Path, jobs: bool) -> None:
    """100 batches of 100 events over 1,000 tasks; with a job label (20 jobs) or without."""
    lines = []
    for batch in range(100):
        events = []
        for i in range(100):
            task = (batch * 100 + i) % 1000
            one = event(f"jobs/t{task}", batch)
            one["meta"] = {"host": "worker-7", **({"job": f"job-{task % 20}"} if jobs else {})}
            events.append(one)
        lines.append(json.dumps(events))
    path.write_text("\n".join(lines) + "\n")


def ingest(work: Path, seconds: float, repeats: int) -> dict[str, list[float]]:
    script = work / "post.lua"
    script.write_text(FILE_SCRIPT)
    files = {"jobs": work / "jobs.jsonl", "plain": work / "plain.jsonl"}
    bodies(files["jobs"], True)
    bodies(files["plain"], False)
    rates: dict[str, list[float]] = {"jobs": [], "plain": []}
    for _ in range(repeats):
        for kind, path in files.items():
            with running_server(ARGS) as server:
                result = run_wrk(
                    server.url,
                    server.process.pid,
                    script,
                    [str(path)],
                    100,
                    connections=8,
                    seconds=seconds,
                    warm_up=1,  # every task exists
                )
                assert result.non_2xx == 0, result
                rates[kind].append(result.requests_per_second * 100)
    return rates


def history_share(repeats: int) -> tuple[float, float]:
    """Microseconds an event takes through the store's apply, with and without sampling."""
    from progressista.server import task as task_module
    from progressista.server.event import decode_events
    from progressista.server.store import MemoryStore

    batches = [
        msgspec.json.encode([event(f"h/t{(b * 100 + i) % 1000}", b) for i in range(100)])
        for b in range(200)
    ]
    spacing = task_module.SAMPLE_SPACING

    async def measure(sampling: bool) -> float:
        # Without sampling: one sample per task at its start, none after (the spacing is
        # infinite), so the check that decides costs the same in both.
        task_module.SAMPLE_SPACING = spacing if sampling else math.inf
        try:
            store = MemoryStore(100_000)
            now = time.time()
            decoded = [decode_events(body, 1000) for body in batches]
            started = time.perf_counter()
            for events in decoded:
                now += 0.05  # 20 batches a second: samples happen, as in real life
                await store.apply(events, now)
            return (time.perf_counter() - started) / (len(batches) * 100) * 1e6
        finally:
            task_module.SAMPLE_SPACING = spacing

    async def alternate() -> tuple[float, float]:
        on, off = [], []
        for _ in range(max(repeats, 3) * 3):
            on.append(await measure(True))
            off.append(await measure(False))
        return statistics.median(on), statistics.median(off)

    return asyncio.run(alternate())


async def _latency(server: ServerProcess, seconds: float) -> dict[str, list[float]]:
    """Each change's arrival as a task patch and as its job's figures, from its POST."""
    sent: dict[tuple[str, int], float] = {}
    task_seen: list[float] = []
    job_seen: list[float] = []

    async with aiohttp.ClientSession() as session:
        viewer = await session.ws_connect(f"{server.url}ws?limit=1000", max_msg_size=0)

        async def watch(until: float) -> None:
            pending_jobs: dict[str, float] = {}
            while time.time() < until:
                try:
                    message = await viewer.receive(timeout=max(0.1, until - time.time()))
                except asyncio.TimeoutError:
                    return
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                arrived = time.time()
                data = json.loads(message.data)
                if data["type"] == "patch":
                    for task_id, fields in data["tasks"].items():
                        if "n" in fields and (task_id, fields["n"]) in sent:
                            task_seen.append(arrived - sent[(task_id, fields["n"])])
                            pending_jobs[f"job-{int(task_id.rsplit('t', 1)[1]) % 20}#1"] = sent[
                                (task_id, fields["n"])
                            ]
                elif data["type"] == "jobs" and not data["whole"]:
                    for key in data["jobs"]:
                        if key in pending_jobs:
                            job_seen.append(arrived - pending_jobs.pop(key))

        async def produce(until: float) -> None:
            n = 0
            while time.time() < until:
                n += 1
                for start in range(0, 1000, 100):  # 1,000 events every 0.25 s: 4,000 a second
                    batch = []
                    for task in range(start, start + 100):
                        one = event(f"jobs/t{task}", n)
                        one["meta"] = {"job": f"job-{task % 20}"}
                        batch.append(one)
                        sent[(f"jobs/t{task}", n)] = time.time()
                    async with session.post(f"{server.url}progress", json=batch) as response:
                        assert response.status == 202
                await asyncio.sleep(0.25)

        await viewer.receive(timeout=30)
        until = time.time() + seconds
        await asyncio.gather(watch(until + 1), produce(until))
        await viewer.close()
    return {"task": task_seen, "job": job_seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    options = parser.parse_args()
    repeats = 1 if options.quick else 3
    seconds = 3 if options.quick else 8
    if shutil.which("wrk") is None:
        print("this benchmark needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="progressista-bench-jobs-"))
    rates = ingest(work, seconds, repeats)
    with_sampling, without = history_share(repeats)
    with running_server(ARGS) as server:
        latencies = asyncio.run(_latency(server, seconds * 2))
    shutil.rmtree(work, ignore_errors=True)

    jobs, plain = statistics.median(rates["jobs"]), statistics.median(rates["plain"])
    task_p50 = percentile(latencies["task"], 0.5) * 1000
    task_p99 = percentile(latencies["task"], 0.99) * 1000
    job_p50 = percentile(latencies["job"], 0.5) * 1000
    job_p99 = percentile(latencies["job"], 0.99) * 1000
    rows = [
        Row(
            "batched ingest, 1,000 tasks in 20 jobs",
            f"{jobs:,.0f} events/s",
            f"the same events without jobs: {plain:,.0f}/s",
            f"{jobs / plain:.2f}",
            "cost at most 10%",
            jobs >= 0.9 * plain,
        ),
        Row(
            "store apply with task histories",
            f"{with_sampling:.2f} µs an event",
            f"without sampling: {without:.2f} µs",
            f"{with_sampling / without:.2f}",
            "cost at most 10%",
            with_sampling <= 1.1 * without,
        ),
        Row(
            "a change reaches a viewer, 4,000 events/s",
            f"job figures p50 {job_p50:.1f} ms, p99 {job_p99:.1f} ms",
            f"the task's patch p50 {task_p50:.1f} ms, p99 {task_p99:.1f} ms",
            "",
            "the same broadcast",
            job_p99 <= task_p99 + 25,
        ),
    ]
    print_table("Jobs: what the figures cost, and how soon they reach viewers", rows)
    print(f"\nruns: {repeats}; ingest samples {rates}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
