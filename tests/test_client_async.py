"""AsyncRemoteTqdm on the test's own loop: one sender task and session, delivery, failures."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from progressista.client import AsyncRemoteTqdm
from progressista.client.aio import _loop_senders
from progressista.server import ServerSettings, create_app
from progressista.server.keys import INGEST_STATS

from .conftest import NEVER, eventually, free_port, stored

FAST = 0.05


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> AsyncIterator[TestServer]:
    yield await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)))


def bar(server: TestServer | str, *args: Any, **kwargs: Any) -> AsyncRemoteTqdm:
    url = server if isinstance(server, str) else f"http://127.0.0.1:{server.port}"
    kwargs.setdefault("file", io.StringIO())
    return AsyncRemoteTqdm(*args, url=url, push_every=FAST, **kwargs)


def tasks(server: TestServer) -> dict[str, Any]:
    return stored(server.app)


async def test_async_with_delivers_the_final_state_before_returning(server: TestServer) -> None:
    async with bar(server, total=3, task_id="aw", desc="Fetch") as progress:
        progress.update(3)
    task = tasks(server)["aw"]  # no waiting: __aexit__ awaited delivery
    assert (task["state"], task["n"], task["desc"]) == ("completed", 3, "Fetch")


async def test_async_for_gather_and_as_completed(server: TestServer) -> None:
    async def job(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    async for _ in bar(server, range(5), task_id="for"):
        await asyncio.sleep(0)
    # The stubs type gather's and as_completed's **tqdm_kwargs as tqdm's own options only.
    results = await AsyncRemoteTqdm.gather(  # type: ignore[call-arg]
        *[job(i) for i in range(20)],
        url=f"http://127.0.0.1:{server.port}",
        push_every=FAST,
        file=io.StringIO(),
        task_id="gather",
    )
    assert sorted(results) == list(range(20))
    for future in AsyncRemoteTqdm.as_completed(  # type: ignore[call-arg]
        [job(i) for i in range(10)],
        url=f"http://127.0.0.1:{server.port}",
        push_every=FAST,
        file=io.StringIO(),
        task_id="asc",
    ):
        await future
    await eventually(
        lambda: (
            {t: v["state"] for t, v in tasks(server).items()}
            == {"for": "completed", "gather": "completed", "asc": "completed"}
        )
    )
    assert [tasks(server)[t]["n"] for t in ("for", "gather", "asc")] == [5, 20, 10]


async def test_an_exception_in_async_with_fails_the_bar(server: TestServer) -> None:
    with pytest.raises(RuntimeError):
        async with bar(server, total=3, task_id="boom") as progress:
            progress.update(1)
            raise RuntimeError("upstream 503")
    task = tasks(server)["boom"]
    assert (task["state"], task["error"], task["n"]) == ("failed", "RuntimeError: upstream 503", 1)


async def test_a_bar_closed_without_awaiting_is_still_delivered(server: TestServer) -> None:
    progress = bar(server, total=2, task_id="sync-close")
    progress.update(2)
    progress.close()
    await eventually(lambda: tasks(server).get("sync-close", {}).get("state") == "completed")


async def test_thousands_of_bars_share_one_task_one_session_and_few_posts(
    server: TestServer,
) -> None:
    count = 2000

    async def crawl(i: int) -> None:
        async with bar(server, total=4, task_id=f"page-{i}", mininterval=0) as progress:
            for _ in range(4):
                await asyncio.sleep(0.01)
                progress.update(1)

    await asyncio.gather(*(crawl(i) for i in range(count)))
    done = [t for t in tasks(server).values() if t["state"] == "completed" and t["n"] == 4]
    assert len(done) == count
    (sender,) = _loop_senders[asyncio.get_running_loop()].values()
    posts = server.app[INGEST_STATS].requests
    # Batches, not a request per bar or per update: 8,000 updates and 2,000 closes went in
    # POSTs of ten bars or more on average (3 POSTs in all, seen on an idle and a busy machine).
    assert posts * 10 <= count, posts
    await eventually(lambda: sender._task is not None and sender._task.done())
    assert sender._session is None


async def test_aclose_gives_up_on_an_unreachable_server_and_the_state_arrives_later(
    aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROGRESSISTA_FLUSH_TIMEOUT", "0.3")
    port = free_port()
    progress = bar(f"http://127.0.0.1:{port}", total=1, task_id="lost")
    progress.update(1)
    # Nobody listens: once the flush timeout has passed, aclose says the state did not arrive
    # (were it to wait for the server instead, the test's own timeout would end it).
    assert not await progress.aclose()
    # It was not dropped: the sender keeps trying, and a server that appears gets it.
    server = await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)), port=port)
    await eventually(lambda: tasks(server).get("lost", {}).get("state") == "completed")


async def test_outside_a_loop_the_bar_uses_the_thread_sender() -> None:
    def build() -> AsyncRemoteTqdm:
        return AsyncRemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO())

    progress = await asyncio.get_running_loop().run_in_executor(None, build)
    from progressista.client.sender import ThreadSender

    assert any(
        isinstance(s, ThreadSender) and s.outbox is progress._remote_outbox
        for s in __import__("progressista.client.sender", fromlist=["_senders"])._senders.values()
    )
    progress.close()


async def test_a_bar_opened_as_the_sender_winds_down_still_streams(server: TestServer) -> None:
    async with bar(server, total=1, task_id="first") as progress:
        progress.update(1)
    second = bar(server, total=100, task_id="second", mininterval=0)
    for _ in range(30):
        second.update(1)
        await asyncio.sleep(0.01)
    await eventually(lambda: tasks(server).get("second", {}).get("n", 0) >= 20)
    second.close()


async def test_closed_loops_are_forgotten() -> None:
    import threading

    from progressista.client.aio import _loop_senders

    def many_loops() -> None:
        for _ in range(30):

            async def one() -> None:
                AsyncRemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO()).close()

            asyncio.run(one())

    worker = threading.Thread(target=many_loops)
    worker.start()
    await asyncio.get_running_loop().run_in_executor(None, worker.join)
    assert len(_loop_senders) <= 2
