"""AsyncRemoteTqdm on the test's own loop: one sender task and session, delivery, failures."""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp.test_utils import TestServer

from progressista.client import AsyncRemoteTqdm
from progressista.client.lifecycle import thread_senders
from progressista.client.loop_sender import loop_senders

from .conftest import eventually
from .remote import FAST, posts, task_with, tasks, url_of
from .remote import async_bar as bar

pytestmark = pytest.mark.usefixtures("fresh_client")


async def test_async_with_delivers_the_final_state_before_returning(server: TestServer) -> None:
    async with bar(server, total=3, task_id="aw", desc="Fetch") as progress:
        progress.update(3)
    task = (await tasks(server))["aw"]  # no waiting: __aexit__ awaited delivery
    assert (task["state"], task["n"], task["desc"]) == ("completed", 3, "Fetch")


async def test_async_for_gather_and_as_completed(server: TestServer) -> None:
    async def job(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    async for _ in bar(server, range(5), task_id="for"):
        await asyncio.sleep(0)
    results = await AsyncRemoteTqdm.gather(  # type: ignore[call-arg]  # stubs: tqdm's kwargs only
        *[job(i) for i in range(20)],
        url=url_of(server),
        push_every=FAST,
        file=io.StringIO(),
        task_id="gather",
    )
    assert sorted(results) == list(range(20))
    for future in AsyncRemoteTqdm.as_completed(  # type: ignore[call-arg]  # as gather above
        [job(i) for i in range(10)],
        url=url_of(server),
        push_every=FAST,
        file=io.StringIO(),
        task_id="asc",
    ):
        await future
    for task_id, n in (("for", 5), ("gather", 20), ("asc", 10)):
        await task_with(server, task_id, state="completed", n=n)


async def test_an_exception_in_async_with_fails_the_bar(server: TestServer) -> None:
    with pytest.raises(RuntimeError):
        async with bar(server, total=3, task_id="boom") as progress:
            progress.update(1)
            raise RuntimeError("upstream 503")
    task = (await tasks(server))["boom"]
    assert (task["state"], task["error"], task["n"]) == ("failed", "RuntimeError: upstream 503", 1)


async def test_a_bar_closed_without_awaiting_is_still_delivered(server: TestServer) -> None:
    progress = bar(server, total=2, task_id="sync-close")
    progress.update(2)
    progress.close()
    await task_with(server, "sync-close", state="completed")


async def test_thousands_of_bars_share_one_task_one_session_and_few_posts(
    server: TestServer,
) -> None:
    count = 1000

    async def crawl(i: int) -> None:
        async with bar(server, total=4, task_id=f"page-{i}", mininterval=0) as progress:
            for _ in range(4):
                await asyncio.sleep(0.01)
                progress.update(1)

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(crawl(i) for i in range(count)))
    # On a busy machine a block may stop waiting before its close is delivered (a server that
    # takes longer than the flush timeout counts as unresponsive): it is delivered all the same.
    while True:
        found = (await tasks(server)).values()
        if sum(task["state"] == "completed" and task["n"] == 4 for task in found) == count:
            break
        await asyncio.sleep(0.05)
    elapsed = asyncio.get_running_loop().time() - started
    (sender,) = loop_senders(asyncio.get_running_loop())
    sent = await posts(server)
    # One batch per push interval, plus the urgent ones that deliver closes: not one per bar.
    assert sent <= 4 * (elapsed / FAST + 2), (sent, elapsed)
    await eventually(lambda: sender._task is None or sender._task.done())
    assert sender._session is None


async def test_async_with_does_not_wait_for_a_server_that_refuses(
    monkeypatch: pytest.MonkeyPatch, refused_url: str
) -> None:
    # Longer than the test's own timeout: a block that waited would fail the test.
    monkeypatch.setenv("PROGRESSISTA_FLUSH_TIMEOUT", "1000")
    for block in range(5):
        async with bar(refused_url, total=1, task_id=f"lost-{block}") as progress:
            progress.update(1)
        assert not await progress.aclose()
    (sender,) = loop_senders(asyncio.get_running_loop())
    assert sender.reach.known_down and sender.reach.reason == "connection refused"


