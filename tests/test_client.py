"""RemoteTqdm against a real server in the test's loop: fields, sharing, failures, errors."""

from __future__ import annotations

import io
import os
import socket
import sys
import warnings
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from progressista.client import ProgressistaWarning, RemoteTqdm, trange
from progressista.client.exchange import parse_retry_after
from progressista.client.lifecycle import sender_for
from progressista.client.outbox import Outbox
from progressista.server import ServerSettings, create_app
from progressista.settings import ClientSettings

from .conftest import NEVER, FakeClock, eventually
from .remote import FAST, bar, flush_off_loop, posts, task_with, tasks, url_of

pytestmark = pytest.mark.usefixtures("fresh_client")


async def test_a_bar_shows_up_with_tqdm_fields(server: TestServer) -> None:
    with bar(
        server,
        total=4096,
        desc="Download",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        task_id="dl",
        meta={"job": "nightly", "shard": 7},
    ) as progress:
        progress.update(1024)
        progress.set_postfix(speed="fast")
        await task_with(server, "dl", n=1024, postfix="speed=fast")
    task = await task_with(server, "dl", state="completed")
    assert (
        task["desc"],
        task["total"],
        task["unit"],
        task["unit_scale"],
        task["unit_divisor"],
    ) == ("Download", 4096, "B", True, 1024)
    assert task["meta"]["job"] == "nightly" and task["meta"]["shard"] == 7
    assert task["meta"]["pid"] > 0 and task["meta"]["host"] == socket.gethostname()
    assert task["n"] == 1024 and task["elapsed"] >= 0


async def test_the_default_id_names_program_process_and_host(server: TestServer) -> None:
    first, second = bar(server, total=1), bar(server, total=1)
    assert first.remote_task_id != second.remote_task_id
    assert f"-{os.getpid()}-" in str(first.remote_task_id)
    assert str(first.remote_task_id).endswith("@" + socket.gethostname())
    first.close()
    second.close()
    await task_with(server, str(first.remote_task_id), state="completed")
    await task_with(server, str(second.remote_task_id), state="completed")


async def test_set_description_is_sent_without_tqdms_colon(server: TestServer) -> None:
    with bar(server, total=3, task_id="d") as progress:
        progress.set_description("Epoch 2")
        await task_with(server, "d", desc="Epoch 2")


async def test_many_bars_share_one_sender_and_few_posts(server: TestServer) -> None:
    bars = [bar(server, total=10, task_id=f"b{i}", mininterval=0) for i in range(50)]
    for _ in range(10):
        for progress in bars:
            progress.update(1)
    for progress in bars:
        progress.close()
    for i in range(50):
        await task_with(server, f"b{i}", state="completed", n=10)
    assert len({id(p._remote_outbox) for p in bars}) == 1
    sent = await posts(server)
    assert sent <= 10, sent  # 500 updates of 50 bars, a handful of batches


async def test_trange_and_the_tqdm_alias(server: TestServer) -> None:
    from progressista.client import tqdm

    assert tqdm is RemoteTqdm
    for _ in trange(5, url=url_of(server), push_every=FAST, file=io.StringIO(), task_id="tr"):
        pass
    await task_with(server, "tr", state="completed", n=5, total=5)


async def test_disabled_and_local_bars_send_nothing(server: TestServer) -> None:
    with bar(server, total=3, disable=True) as off:
        off.update(3)
    with bar(server, total=3, remote=False) as local:
        local.update(3)
    assert off.remote_task_id is None and off._remote_outbox is None
    assert local.remote_task_id is None
    assert await flush_off_loop()
    assert await tasks(server) == {}


async def test_an_exception_in_a_with_block_fails_the_bar(server: TestServer) -> None:
    with pytest.raises(ValueError), bar(server, total=10, task_id="w") as progress:
        progress.update(2)
        raise ValueError("bad row 17")
    task = await task_with(server, "w", state="failed")
    assert (task["error"], task["n"]) == ("ValueError: bad row 17", 2)


async def test_an_iterable_that_raises_fails_the_bar(server: TestServer) -> None:
    def rows() -> Any:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError):
        for _ in bar(server, rows(), task_id="it"):
            pass
    await task_with(server, "it", state="failed", error="OSError: disk gone")


