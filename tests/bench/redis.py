"""``make bench``, Redis part: the Redis store against the memory store, in one run.

Three figures, each next to its reference from the same run: batched ingest through one server
on Redis against the memory store (wrk, the same bodies, in alternated pairs of runs, the ratio
the median of the pairs'); the latency from a POST to server A until the change reaches a viewer
of server B at 4,000 events/s; and the memory of a server's replica per task against the memory
store's.

Run ``python -m tests.bench.redis --quick`` for a short smoke run. Needs wrk and redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ..feed_model import entries
from ..redis_server import RedisProcess
from ..server_process import ServerProcess, running_server
from .report import Row, percentile, print_table
from .server import event
from .usage import rss_mib
from .wrk import FILE_SCRIPT, run_wrk

QUIET = ["--log-level", "warning", "--max-tasks", "2000000", "--stale-after", "1h"]


@contextmanager
def redis_at(directory: Path) -> Iterator[RedisProcess]:
    """A redis-server without persistence (no append-only file, no snapshots): what is
    measured is the store's own cost, not the disk's."""
    redis = RedisProcess(directory, appendonly=False)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def ingest(
    redis: RedisProcess, bodies: Path, script: Path, seconds: float, repeats: int
) -> dict[str, list[float]]:
    """Events/s through one server, memory store and Redis store alternated: each repeat is a
    pair of runs, the first of the pair taking turns (the machine's mood drifts)."""
    rates: dict[str, list[float]] = {"memory": [], "redis": []}
    for repeat in range(repeats):
        for store in ("memory", "redis") if repeat % 2 == 0 else ("redis", "memory"):
            args = [*QUIET, "--store", redis.url, "--redis-prefix", f"ingest-{repeat}"]
            with running_server(args if store == "redis" else QUIET) as server:
                # 32 connections: many workers at once, as a deployment on Redis has; a store
                # that waits on Redis needs requests in flight to stay busy.
                result = run_wrk(
                    server.url,
                    server.process.pid,
                    script,
                    [str(bodies)],
                    100,
                    connections=32,
                    seconds=seconds,
                    warm_up=1,  # every task exists
                )
                assert result.non_2xx == 0 and result.errors == 0, result
                rates[store].append(result.requests_per_second * 100)
    return rates


async def _latency(a: ServerProcess, b: ServerProcess, seconds: float) -> dict[str, Any]:
    """Producers post to A (1,000 tasks, 4,000 events/s); one viewer follows B's feed.

    Each event's postfix holds its send time; a partial task carries the postfix whenever it
    changed, which it does with every event.
    """
    latencies: list[float] = []
    sent = 0

    async def produce(index: int, session: aiohttp.ClientSession, until: float) -> None:
        nonlocal sent
        tasks = [f"latency/p{index}/t{j}" for j in range(50)]
        n = 0
        next_post = time.time() + 0.25 * index / 20
        while next_post < until:
            await asyncio.sleep(max(0.0, next_post - time.time()))
            n += 1
            stamp = time.time()
            batch = [{"task_id": task, "n": n, "postfix": f"{stamp:.6f}"} for task in tasks]
            async with session.post(
                f"{a.url}progress",
                data=msgspec.json.encode(batch),
                headers={"Content-Type": "application/json"},
            ) as response:
                assert response.status == 202, await response.text()
            sent += len(batch)
            next_post += 0.25

    async with aiohttp.ClientSession() as session:
        viewer = await session.ws_connect(f"{b.url}ws", max_msg_size=0)
        await viewer.receive(timeout=30)  # the (empty) snapshot

        async def watch(until: float) -> None:
            while time.time() < until:
                try:
                    message = await viewer.receive(timeout=max(0.1, until - time.time()))
                except asyncio.TimeoutError:
                    return
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                arrived = time.time()
                for _, task in entries(json.loads(message.data)):
                    if "postfix" in task:
                        latencies.append(arrived - float(task["postfix"]))

        until = time.time() + seconds
        sessions = [aiohttp.ClientSession() for _ in range(20)]
        try:
            await asyncio.gather(
                watch(until + 1), *(produce(i, s, until) for i, s in enumerate(sessions))
            )
        finally:
            for producer_session in sessions:
                await producer_session.close()
        await viewer.close()
    return {"sent": sent, "latencies": latencies, "seconds": seconds}


def replica_memory(redis: RedisProcess, tasks: int) -> dict[str, float]:
    """RSS per task of a server holding ``tasks`` tasks, memory store and Redis replica."""
    per_task = {}
    for store in ("memory", "redis"):
        args = (
            [*QUIET, "--store", redis.url, "--redis-prefix", "memory"]
            if store == "redis"
            else QUIET
        )
        with running_server(args) as server:
            time.sleep(0.5)
            empty = rss_mib(server.process.pid)
            for start in range(0, tasks, 1000):
                ServerProcess.post_to(
                    server.url, [event(f"mem/{i}", 1) for i in range(start, start + 1000)]
                )
            time.sleep(1.0)
            per_task[store] = (rss_mib(server.process.pid) - empty) * 1024 * 1024 / tasks
    return per_task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    options = parser.parse_args()
    repeats = 1 if options.quick else 3
    ingest_repeats = 1 if options.quick else 5  # the noisiest figure: more pairs
    seconds = 3 if options.quick else 8
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            print(f"this benchmark needs {tool}: apt-get install {tool}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="progressista-bench-redis-"))
    script = work / "post.lua"
    script.write_text(FILE_SCRIPT)
    bodies = work / "batch.jsonl"
    bodies.write_text(
        "".join(
            json.dumps([event(f"ingest/t{(b * 100 + i) % 1000}", b) for i in range(100)]) + "\n"
            for b in range(100)
        )
    )
    with redis_at(work) as redis:
        rates = ingest(redis, bodies, script, seconds, ingest_repeats)
        runs = []
        for repeat in range(repeats):
            prefix = ["--redis-prefix", f"latency-{repeat}"]
            with (
                running_server([*QUIET, "--store", redis.url, *prefix]) as a,
                running_server([*QUIET, "--store", redis.url, *prefix]) as b,
            ):
                runs.append(asyncio.run(_latency(a, b, seconds * 2)))
        memory = replica_memory(redis, 20_000 if options.quick else 50_000)
    shutil.rmtree(work, ignore_errors=True)

    memory_rate = statistics.median(rates["memory"])
    redis_rate = statistics.median(rates["redis"])
    # The ratio of each pair of neighbouring runs, then their median: medians taken apart can
    # pair a run in a fast minute with one in a slow minute.
    pair_ratios = [r / m for m, r in zip(rates["memory"], rates["redis"], strict=True)]
    ratio = statistics.median(pair_ratios)
    p50 = statistics.median(percentile(run["latencies"], 0.5) * 1000 for run in runs)
    p99 = statistics.median(percentile(run["latencies"], 0.99) * 1000 for run in runs)
    rate = statistics.median(run["sent"] / run["seconds"] for run in runs)
    rows = [
        Row(
            "batched ingest, one server",
            f"Redis store {redis_rate:,.0f} events/s",
            f"memory store {memory_rate:,.0f}/s",
            f"{ratio:.2f}",
            "≥ 0.5",
            ratio >= 0.5,
        ),
        Row(
            f"POST on A → patch on B's viewer, {rate:,.0f} events/s",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            f"{sum(len(run['latencies']) for run in runs):,} changes seen",
            "",
            "p99 < 100 ms",
            p99 < 100,
        ),
        Row(
            "server memory per task",
            f"Redis replica {memory['redis']:,.0f} bytes",
            f"memory store {memory['memory']:,.0f} bytes",
            f"{memory['redis'] / memory['memory']:.2f}",
            "≤ 1.2",
            memory["redis"] <= 1.2 * memory["memory"],
        ),
    ]
    print_table("Several servers on Redis, against the memory store", rows)
    print(
        f"\nruns per figure: {repeats} ({ingest_repeats} pairs for ingest, ratios "
        f"{', '.join(f'{r:.2f}' for r in pair_ratios)}); ingest samples memory "
        f"{rates['memory']}, redis {rates['redis']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