async def test_a_hung_server_is_waited_for_once_in_all(
    monkeypatch: pytest.MonkeyPatch, hung_url: str
) -> None:
    monkeypatch.setenv("PROGRESSISTA_FLUSH_TIMEOUT", "0.3")
    async with bar(hung_url, total=1, task_id="first") as progress:
        progress.update(1)
    (sender,) = loop_senders(asyncio.get_running_loop())
    assert sender.reach.unresponsive  # the first block's wait ran out: the budget is spent
    spent = sender.reach.waited
    for block in range(3):
        async with bar(hung_url, total=1, task_id=f"then-{block}") as progress:
            progress.update(1)
        assert not await progress.aclose()
    assert sender.reach.waited == spent  # the later blocks did not wait at all
    assert sender.reach.allowance(10.0, at_exit=True) == pytest.approx(0.0, abs=0.01)


async def test_outside_a_loop_the_bar_uses_the_thread_sender() -> None:
    def build() -> AsyncRemoteTqdm:
        return AsyncRemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO())

    progress = await asyncio.get_running_loop().run_in_executor(None, build)
    assert any(sender.outbox is progress._remote_outbox for sender in thread_senders())
    progress.close()


async def test_a_bar_opened_as_the_sender_winds_down_still_streams(server: TestServer) -> None:
    async with bar(server, total=1, task_id="first") as progress:
        progress.update(1)
    second = bar(server, total=100, task_id="second", mininterval=0)
    for _ in range(30):
        second.update(1)
        await asyncio.sleep(0.01)
    await task_with(server, "second", check=lambda task: task["n"] >= 20)
    second.close()


async def test_closed_loops_are_forgotten() -> None:
    import threading

    from progressista.client.loop_sender import _loop_senders

    def many_loops() -> None:
        for _ in range(30):

            async def one() -> None:
                AsyncRemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO()).close()

            asyncio.run(one())

    worker = threading.Thread(target=many_loops)
    worker.start()
    await asyncio.get_running_loop().run_in_executor(None, worker.join)
    assert len(_loop_senders) <= 2


async def test_async_tasks_started_in_a_loop_nest_in_it(server: TestServer) -> None:
    async def page(site: str, number: int) -> None:
        async with bar(server, total=1, task_id=f"{site}/page-{number}") as progress:
            progress.update(1)

    async def crawl(site: str) -> None:
        async for number in bar(server, range(2), task_id=site):
            await asyncio.gather(page(site, number))

    await asyncio.gather(crawl("a"), crawl("b"))  # siblings: neither nests in the other
    for site in "ab":
        await task_with(server, site, state="completed")
    found = await tasks(server)
    assert {task_id: task["meta"].get("parent") for task_id, task in sorted(found.items())} == {
        "a": None,
        "a/page-0": "a",
        "a/page-1": "a",
        "b": None,
        "b/page-0": "b",
        "b/page-1": "b",
    }


async def test_an_async_for_cut_short_by_cancelling_its_task_fails_the_bar(
    server: TestServer,
) -> None:
    """Ctrl-C under ``asyncio.run`` cancels every task: the cancellation strikes in the loop's
    body, where tqdm_asyncio never sees it, and the bar is released with the task's frame. It
    was reported completed at 4 of 100."""
    reached = asyncio.Event()

    async def crawl() -> None:
        async for page in bar(server, range(100), task_id="cut"):
            if page == 3:
                reached.set()
                await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(crawl())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ended = await task_with(server, "cut", check=lambda task: task["state"] != "active")
    assert (ended["state"], ended["n"], ended["error"]) == (
        "failed",
        4,
        "asyncio.exceptions.CancelledError",
    )


@pytest.mark.parametrize(("done", "state"), [(2, "completed"), (1, "failed")])
async def test_a_bar_closed_by_a_task_being_cancelled_fails_only_if_unfinished(
    server: TestServer, done: int, state: str
) -> None:
    """A task that swallows its cancellation still counts as being cancelled: a bar it closes
    then is cut short unless it reached its total."""
    reached = asyncio.Event()

    async def work() -> None:
        progress = bar(server, total=2, task_id="closing")
        progress.update(done)
        try:
            reached.set()
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            pass  # swallowed: no exception in flight at the close below
        progress.close()

    task = asyncio.create_task(work())
    await reached.wait()
    task.cancel()
    await task
    ended = await task_with(server, "closing", check=lambda task: task["state"] != "active")
    assert ended["state"] == state
