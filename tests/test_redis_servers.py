"""Several real servers on one real Redis: one live view, nothing lost through crashes and outages.

Each test starts its own redis-server (a free port, a temporary directory) and server processes
with ``--store redis://...``. Producers here are plain HTTP loops that retry until they get a 202,
as the clients do, and remember the last state the servers accepted for each task: whatever
happens, every server must end with exactly those states.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from .conftest import eventually, free_port
from .feed_model import Board
from .redis_server import RedisProcess, running_redis
from .server_process import ServerProcess, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

QUIET = ["--log-level", "info", "--stale-after", "10m", "--cleanup-interval", "0.2"]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path, appendonly=True) as process:
        yield process


@contextlib.contextmanager
def server_on(redis: RedisProcess, *args: str, port: int | None = None) -> Iterator[ServerProcess]:
    port_args = ["--port", str(port)] if port is not None else []
    with running_server([*QUIET, "--store", redis.url, *port_args, *args]) as server:
        yield server


class Producer:
    """Posts numbered events for its tasks until stopped, retrying each until accepted."""

    def __init__(self, urls: list[str], tasks: list[str]) -> None:
        self.urls = urls
        self.tasks = tasks
        #: The last event each task had accepted (a 202), by task id.
        self.accepted: dict[str, int] = {}
        self.refusals = 0
        self._stop = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            for task_id in self.tasks:
                await self._post(session, {"task_id": task_id, "n": n, "seq": n})
            await asyncio.sleep(0.01)

    async def _post(self, session: aiohttp.ClientSession, event: dict[str, Any]) -> None:
        attempt = 0
        while True:
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                async with session.post(f"{url}progress", json=event) as response:
                    if response.status == 202:
                        self.accepted[event["task_id"]] = event["n"]
                        return
                    self.refusals += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.refusals += 1
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


async def until(read: Any, expected: Any, timeout: float = 20.0) -> bool:
    """Poll ``await read()`` until it gives ``expected``; True then, False after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await read() != expected:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def tasks_of(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with session.get(f"{server.url}tasks") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return {task_id: task["n"] for task_id, task in body["tasks"].items()}


@contextlib.asynccontextmanager
async def watching(session: aiohttp.ClientSession, server: ServerProcess) -> AsyncIterator[Any]:
    """A feed viewer of ``server``, followed in the background into a Board."""
    socket = await session.ws_connect(f"{server.url}ws")
    board = Board()
    closed: list[Any] = []

    async def follow() -> None:
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                board.apply(json.loads(message.data))
        closed.append(socket.close_code)

    follower = asyncio.create_task(follow())
    try:
        yield board, closed
    finally:
        await socket.close()
        await follower


async def test_a_viewer_on_one_server_sees_what_another_server_accepts(
    redis: RedisProcess,
) -> None:
    with server_on(redis) as a, server_on(redis) as b:
        async with aiohttp.ClientSession() as session, watching(session, b) as (board, closed):
            await eventually(lambda: board.snapshots == 1)
            for n in range(1, 6):
                async with session.post(f"{a.url}progress", json={"task_id": "x", "n": n}) as r:
                    assert r.status == 202

                def seen(n: int = n) -> bool:
                    return bool(board.tasks.get("x", {}).get("n") == n)

                await eventually(seen)
            assert await tasks_of(session, a) == await tasks_of(session, b) == {"x": 5}
            assert closed == []


async def test_a_server_killed_and_restarted_loses_nothing_and_others_viewers_stay(
    redis: RedisProcess,
) -> None:
    port = free_port()
    with server_on(redis, port=port) as a, server_on(redis) as b:
        async with aiohttp.ClientSession() as session, watching(session, b) as (board, closed):
            producer = Producer([a.url], [f"task-{i}" for i in range(20)])
            running = asyncio.create_task(producer.run(session))
            await eventually(lambda: len(producer.accepted) == 20)
            a.process.send_signal(signal.SIGKILL)
            a.process.wait()
            await eventually(lambda: producer.refusals > 0)  # the producer noticed, and retries
            with server_on(redis, port=port) as again:
                await eventually(lambda: min(producer.accepted.values(), default=0) > 30)
                producer.stop()
                await running
                expected = producer.accepted
                assert await tasks_of(session, again) == expected
                assert await tasks_of(session, b) == expected
                await eventually(lambda: {t: v["n"] for t, v in board.tasks.items()} == expected)
            assert closed == []  # B's viewer never noticed A die


async def test_redis_restarted_mid_stream_loses_no_accepted_event(redis: RedisProcess) -> None:
    with server_on(redis) as a, server_on(redis) as b:
        async with aiohttp.ClientSession() as session, watching(session, b) as (board, closed):
            producer = Producer([a.url, b.url], [f"task-{i}" for i in range(10)])
            running = asyncio.create_task(producer.run(session))
            await eventually(lambda: len(producer.accepted) == 10)
            redis.stop()  # SIGTERM: Redis flushes its append-only file and exits
            await eventually(lambda: producer.refusals > 0)
            async with session.get(f"{a.url}readyz") as response:
                assert response.status == 503
                assert response.headers["Retry-After"]
            async with session.get(f"{a.url}healthz") as response:
                assert response.status == 200  # still alive: not taken out of rotation
            await eventually(lambda: board.status.get("store") == "unavailable")
            before = dict(producer.accepted)
            redis.start()
            await eventually(lambda: board.status.get("store") == "ok")
            await eventually(lambda: min(producer.accepted.values()) > max(before.values()))
            producer.stop()
            await running
            expected = producer.accepted
            assert await tasks_of(session, a) == expected
            assert await tasks_of(session, b) == expected
            await eventually(lambda: {t: v["n"] for t, v in board.tasks.items()} == expected)
            assert closed == []


async def test_two_servers_racing_on_one_task_end_on_the_highest_seq(
    redis: RedisProcess,
) -> None:
    with server_on(redis) as a, server_on(redis) as b:
        async with aiohttp.ClientSession() as session:

            async def post(server: ServerProcess, seqs: range) -> None:
                for seq in seqs:
                    event = {"task_id": "raced", "n": seq, "seq": seq}
                    async with session.post(f"{server.url}progress", json=event) as response:
                        assert response.status == 202

            await asyncio.gather(post(a, range(0, 400, 2)), post(b, range(401, 0, -2)))
            # B wrote 401 first and A's later, lower seqs were ignored, on both replicas.
            for server in (a, b):
                assert await until(lambda s=server: tasks_of(session, s), {"raced": 401})


async def test_the_cleanup_lock_moves_to_another_server_when_its_holder_dies(
    redis: RedisProcess,
) -> None:
    fast = ["--stale-after", "1"]  # later flags win: cleanup work shows up quickly
    with server_on(redis, *fast) as a:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{a.url}progress", json={"task_id": "early"}) as response:
                assert response.status == 202
            with server_on(redis, *fast) as b:
                a.process.send_signal(signal.SIGKILL)
                a.process.wait()
                async with session.post(f"{b.url}progress", json={"task_id": "late"}) as r:
                    assert r.status == 202

                async def states() -> dict[str, str]:
                    async with session.get(f"{b.url}tasks") as response:
                        body = await response.json()
                    return {task_id: task["state"] for task_id, task in body["tasks"].items()}

                # Only a server running cleanup turns them stale: B, once A's lock expired.
                assert await until(states, {"early": "stale", "late": "stale"}, timeout=60)


async def test_the_redis_password_never_reaches_the_log(redis: RedisProcess) -> None:
    import redis.asyncio as redis_client

    admin = redis_client.from_url(redis.url)
    await admin.config_set("requirepass", "s3cret-pa55")
    await admin.aclose()
    url = redis.url.replace("redis://", "redis://:s3cret-pa55@")
    with running_server(["--log-level", "info", "--store", url]) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}progress", json={"task_id": "a"}) as response:
                assert response.status == 202
    log = "".join(server.log)
    assert "redis://:***@127.0.0.1" in log
    assert "s3cret-pa55" not in log