async def test_break_completes_the_bar(server: TestServer) -> None:
    for i in bar(server, range(10), task_id="brk"):
        if i == 4:
            break
    assert await flush_off_loop()
    task = (await tasks(server))["brk"]
    assert (task["state"], task["n"]) == ("completed", 4)


async def test_server_down_at_first_then_up_gets_the_final_state(
    aiohttp_server: AiohttpServer, refused_url: str
) -> None:
    url = refused_url
    port = int(url.rsplit(":", 1)[1])
    for i in range(3):
        with bar(url, total=5, task_id=f"late-{i}") as progress:
            progress.update(5)
    outbox = sender_for(ClientSettings(url=url, push_every=FAST)).outbox
    await eventually(lambda: outbox._failures >= 2)
    server = await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)), port=port)
    for i in range(3):
        await task_with(server, f"late-{i}", state="completed", n=5)


async def test_a_hung_server_bounds_memory_by_bars(hung_url: str) -> None:
    bars = [bar(hung_url, total=10**6, mininterval=0, task_id=f"h{i}") for i in range(3)]
    for _ in range(20_000):
        for progress in bars:
            progress.update(1)
    outbox = bars[0]._remote_outbox
    assert outbox is not None
    assert outbox.pending <= 3
    for progress in bars:
        progress.close()
    assert outbox.pending <= 3


