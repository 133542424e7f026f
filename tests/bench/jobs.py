"""``make bench``, jobs part: what keeping job figures and task histories costs, and how soon a
job's change reaches viewers, at 1,000 tasks in 20 jobs.

- Batched ingest (wrk, batches of 100) over 1,000 bars, each labelled with one of 20 jobs, on
  the server as shipped, against the same events in no job (the label under another name) on a
  server that keeps no history (``tests.bench.without_history``), runs alternated: what both
  cost together.
- The same over 100,000 bars, for context: there a saturated server gets an event from each
  bar about every half second, as from real workers, so a history sample is taken every fourth
  event (at 1,000 bars, one in hundreds) and a busy bar's job changes fold less.
- In-process, in CPU time, without HTTP's cost and noise around them: decoding and the store's
  apply for the 1,000 bars, with and without; and the histories' part alone at an event a bar
  every 0.5 s, sampling on and off.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ..feed_model import entries
from ..server_process import ServerProcess, running_server
from .report import Row, percentile, print_table
from .server import event
from .wrk import FILE_SCRIPT, WrkRun, run_wrk

ARGS = ["--log-level", "warning", "--stale-after", "1h"]


#: The bars of the many-bar run: enough that, saturated, the server gets an event from each
#: about every half second, as real workers send them (``push_every``).
MANY_BARS = 100_000


def batch(number: int, bars: int, label: str | None) -> list[dict[str, Any]]:
    """Batch ``number`` of 100 events over ``bars`` bars in turn, each bar's meta naming one of
    20 jobs under ``label`` ("job"; another name is the same bytes to decode and check in no
    job), or no meta at all (None)."""
    events = []
    for i in range(100):
        task = (number * 100 + i) % bars
        one = event(f"jobs/t{task}", number)
        if label is not None:
            one["meta"] = {"host": "worker-7", label: f"job-{task % 20}"}
        events.append(one)
    return events


def bodies(path: Path, bars: int, jobs: bool) -> None:
    """At least 100 batches over ``bars`` bars (wrk cycles them), labelled with their jobs or
    the same label under another name: what is measured is keeping the figures, not reading a
    label."""
    with path.open("w") as out:
        for number in range(max(100, bars // 100)):
            out.write(json.dumps(batch(number, bars, "job" if jobs else "pool")) + "\n")


def ingest(work: Path, bars: int, seconds: float, repeats: int) -> dict[str, list[WrkRun]]:
    """Batched ingest over ``bars`` bars, runs alternated: ``with`` job labels on the server as
    shipped, against ``without``: the same bars in no job, on the server that keeps no history
    (``tests.bench.without_history``)."""
    script = work / "post.lua"
    script.write_text(FILE_SCRIPT)
    servers = {"with": "progressista.server", "without": "tests.bench.without_history"}
    files = {kind: work / f"{kind}-{bars}.jsonl" for kind in servers}
    for kind, path in files.items():
        bodies(path, bars, jobs=kind == "with")
    args = [*ARGS, "--max-tasks", str(2 * bars)]
    runs: dict[str, list[WrkRun]] = {kind: [] for kind in servers}
    for _ in range(repeats):
        for kind, module in servers.items():
            with running_server(args, module=module) as server:
                result = run_wrk(
                    server.url,
                    server.process.pid,
                    script,
                    [str(files[kind])],
                    100,
                    connections=8,
                    seconds=seconds,
                    warm_up=max(1, bars // 50_000),  # every bar exists
                )
                assert result.non_2xx == 0, result
                runs[kind].append(result)
    return runs


def ingest_rows(title: str, runs: dict[str, list[WrkRun]], judged: bool) -> list[Row]:
    """Events a second and server CPU an event, with against without: medians of each, and
    the ratio as the median of each repeat's pair of runs (on a noisy machine, neighbouring
    runs share its mood; medians taken apart can pair a fast run with a slow one)."""
    pairs = list(zip(runs["with"], runs["without"], strict=True))
    rate = {kind: statistics.median(run.events_per_second for run in runs[kind]) for kind in runs}
    cpu = {kind: statistics.median(run.cpu_us_per_event for run in runs[kind]) for kind in runs}
    rate_ratio = statistics.median(a.events_per_second / b.events_per_second for a, b in pairs)
    cpu_ratio = statistics.median(a.cpu_us_per_event / b.cpu_us_per_event for a, b in pairs)
    return [
        Row(
            title,
            f"{rate['with']:,.0f} events/s",
            f"no jobs, no histories: {rate['without']:,.0f}/s",
            f"{rate_ratio:.2f}",
            "cost at most 10%" if judged else "",
            rate_ratio >= 0.9 if judged else None,
        ),
        Row(
            "server CPU an event, the same runs",
            f"{cpu['with']:.2f} µs",
            f"without: {cpu['without']:.2f} µs",
            f"{cpu_ratio:.2f}",
            "cost at most 10%" if judged else "",
            cpu_ratio <= 1.1 if judged else None,
        ),
    ]


@dataclass
class InProcess:
    """Server CPU µs an event through decoding and the store's apply, timed in-process in CPU
    time (wall time on this machine swung 0.93-1.20 between identical runs)."""

    #: 1,000 bars in 20 jobs at the wrk runs' pace, against the same label under another name
    #: with no histories: the target's share, without HTTP's cost and noise around it.
    jobs: float
    no_jobs: float
    #: Unlabelled bars at an event each every 0.5 s (a history sample every 4th event), with
    #: histories and without.
    histories: float
    no_histories: float
    #: Medians of each alternation's own ratio (neighbouring runs share the machine's mood).
    jobs_ratio: float
    histories_ratio: float


def in_process(repeats: int) -> InProcess:
    from progressista.server import task as task_module
    from progressista.server.event import decode_events
    from progressista.server.store import MemoryStore

    def batches(label: str | None) -> list[bytes]:
        return [msgspec.json.encode(batch(number, 1000, label)) for number in range(200)]

    spacing = task_module.SAMPLE_SPACING

    async def measure(bodies: list[bytes], sampling: bool, pace: float) -> float:
        # Without sampling: one sample per task at its start, none after (the spacing is
        # infinite), so the check that decides costs the same in both.
        task_module.SAMPLE_SPACING = spacing if sampling else math.inf
        try:
            store = MemoryStore(100_000)
            now = time.time()
            for body in bodies[:10]:  # every task exists
                await store.apply(decode_events(body, 1000), now)
            started = time.process_time()
            for body in bodies:
                now += pace
                await store.apply(decode_events(body, 1000), now)
            spent = time.process_time() - started
            # The job sums folded, as cleanup does every second: once per 150,000 events at
            # the wrk runs' pace, so its share of these 20,000 is left out (0.01 µs an event).
            store.table.jobs.expire(now)
            return spent / (len(bodies) * 100) * 1e6
        finally:
            task_module.SAMPLE_SPACING = spacing

    async def alternate() -> InProcess:
        labelled, other, plain = batches("job"), batches("pool"), batches(None)
        runs: list[list[float]] = [[], [], [], []]
        for _ in range(max(repeats, 3) * 7):
            runs[0].append(await measure(labelled, True, 100 / 150_000))  # the wrk runs' pace
            runs[1].append(await measure(other, False, 100 / 150_000))
            runs[2].append(await measure(plain, True, 0.05))  # 20 batches a second
            runs[3].append(await measure(plain, False, 0.05))
        ratios = [
            statistics.median(a / b for a, b in zip(runs[i], runs[i + 1], strict=True))
            for i in (0, 2)
        ]
        return InProcess(*(statistics.median(times) for times in runs), *ratios)

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
                    for task_id, fields in entries(data):
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
    repeats = 1 if options.quick else 4
    seconds = 3 if options.quick else 8
    if shutil.which("wrk") is None:
        print("this benchmark needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="progressista-bench-jobs-"))
    few = ingest(work, 1000, seconds, 2 * repeats - 1)  # the target: more repeats
    many = ingest(work, MANY_BARS, seconds, max(1, repeats - 2))
    timed = in_process(repeats)
    with running_server([*ARGS, "--max-tasks", "100000"]) as server:
        latencies = asyncio.run(_latency(server, seconds * 2))
    shutil.rmtree(work, ignore_errors=True)

    task_p50 = percentile(latencies["task"], 0.5) * 1000
    task_p99 = percentile(latencies["task"], 0.99) * 1000
    job_p50 = percentile(latencies["job"], 0.5) * 1000
    job_p99 = percentile(latencies["job"], 0.99) * 1000
    rows = [
        *ingest_rows("job figures and histories, batched ingest, 1,000 bars in 20 jobs", few, True),
        *ingest_rows(
            f"for context: {MANY_BARS:,} bars (each an event about every 0.5 s)", many, False
        ),
        Row(
            "for context: the same 1,000 bars, decoding and the store's apply alone (in-process)",
            f"{timed.jobs:.2f} µs an event",
            f"no jobs, no histories: {timed.no_jobs:.2f} µs",
            f"{timed.jobs_ratio:.2f}",
        ),
        Row(
            "for context: histories alone, a sample every 4th event (in-process)",
            f"{timed.histories:.2f} µs an event",
            f"without: {timed.no_histories:.2f} µs",
            f"{timed.histories_ratio:.2f}",
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
    for bars, runs in ((1000, few), (MANY_BARS, many)):
        for kind, measured in runs.items():
            rates = [round(run.events_per_second) for run in measured]
            cpu = [round(run.cpu_us_per_event, 2) for run in measured]
            print(f"{bars} bars, {kind}: events/s {rates}, CPU µs an event {cpu}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
