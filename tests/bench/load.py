"""Load generators for the server benchmark: producers that POST events, viewers that watch /ws.

Each runs in its own process (see server.py) so that the measuring side does not share an event
loop with the load it generates. Viewers get only the fields that changed (the server leaves
``timestamp`` out of partial tasks), so producers carry the wall-clock time of each send in the
field a real bar changes with every event anyway: ``elapsed``, counted from
:func:`time_base` (100 s before the plan starts, so it reads like a bar's elapsed seconds).
A viewer adds the two back together when a patch arrives: that is the end-to-end latency a
person watching the dashboard sees.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec

from ..feed_model import entries


@dataclass
class ProducerPlan:
    url: str
    producers: int
    tasks_per_producer: int
    #: Events in each POST; every producer cycles through its own tasks.
    events_per_post: int
    post_interval: float
    start_at: float
    duration: float


@dataclass
class ProducerResult:
    sent: int = 0
    accepted: int = 0
    failed_posts: int = 0
    #: CPU the producers' process used (user + system).
    cpu_seconds: float = 0.0


@dataclass
class ViewerResult:
    latencies: list[float] = field(default_factory=list)
    bytes_received: list[int] = field(default_factory=list)
    messages: int = 0


def time_base(start_at: float) -> float:
    """The instant producers count ``elapsed`` from: ``send time = time_base + elapsed``."""
    return start_at - 100.0


def _event(task_id: str, n: int, now: float, base: float) -> dict[str, object]:
    """A bar's state as RemoteTqdm sends it: ``n``, ``elapsed`` and tqdm's smoothed ``rate``
    change with every event, as they do for a real bar."""
    elapsed = now - base
    return {
        "task_id": task_id,
        "status": "update",
        "n": n,
        "total": 1_000_000,
        "desc": "Processing shard",
        "unit": "it",
        "elapsed": elapsed,
        "rate": n / elapsed,
        "seq": n,
        "timestamp": now,
        "meta": {"job": "bench", "host": "loadgen"},
    }


async def _produce(
    plan: ProducerPlan, index: int, result: ProducerResult, session: aiohttp.ClientSession
) -> None:
    tasks = [f"bench/p{index}/t{j}" for j in range(plan.tasks_per_producer)]
    cursor = 0
    n = 0
    # Spread the producers evenly over one interval, as independent workers would be.
    next_post = plan.start_at + plan.post_interval * index / plan.producers
    end = plan.start_at + plan.duration
    headers = {"Content-Type": "application/json"}
    base = time_base(plan.start_at)
    while next_post < end:
        await asyncio.sleep(max(0.0, next_post - time.time()))
        n += 25
        now = time.time()
        batch = []
        for _ in range(plan.events_per_post):
            batch.append(_event(tasks[cursor], n, now, base))
            cursor = (cursor + 1) % len(tasks)
        try:
            async with session.post(
                plan.url + "progress", data=msgspec.json.encode(batch), headers=headers
            ) as response:
                reply = await response.json()
                result.sent += len(batch)
                result.accepted += reply.get("accepted", 0)
        except aiohttp.ClientError:
            result.failed_posts += 1
        next_post += plan.post_interval


async def _produce_all(plan: ProducerPlan) -> ProducerResult:
    result = ProducerResult()
    sessions = [aiohttp.ClientSession() for _ in range(plan.producers)]
    try:
        await asyncio.gather(
            *(_produce(plan, index, result, session) for index, session in enumerate(sessions))
        )
    finally:
        for session in sessions:
            await session.close()
    return result


def run_producers(plan: ProducerPlan) -> ProducerResult:
    started = time.process_time()
    result = asyncio.run(_produce_all(plan))
    result.cpu_seconds = time.process_time() - started
    return result


async def _watch(url: str, viewers: int, start_at: float, duration: float) -> ViewerResult:
    result = ViewerResult(bytes_received=[0] * viewers)
    base = time_base(start_at)
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url + "ws", max_msg_size=0) for _ in range(viewers)]
        for socket in sockets:
            await socket.receive(timeout=30)  # the snapshot

        async def watch_one(index: int, socket: aiohttp.ClientWebSocketResponse[bool]) -> None:
            end = start_at + duration
            while True:
                remaining = end + 0.5 - time.time()
                if remaining <= 0:
                    return
                try:
                    message = await socket.receive(timeout=remaining)
                except asyncio.TimeoutError:
                    return
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                arrived = time.time()
                if arrived < start_at:
                    continue
                result.messages += 1
                result.bytes_received[index] += len(message.data)
                for _, task in entries(msgspec.json.decode(message.data)):
                    if task.get("elapsed") is not None:
                        result.latencies.append(arrived - (base + task["elapsed"]))

        await asyncio.gather(*(watch_one(i, socket) for i, socket in enumerate(sockets)))
        for socket in sockets:
            await socket.close()
    return result


def run_viewers(url: str, viewers: int, start_at: float, duration: float) -> ViewerResult:
    return asyncio.run(_watch(url, viewers, start_at, duration))