async def test_a_wrong_token_is_one_warning(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(
        create_app(ServerSettings(cleanup_interval=NEVER, write_token="right"))
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            with bar(server, total=1, task_id=f"t{i}", token="wrong") as progress:
                progress.update(1)
            outbox = progress._remote_outbox
            assert outbox is not None

            def sent(box: Outbox = outbox) -> bool:
                return box.pending == 0

            await eventually(sent)
        refused = [w for w in caught if issubclass(w.category, ProgressistaWarning)]
    assert len(refused) == 1
    assert "refused progress updates with HTTP 401" in str(refused[0].message)
    assert "missing or wrong token" in str(refused[0].message)
    assert await tasks(server) == {}


async def test_the_right_token_is_sent(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(
        create_app(ServerSettings(cleanup_interval=NEVER, write_token="right"))
    )
    with bar(server, total=1, task_id="ok", token="right") as progress:
        progress.update(1)
    await task_with(server, "ok", state="completed")


async def test_bad_values_are_cleaned_before_sending(server: TestServer) -> None:
    with bar(server, total=-5, desc="x" * 5000, unit="u" * 100, task_id="odd") as progress:
        progress.update(-3)  # tqdm allows going backwards
        progress.set_postfix_str("p" * 3000)
    task = await task_with(server, "odd", state="completed")
    assert (
        task["n"],
        task["total"],
        len(task["desc"]),
        len(task["unit"]),
        len(task["postfix"]),
    ) == (0, None, 1000, 32, 1000)


def test_an_invalid_task_id_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="task_id"):
        RemoteTqdm(total=1, task_id="a\nb", url="http://127.0.0.1:9", file=io.StringIO())


async def test_the_client_never_moves_the_callers_random_sequence(refused_url: str) -> None:
    import random

    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    progress = bar(refused_url, total=3, task_id="seeded")  # every retry draws a jitter
    outbox = progress._remote_outbox
    assert outbox is not None
    await eventually(lambda: outbox._failures >= 3)
    progress.close()
    assert [random.random() for _ in range(3)] == expected


def test_each_bar_reads_the_environment_as_it_is_then(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars built with the same settings share them; a variable changed between two bars
    reaches the second."""
    made = []
    for job in ("first", "first", "second"):
        monkeypatch.setenv("PROGRESSISTA_JOB", job)
        progress = RemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO())
        made.append(progress.remote_meta["job"])
        progress.close()
    monkeypatch.setenv("PROGRESSISTA_PUSH_EVERY", "whenever")
    with pytest.warns(ProgressistaWarning, match="PROGRESSISTA_PUSH_EVERY"):
        local = RemoteTqdm(total=1, url="http://127.0.0.1:9", file=io.StringIO())
    assert local.remote_task_id is None  # a setting gone wrong makes the bar a plain tqdm
    local.close()
    assert made == ["first", "first", "second"]


def test_shared_settings_are_what_reading_them_afresh_gives() -> None:
    """The last bar's settings are reused only for keyword values of plain types that are
    equal: a Decimal equal to 1 is refused as reading it afresh refuses it."""
    from decimal import Decimal

    from progressista.client import bar as bar_module
    from progressista.settings import SettingError

    given = {"url": "http://127.0.0.1:9", "token": None, "job": None}
    assert bar_module._settings(push_every=1, **given).push_every == 1
    with pytest.raises(SettingError):
        ClientSettings.from_env(os.environ, push_every=Decimal("1"), **given)
    with pytest.raises(SettingError):
        bar_module._settings(push_every=Decimal("1"), **given)
    assert bar_module._settings(push_every=1.0, **given).push_every == 1.0


def test_no_update_can_follow_or_outrank_the_final_event() -> None:
    progress = RemoteTqdm(total=5, url="http://127.0.0.1:9", file=io.StringIO())
    before = progress.remote_event()
    progress.update(5)
    progress.close()
    outbox = progress._remote_outbox
    assert outbox is not None
    final = outbox.take()[str(progress.remote_task_id)].remote_event()
    assert (final["status"], final["n"]) == ("close", 5)
    assert final["seq"] > before["seq"]
    with pytest.raises(LookupError):
        progress.remote_event()  # what a sender holding an old handle would get


async def test_5xx_and_429_are_retried_until_the_state_lands(
    aiohttp_server: AiohttpServer,
) -> None:
    from aiohttp import web

    answers = [503, 429, 500]
    received: list[list[dict[str, Any]]] = []

    async def flaky(request: web.Request) -> web.Response:
        batch = await request.json()
        if answers:
            status = answers.pop(0)
            return web.json_response({"error": "busy"}, status=status, headers={"Retry-After": "0"})
        received.append(batch)
        return web.json_response({"accepted": len(batch), "ignored": 0}, status=202)

    app = web.Application()
    app.router.add_post("/progress", flaky)
    server = await aiohttp_server(app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with bar(f"http://127.0.0.1:{server.port}", total=2, task_id="flaky") as progress:
            progress.update(2)
        await eventually(lambda: any(e["status"] == "close" for b in received for e in b))
    assert answers == []
    assert next(e for b in received for e in b if e["status"] == "close")["n"] == 2
    assert not [w for w in caught if issubclass(w.category, ProgressistaWarning)]


async def test_an_unknown_host_is_retried_quietly() -> None:
    progress = bar("http://no-such-host.invalid:8000", total=1, task_id="dns")
    outbox = progress._remote_outbox
    assert outbox is not None
    await eventually(lambda: outbox._failures >= 1)
    progress.update(1)
    progress.close()
    assert outbox.pending == 1  # kept for when the name resolves


async def test_flush_mid_program_delivers_and_keeps_bars_open(server: TestServer) -> None:
    progress = bar(server, total=10, task_id="mid")
    progress.update(3)
    progress.refresh()
    assert await flush_off_loop()
    task = (await tasks(server))["mid"]
    assert (task["state"], task["n"]) == ("active", 3)
    progress.update(7)
    progress.close()
    await task_with(server, "mid", state="completed", n=10)


async def test_an_exception_caught_after_the_loop_still_fails_a_with_bar(
    server: TestServer,
) -> None:
    def work() -> None:
        with bar(server, range(10), task_id="with-loop") as progress:
            for i in progress:
                if i == 2:
                    raise KeyError("row 2")

    with pytest.raises(KeyError):
        work()
    await task_with(server, "with-loop", state="failed", error="KeyError: 'row 2'")


async def test_the_sender_survives_an_unexpected_error(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = bar(server, total=1, task_id="before")
    outbox = first._remote_outbox
    assert outbox is not None
    real_delay = outbox.delay
    calls = {"n": 0}

    def broken_once() -> float | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return real_delay()

    monkeypatch.setattr(outbox, "delay", broken_once)
    first.update(1)
    first.close()
    await task_with(server, "before", state="completed")
    assert calls["n"] > 1


async def test_a_loop_left_by_an_exception_the_program_catches_is_failed_at_once(
    server: TestServer,
) -> None:
    import contextlib
    import inspect

    with contextlib.suppress(KeyError):
        for i in bar(server, range(10), task_id="caught"):
            if i == 3:
                line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]  # CPython
                raise KeyError("row 3")
    assert await flush_off_loop()  # a close still undecided would go out as completed
    task = (await tasks(server))["caught"]
    assert (task["state"], task["n"]) == ("failed", 3)
    # From 3.12 sys.monitoring names the exception; before, the place says what happened.
    named = "KeyError: 'row 3'"
    placed = f"an exception left the loop at test_client.py:{line}"
    assert task["error"] == (named if sys.version_info >= (3, 12) else placed)


async def test_break_and_return_complete_the_bar_at_once(server: TestServer) -> None:
    def first_even(numbers: RemoteTqdm) -> int:
        for number in numbers:
            if number % 2 == 0:
                return int(number)
        return -1

    broken = bar(server, range(10), task_id="broken")
    for i in broken:
        if i == 4:
            break
    returned = bar(server, range(1, 10), task_id="returned")
    assert first_even(returned) == 2
    # Decided when the loop let go of the bar: no close is left undecided for a crash handler.
    assert (broken._remote_final, returned._remote_final) == (None, None)
    assert await flush_off_loop()
    found = await tasks(server)
    assert (found["broken"]["state"], found["broken"]["n"]) == ("completed", 4)
    assert (found["returned"]["state"], found["returned"]["n"]) == ("completed", 1)


async def test_the_final_rate_is_the_one_the_console_printed_last(server: TestServer) -> None:
    clock = FakeClock(1000.0)
    console = io.StringIO()
    progress = bar(server, total=3, task_id="rate", file=console, mininterval=0, miniters=1)
    progress._time = clock  # type: ignore[attr-defined]  # not in the stubs; tqdm tests set it
    progress.start_t = progress.last_print_t = clock()
    for step in (0.1, 0.1, 10.72):  # quick, then one slow item: smoothing and average differ
        clock.advance(step)
        progress.update(1)
    progress.close()
    task = await task_with(server, "rate", state="completed")
    assert task["rate"] == pytest.approx(3 / 10.92, rel=5e-4)  # stored to 4 digits
    last_line = console.getvalue().rstrip("\n").split("\r")[-1]
    assert "3/3 [00:10<00:00,  3.64s/it]" in last_line  # 10.92 s / 3 items, as sent


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("86400", 86400.0),  # the outbox caps it like its own backoff
        ("inf", None),
        ("nan", None),
        ("-5", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_validated(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


async def test_no_retry_after_can_kill_the_sender(aiohttp_server: AiohttpServer) -> None:
    from aiohttp import web

    answers = ["inf", "nan", "-5", "soon", "1e400"]
    received: list[dict[str, Any]] = []

    async def odd(request: web.Request) -> web.Response:
        batch = await request.json()
        if answers:
            return web.json_response(
                {"error": "busy"}, status=503, headers={"Retry-After": answers.pop(0)}
            )
        received.extend(batch)
        return web.json_response({"accepted": len(batch), "ignored": 0}, status=202)

    app = web.Application()
    app.router.add_post("/progress", odd)
    server = await aiohttp_server(app)
    with bar(server, total=2, task_id="odd-retry") as progress:
        progress.update(2)
    await eventually(lambda: any(e.get("status") == "close" for e in received))
    assert answers == []


async def test_a_lone_surrogate_in_one_bar_costs_no_other_bar_its_state(
    server: TestServer,
) -> None:
    odd_name = "report-\udcff.csv"  # os.listdir's undecodable byte
    with (
        bar(
            server,
            total=2,
            task_id="odd",
            desc=odd_name,
            meta={"file": odd_name, odd_name: 1},
        ) as odd,
        bar(server, total=2, task_id="plain") as plain,
    ):
        odd.set_postfix_str(odd_name)
        odd.update(2)
        plain.update(2)
    found = await task_with(server, "odd", state="completed")
    await task_with(server, "plain", state="completed", n=2)
    assert (found["desc"], found["postfix"], found["meta"]["file"]) == (
        "report-\ufffd.csv",
        "report-\ufffd.csv",
        "report-\ufffd.csv",
    )


async def test_events_the_server_refuses_do_not_hold_back_the_others(
    aiohttp_server: AiohttpServer,
) -> None:
    from aiohttp import web

    accepted: dict[str, dict[str, Any]] = {}

    async def strict(request: web.Request) -> web.Response:
        # An older, stricter server: it refuses any description containing "poison".
        batch = await request.json()
        bad = [i for i, event in enumerate(batch) if "poison" in event.get("desc", "")]
        if bad:
            details = [{"index": i, "field": "desc", "message": "not allowed"} for i in bad]
            return web.json_response({"error": "invalid", "details": details}, status=400)
        accepted.update({event["task_id"]: event for event in batch})
        return web.json_response({"accepted": len(batch), "ignored": 0}, status=202)

    app = web.Application()
    app.router.add_post("/progress", strict)
    server = await aiohttp_server(app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with (
            bar(server, total=1, task_id="poisoned", desc="poison"),
            bar(server, total=1, task_id="healthy", desc="fine") as healthy,
        ):
            healthy.update(1)
        await eventually(lambda: accepted.get("healthy", {}).get("status") == "close")
    assert "poisoned" not in accepted
    refused = [str(w.message) for w in caught if issubclass(w.category, ProgressistaWarning)]
    assert refused == [
        "the server refused the state of 1 bar (desc: not allowed); the other bars are sent "
        "as usual."
    ]


async def test_a_server_with_a_short_stale_after_gets_keepalives_often_enough(
    aiohttp_server: AiohttpServer,
) -> None:
    settings = ServerSettings(cleanup_interval=NEVER, stale_after=8.0)
    server = await aiohttp_server(create_app(settings))
    progress = bar(server, total=10, task_id="slow")
    progress.update(1)
    await task_with(server, "slow", n=1)
    outbox = progress._remote_outbox
    assert outbox is not None
    # A bar unchanged for the default 15 s would show as stale there: the 202 asks for 2 s.
    await eventually(lambda: outbox.keepalive == 2.0)
    progress.close()
    assert await flush_off_loop()


async def test_nested_loops_nest_on_the_server_and_inner_bars_say_they_go(
    server: TestServer,
) -> None:
    with bar(server, total=2, task_id="download") as side:  # open beside, not looped over
        for epoch in bar(server, range(2), task_id="epochs"):
            for _ in bar(server, range(3), task_id=f"epoch-{epoch}", leave=False):
                pass
            with bar(server, total=1, task_id=f"eval-{epoch}") as evaluation:
                evaluation.update(1)
        side.update(2)
    for _ in bar(server, range(1), task_id="after"):  # the earlier loop is over
        pass
    with bar(server, total=1, task_id="manual"):
        with bar(server, total=1, task_id="inner-of-manual", leave=False):
            pass  # leave=False: nested in whatever bar is open, looped over or not
        with bar(server, total=1, task_id="beside-manual", meta={"parent": "chosen"}):
            pass  # the caller's own label wins
    assert await flush_off_loop()
    found = await tasks(server)

    def labels(task_id: str) -> tuple[Any, Any]:
        meta = found[task_id]["meta"]
        return meta.get("parent"), meta.get("leave")

    assert {task_id: labels(task_id) for task_id in sorted(found)} == {
        "after": (None, None),
        "beside-manual": ("chosen", None),
        "download": (None, None),
        "epoch-0": ("epochs", False),
        "epoch-1": ("epochs", False),
        "epochs": (None, None),
        "eval-0": ("epochs", None),
        "eval-1": ("epochs", None),
        "inner-of-manual": ("manual", False),
        "manual": (None, None),
    }


async def test_a_bar_discarded_while_running_comes_back_whole(
    aiohttp_server: AiohttpServer,
) -> None:
    """Discarded on the page while its worker runs, a bar's next update (what changed) made a
    task with no description and no labels, until its full state up to 15 s later. The server
    names the updates it did not hold a task for, and the client sends those bars whole."""
    server = await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)))
    with bar(
        server, total=100, desc="Crawling", task_id="crawl", meta={"site": "a"}, mininterval=0
    ) as progress:
        progress.update(1)
        await task_with(server, "crawl", n=1, desc="Crawling")
        async with aiohttp.ClientSession() as session:
            async with session.delete(server.make_url("/tasks/crawl")) as response:
                assert response.status in (200, 204)
        progress.update(1)
        # Well within FULL_STATE_EVERY (15 s), after which it came back whole anyway.
        task = await task_with(
            server, "crawl", timeout=8.0, desc="Crawling", check=lambda t: t["n"] >= 2
        )
        assert task["meta"]["site"] == "a"