async def test_with_two_servers_an_alert_arrives_once_even_when_its_sender_dies_mid_send(
    redis: RedisProcess, aiohttp_server: Any
) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []
    hang_first = asyncio.Event()  # the first request hangs until the test lets it go

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        if len(received) == 1:
            await hang_first.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    notify = ["--notify", f"json://127.0.0.1:{receiver.port}/hook"]
    with server_on(redis, *notify) as a, server_on(redis, *notify) as b:
        async with aiohttp.ClientSession() as session:
            event = {"task_id": "t", "status": "error", "error": "boom", "meta": {"job": "etl"}}
            async with session.post(f"{b.url}progress", json=event) as response:
                assert response.status == 202
            await eventually(lambda: len(received) == 1, 60)  # the sender is mid-send
            # Kill whichever server holds the cleanup lock (the sender); the other takes over.
            senders = [s for s in (a, b) if any("runs cleanup now" in line for line in s.log)]
            for sender in senders[:1]:
                sender.process.send_signal(signal.SIGKILL)
                sender.process.wait()
            hang_first.set()
            await eventually(lambda: len(received) == 2, 60)
            # Delivered: nothing is left pending, so no third copy can come.
            import redis.asyncio as redis_client

            raw = redis_client.from_url(redis.url)
            try:
                assert await until(lambda: raw.smembers("{progressista}:alerts-pending"), set())
            finally:
                await raw.aclose()
            assert [message["title"] for message in received] == ["✗ etl failed"] * 2
