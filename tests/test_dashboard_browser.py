"""The dashboard in a real browser (headless Chromium) against a real server process.

Nothing a test shows may change while the test runs unless the test changes it, however slow the
machine: the server process keeps tasks longer than any test takes, and the test that watches
tasks go stale and expire runs the real application in this process, on a clock it moves.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from aiohttp import web
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from progressista.server import ServerSettings, create_app, display
from progressista.server.task import Task

from .browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path
from .conftest import WAIT, FakeClock
from .server_process import ServerProcess, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

XSS = "<img src=x onerror=window.__xss=1>"

#: Server flags: tasks outlive any test, so none goes stale or is removed while a test looks.
LASTING = ["--stale-after", "1d", "--retention", "1d", "--log-level", "warning"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    # expect() waits for what the page should show; on a busy machine that can take seconds.
    expect.set_options(timeout=WAIT * 1000)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        expect.set_options(timeout=None)


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with running_server(LASTING) as process:
        yield process


@dataclass
class ClockedServer:
    """The real application on a thread of this process, on a clock only the test moves."""

    url: str
    clock: FakeClock
    settings: ServerSettings

    def post(self, events: list[dict[str, Any]]) -> Any:
        return ServerProcess.post_to(self.url, events)


@pytest.fixture
def clocked_server() -> Iterator[ClockedServer]:
    """A server whose tasks go stale and expire when the test advances its clock, not before.

    A real process has a real clock: short lifetimes there are outlived by a slow test. Here
    cleanup runs often, so a transition follows the clock's move promptly.
    """
    clock = FakeClock(time.time())
    # job_gap 0: a job is decided as its last bar ends (the gap is test_jobs's business).
    settings = ServerSettings(stale_after=60, retention=60, cleanup_interval=0.05, job_gap=0)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(settings, clock=clock))
    started = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        # Everything on the server's loop happens in its own thread: Playwright's sync API
        # runs a loop of its own on the test's thread.
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        except BaseException as error:
            failed.append(error)
            return
        finally:
            started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, name="clocked-server")
    thread.start()
    try:
        assert started.wait(WAIT) and not failed, failed
        host, port = runner.addresses[0][:2]
        yield ClockedServer(f"http://{host}:{port}/", clock, settings)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


#: What each page logged as an error (console errors and uncaught exceptions).
console_errors: dict[int, list[str]] = {}


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = console_errors.setdefault(id(page), [])

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page


def until(condition: Any) -> None:
    """Poll ``condition()`` (outside the page) until it holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"still false after {WAIT} s"
        time.sleep(0.1)


def card(page: Page, task_id: str) -> Any:
    return page.locator(f'li.card[data-task-id="{task_id}"]')


def section(page: Page, state: str) -> Any:
    return page.locator(f'#by-state section[data-state="{state}"]')


def live(page: Page) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def test_cards_appear_move_between_sections_and_go(
    browser: Browser, clocked_server: ClockedServer
) -> None:
    server, lifetimes = clocked_server, clocked_server.settings
    page = open_page(browser, server.url)
    live(page)
    expect(page.locator("#empty")).to_be_visible()
    server.post(
        [
            {
                "task_id": "job-a",
                "desc": "Loading users",
                "n": 40,
                "total": 200,
                "unit": "rows",
                "meta": {"job": "etl"},
            }
        ],
    )
    loading = card(page, "job-a")
    expect(section(page, "active").locator('li.card[data-task-id="job-a"]')).to_be_visible()
    expect(loading.locator(".amount")).to_have_text("40 / 200 rows")
    expect(loading.get_by_role("progressbar")).to_have_attribute("value", "40")
    expect(section(page, "active").locator(".count")).to_have_text("1")
    expect(page.locator("#empty")).to_be_hidden()
    # Silence for longer than stale_after: the server's cleanup marks it stale.
    server.clock.advance(lifetimes.stale_after + 1)
    expect(section(page, "stale").locator('li.card[data-task-id="job-a"]')).to_be_visible()
    server.post([{"task_id": "job-a", "n": 200, "status": "close"}])
    expect(section(page, "completed").locator('li.card[data-task-id="job-a"]')).to_be_visible()
    expect(loading.locator(".amount")).to_have_text("200 / 200 rows")
    # Closed for longer than the retention: the card goes when the task does.
    server.clock.advance(lifetimes.retention + 1)
    expect(loading).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    assert console_errors[id(page)] == []


def test_a_discard_in_one_page_disappears_in_another(
    browser: Browser, server: ServerProcess
) -> None:
    server.post([{"task_id": "shared", "desc": "Shared"}, {"task_id": "kept", "desc": "Kept"}])
    first, second = open_page(browser, server.url), open_page(browser, server.url)
    live(first)
    live(second)
    # Chromium offers permessage-deflate: both pages follow the board from deflated frames.
    assert server.metric("progressista_viewers_deflate") == 2
    expect(card(second, "shared")).to_be_visible()
    card(first, "shared").get_by_role("button", name="Discard").click()
    expect(card(first, "shared")).to_have_count(0)
    expect(card(second, "shared")).to_have_count(0)
    expect(card(second, "kept")).to_be_visible()


def test_clear_completed_removes_only_completed(browser: Browser, server: ServerProcess) -> None:
    page = open_page(browser, server.url)
    live(page)
    server.post([{"task_id": "done", "status": "close"}, {"task_id": "busy", "n": 1}])
    expect(card(page, "done")).to_be_visible()
    page.get_by_role("button", name="Clear completed").click()
    expect(card(page, "done")).to_have_count(0)
    expect(card(page, "busy")).to_be_visible()


@pytest.mark.parametrize("when", ["first paint", "live update"])
def test_untrusted_text_is_shown_as_text_and_never_runs(
    browser: Browser, server: ServerProcess, when: str
) -> None:
    hostile: list[dict[str, Any]] = [
        {
            "task_id": XSS,
            "desc": XSS,
            "unit": "<b>x</b>",
            "postfix": XSS,
            "n": 1,
            "total": 3,
            "meta": {"job": XSS, XSS: XSS},
        },
        {"task_id": "failing", "status": "error", "error": XSS},
    ]
    if when == "first paint":
        server.post(hostile)
    page = open_page(browser, server.url)
    live(page)
    if when == "live update":
        server.post(hostile)
    bad = card(page, XSS)
    expect(bad.locator(".title")).to_have_text(XSS)
    expect(bad.locator(".task-id")).to_have_text(XSS)
    expect(bad.locator(".postfix")).to_have_text(XSS)
    expect(bad.locator(".amount")).to_have_text("1 / 3 <b>x</b>")
    labels = bad.locator(".label").all_inner_texts()
    assert f"job={XSS}" in labels and f"{XSS}={XSS}" in labels
    expect(card(page, "failing").locator(".error")).to_have_text(XSS)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    page.locator("#group-by-job").check()
    expect(page.locator(f'#by-job section[data-job="{XSS}"] .job-name')).to_have_text(XSS)
    assert page.evaluate("window.__xss") is None


def test_the_page_forbids_inline_script(browser: Browser, server: ServerProcess) -> None:
    page = open_page(browser, server.url)
    live(page)
    # The violation is reported by an event; the timer only ends the wait when none comes,
    # so it is a hang detector, as long as any other wait here.
    blocked = page.evaluate(
        """(wait) => new Promise((resolve) => {
            document.addEventListener("securitypolicyviolation", () => resolve(true));
            const script = document.createElement("script");
            script.textContent = "window.__inline = 1";
            document.body.append(script);
            setTimeout(() => resolve(false), wait);
        })""",
        WAIT * 1000,
    )
    assert blocked is True
    assert page.evaluate("window.__inline") is None


def test_reconnects_after_a_restart_and_resyncs(browser: Browser) -> None:
    with running_server(LASTING) as first:
        first.post(
            [
                {"task_id": "before-restart", "desc": "Old", "meta": {"job": "nightly"}},
                {"task_id": "constructor"},
                {"task_id": "toString"},
            ]
        )
        page = open_page(browser, first.url)
        live(page)
        expect(card(page, "before-restart")).to_be_visible()
        expect(card(page, "constructor")).to_be_visible()
        expect(page.locator('li.job-card[data-job="nightly"]')).to_have_count(1)
        port = first.port
    expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    expect(page.locator("#connection")).to_contain_text("reconnecting")
    with running_server([*LASTING, "--port", str(port)]) as second:
        second.post([{"task_id": "after-restart", "desc": "New"}])
        live(page)
        expect(card(page, "after-restart")).to_be_visible()
        # The new server's snapshot does not know the old task: the page forgets it too.
        expect(card(page, "before-restart")).to_have_count(0)
        # Even ids that are names of every JavaScript object's properties.
        expect(card(page, "constructor")).to_have_count(0)
        expect(card(page, "toString")).to_have_count(0)
        expect(section(page, "active").locator(".count")).to_have_text("1")
        # Nor does it know the old task's job: the page drops its card (it kept it when the
        # server sent no overview for want of runs).
        expect(page.locator('li.job-card[data-job="nightly"]')).to_have_count(0)


def test_without_websockets_it_falls_back_to_polling(
    browser: Browser, server: ServerProcess
) -> None:
    context = browser.new_context()
    context.add_init_script("window.WebSocket = undefined;")
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    server.post([{"task_id": "polled", "desc": "Seen by polling", "n": 2, "total": 4}])
    expect(card(page, "polled").locator(".percent")).to_have_text("50%")
    context.close()


def test_filter_and_job_grouping_survive_a_reload(browser: Browser, server: ServerProcess) -> None:
    server.post(
        [
            {"task_id": "etl-1", "desc": "Extract", "n": 1, "total": 4, "meta": {"job": "etl"}},
            {
                "task_id": "etl-2",
                "desc": "Load",
                "status": "close",
                "n": 4,
                "total": 4,
                "meta": {"job": "etl"},
            },
            {
                "task_id": "ml-1",
                "desc": "Train",
                "n": 3,
                "total": 4,
                "eta": 30,
                "meta": {"job": "ml", "gpu": "a100"},
            },
        ],
    )
    page = open_page(browser, server.url)
    live(page)
    page.get_by_label("Filter tasks").fill("a100")
    expect(card(page, "ml-1")).to_be_visible()
    expect(card(page, "etl-1")).to_be_hidden()
    page.get_by_label("Group by job").check()
    expect(page).to_have_url(f"{server.url}?q=a100&group=job")
    page.reload()
    expect(page.get_by_label("Filter tasks")).to_have_value("a100")
    expect(page.get_by_label("Group by job")).to_be_checked()
    expect(page.locator('#by-job section[data-job="ml"]')).to_be_visible()
    expect(page.locator('#by-job section[data-job="etl"]')).to_be_hidden()  # nothing matches
    page.get_by_label("Filter tasks").fill("")
    etl = page.locator('#by-job section[data-job="etl"]')
    expect(etl).to_be_visible()
    # Each task weighs the same: (1/4 + 1) / 2 = 62.5 %, and one of two is done.
    expect(etl.locator(".job-summary")).to_have_text("1 of 2 done · 63%")
    expect(etl.get_by_role("progressbar", name="etl: all tasks")).to_have_attribute("value", "1.25")
    expect(page).to_have_url(f"{server.url}?group=job")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-by-job.png"), full_page=True)


def test_a_filter_the_server_refuses_is_marked_and_the_board_keeps_its_own(
    browser: Browser, server: ServerProcess
) -> None:
    """A subscribe the server does not follow (a filter past 1,000 characters) was silent: the
    box showed a filter the board did not follow."""
    server.post([{"task_id": "kept-1", "n": 1, "total": 4}])
    page = open_page(browser, server.url)
    live(page)
    box = page.get_by_label("Filter tasks")
    box.fill("x" * 1001)
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_have_attribute("title", re.compile("at most 1,000 characters"))
    expect(card(page, "kept-1")).to_be_visible()
    box.fill("nothing-matches")
    expect(card(page, "kept-1")).to_be_hidden()
    expect(box).not_to_have_attribute("aria-invalid", "true")


def test_a_task_run_again_loses_what_its_last_run_had(
    browser: Browser, server: ServerProcess
) -> None:
    """A task comes whole when it starts again under its id, without the fields at their
    defaults: the page must replace what it held (the error, the postfix, the unit), not merge
    into it."""
    server.post(
        [
            {"task_id": "again", "n": 2, "total": 4, "unit": "B", "postfix": "x=1"},
            {"task_id": "again", "status": "error", "error": "ValueError: boom"},
        ]
    )
    page = open_page(browser, server.url)
    live(page)
    expect(card(page, "again").locator(".error")).to_have_text("ValueError: boom")
    expect(card(page, "again").locator(".postfix")).to_have_text("x=1")
    server.post([{"task_id": "again", "status": "start", "n": 1, "total": 4}])
    expect(section(page, "active").locator(card(page, "again"))).to_be_visible()
    expect(card(page, "again").locator(".error")).to_have_text("")
    expect(card(page, "again").locator(".postfix")).to_have_text("")
    expect(card(page, "again").locator(".amount")).to_have_text("1 / 4 it")


def test_task_ids_with_slashes_and_unicode_can_be_discarded(
    browser: Browser, server: ServerProcess
) -> None:
    odd = "etl/2026-11-29/shard 7 ✓ 進捗"
    server.post([{"task_id": odd, "desc": "Odd id"}])
    page = open_page(browser, server.url)
    live(page)
    card(page, odd).get_by_role("button", name="Discard").click()
    expect(card(page, odd)).to_have_count(0)
    # Gone from the server once the undo has lapsed.
    until(lambda: odd not in server.tasks())


SAMPLES: list[dict[str, Any]] = [
    {
        "n": 1.3e9,
        "total": 4.3e9,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1024,
        "rate": 12.3e6,
    },
    {
        "n": 340,
        "total": 1000,
        "unit": "rows",
        "unit_scale": False,
        "unit_divisor": 1000,
        "rate": 120.5,
    },
    {
        "n": 1234,
        "total": None,
        "unit": "page",
        "unit_scale": False,
        "unit_divisor": 1000,
        "rate": 0.4,
    },
    {"n": 5, "total": 10, "unit": "it", "unit_scale": True, "unit_divisor": 1000, "rate": 3.3},
    {
        "n": 0.5,
        "total": 2.25,
        "unit": "kg",
        "unit_scale": False,
        "unit_divisor": 1000,
        "rate": None,
    },
    {"n": 7, "total": 9, "unit": "file", "unit_scale": 1024, "unit_divisor": 1024, "rate": 2048},
    {
        "n": 123456789,
        "total": None,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1000,
        "rate": 0,
    },
]


def test_the_page_formats_numbers_exactly_as_the_server(
    browser: Browser, server: ServerProcess
) -> None:
    page = open_page(browser, server.url)
    live(page)
    for sample in SAMPLES:
        js = page.evaluate(
            "(t) => [progressista.format.amount(t), progressista.format.rate(t)]", sample
        )
        task = msgspec.convert({"task_id": "sample", **sample}, Task)
        assert js == [display.amount(task), display.rate(task)], sample
    for seconds in (0, 59.9, 83, 3599, 3723.5, 90061):
        assert page.evaluate("(s) => progressista.format.interval(s)", seconds) == (
            display.interval(seconds)
        )


REALISTIC: list[dict[str, Any]] = [
    {
        "task_id": "etl/download",
        "desc": "Downloading dataset.tar",
        "n": 1.3e9,
        "total": 4.3e9,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1024,
        "rate": 12.3e6,
        "elapsed": 105,
        "meta": {"job": "nightly-etl", "host": "worker-7"},
    },
    {
        "task_id": "etl/load-users",
        "desc": "Loading users",
        "n": 3400,
        "total": 10000,
        "unit": "rows",
        "rate": 120.5,
        "elapsed": 28,
        "postfix": "batch=17",
        "meta": {"job": "nightly-etl", "host": "worker-7"},
    },
    {
        "task_id": "train/resnet50",
        "desc": "Training",
        "n": 2,
        "total": 10,
        "unit": "epoch",
        "rate": 0.01,
        "elapsed": 240,
        "postfix": "loss=0.231, acc=0.91",
        "meta": {"job": "train-resnet", "host": "gpu-2"},
    },
    {
        "task_id": "crawl/example.org",
        "desc": "Crawling example.org",
        "n": 1234,
        "unit": "page",
        "rate": 45.2,
        "elapsed": 30,
        "meta": {"job": "crawler", "host": "worker-3"},
    },
    {
        "task_id": "etl/export",
        "desc": "Exporting to warehouse",
        "status": "close",
        "n": 1000,
        "total": 1000,
        "unit": "rows",
        "elapsed": 12,
        "meta": {"job": "nightly-etl"},
    },
    {
        "task_id": "thumbs/resize",
        "desc": "Resizing images",
        "status": "error",
        "n": 312,
        "total": 500,
        "unit": "img",
        "elapsed": 7,
        "error": "OSError: cannot identify image file 'img_0312.jpg'",
        "meta": {"job": "thumbnails", "host": "worker-1"},
    },
]


def test_a_realistic_board_reads_like_tqdm(browser: Browser, server: ServerProcess) -> None:
    server.post(REALISTIC)
    page = open_page(browser, server.url)
    live(page)
    download = card(page, "etl/download")
    expect(download.locator(".amount")).to_have_text("1.21 GB / 4.00 GB")
    expect(download.locator(".rate")).to_have_text("11.7 MB/s")
    expect(download.locator(".elapsed")).to_have_text("01:45")
    expect(card(page, "train/resnet50").locator(".rate")).to_have_text("100.00 s/epoch")
    crawl = card(page, "crawl/example.org")
    expect(crawl.locator(".amount")).to_have_text("1,234 page")
    expect(crawl.get_by_role("progressbar")).to_be_hidden()  # no total: a count, not a bar
    expect(card(page, "thumbs/resize").locator(".error")).to_contain_text("img_0312.jpg")
    for state, count in [("active", "4"), ("stale", "0"), ("completed", "1"), ("failed", "1")]:
        expect(section(page, state).locator(".count")).to_have_text(count)
    assert console_errors[id(page)] == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


#: How often the page polls /tasks while it has no socket (dashboard.js), in milliseconds.
POLL_PERIOD = 2000


def test_polling_stops_once_the_socket_opens(browser: Browser, server: ServerProcess) -> None:
    context = browser.new_context()
    # The first three sockets fail (a path that refuses the upgrade), so the page starts
    # polling; the fourth connects. The page itself records each connection state it shows
    # and counts its polls: the polling phase lasts as long as the page's random backoff, too
    # briefly for the test to be sure of catching it from outside on a busy machine.
    context.add_init_script("""(() => {
        const Real = window.WebSocket;
        let made = 0;
        window.WebSocket = function (url) {
            made += 1;
            return new Real(made <= 3 ? url.replace(/\\/ws\\?/, "/not-a-socket?") : url);
        };
        window.__states = [];
        new MutationObserver((records) => {
            for (const record of records) {
                if (record.target.id === "connection") {
                    window.__states.push(record.target.dataset.state);
                }
            }
        }).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state"]});
        window.__polls = 0;
        const realFetch = window.fetch;
        window.fetch = (resource, ...rest) => {
            if (String(resource).includes("/view?")) window.__polls += 1;
            return realFetch(resource, ...rest);
        };
    })();""")
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    states: list[str] = page.evaluate("window.__states")
    assert "polling" in states[: states.index("live")], states
    # Live: polling has stopped, and a poll that was in flight did not restart it. Watched for
    # longer than a poll period: a slow page could only make a restarted poll later, never
    # earlier, so this can miss a restart on a very busy machine but never invent one.
    page.wait_for_function("() => !progressista.polling()")
    polls = page.evaluate("window.__polls")
    assert polls >= 1
    page.wait_for_timeout(POLL_PERIOD * 1.5)
    assert page.evaluate("window.__polls") == polls
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    context.close()


def test_the_jobs_overview_sums_a_job_and_opens_its_tasks(
    browser: Browser, clocked_server: ClockedServer
) -> None:
    def shard(task_id: str, n: int, **fields: Any) -> dict[str, Any]:
        return {"task_id": task_id, "n": n, "total": 100, "meta": {"job": "etl"}, **fields}

    for step in range(5):  # ten percent more every 10 s: an ETA and a sparkline to show
        clocked_server.post([shard("etl-1", 10 * step), shard("etl-2", 10 * step)])
        clocked_server.clock.advance(10)
    clocked_server.post([{"task_id": "old-1", "status": "close", "meta": {"job": "old"}}])
    clocked_server.post([{"task_id": "other", "n": 1, "meta": {"job": "else"}}])
    page = open_page(browser, clocked_server.url)
    live(page)
    etl = page.locator('li.job-card[data-job="etl"]')
    expect(etl.locator(".job-summary")).to_have_text("0 of 2 done")
    expect(etl.locator(".job-details")).to_have_text("40% · 2.00 it/s · ETA 01:00")
    expect(etl).to_have_attribute("data-state", "running")
    points = etl.locator(".spark polyline").get_attribute("points")
    assert points and len(points.split(" ")) == 5
    # A change goes live to the overview, formatted as the server formats it.
    clocked_server.post([shard("etl-1", 100, status="close")])
    expect(etl.locator(".job-summary")).to_have_text("1 of 2 done")
    # Clicking a job shows its tasks, and the URL keeps it.
    etl.locator(".job-open").click()
    expect(page).to_have_url(f"{clocked_server.url}?q=job%3Detl")
    expect(card(page, "etl-2")).to_be_visible()
    expect(card(page, "other")).to_have_count(0)
    expect(section(page, "active").locator(".count")).to_have_text("1 of 2")
    # Finished runs are one click away.
    page.get_by_role("button", name="History").click()
    expect(page.locator('#job-history-list li[data-job="old"] .job-state')).to_have_text(
        "completed"
    )
    assert console_errors[id(page)] == []


def test_the_page_shows_the_twenty_finished_runs_updated_last(
    browser: Browser, clocked_server: ClockedServer
) -> None:
    """The feed tells of every run that finishes: a day of one-off jobs piled up as cards. A
    finished run still changes when its head closed before its bars: it comes back to the top
    from its changed fields alone."""
    clocked_server.post([{"task_id": "long", "n": 1, "meta": {"job": "long"}}])
    page = open_page(browser, clocked_server.url)
    live(page)
    head = {"task_id": "etl", "meta": {"job": "etl", "role": "run"}}
    clocked_server.post([head, {"task_id": "b1", "n": 1, "total": 10, "meta": {"job": "etl"}}])
    expect(page.locator('li.job-card[data-job="etl"]')).to_have_count(1)
    clocked_server.post([{**head, "status": "close"}])  # etl#1 finished; b1 runs on
    expect(page.locator('li.job-card[data-job="etl"]')).to_have_attribute("data-state", "completed")
    for index in range(25):
        clocked_server.clock.advance(1)
        one_off = {"task_id": f"t{index}", "status": "close", "meta": {"job": f"j{index}"}}
        clocked_server.post([one_off])
    expect(page.locator('li.job-card[data-job="j24"]')).to_have_count(1)
    expect(page.locator("li.job-card")).to_have_count(21)  # 20 finished, and the one running
    expect(page.locator('li.job-card[data-job="j4"]')).to_have_count(0)
    expect(page.locator('li.job-card[data-job="j5"]')).to_have_count(1)
    expect(page.locator('li.job-card[data-job="etl"]')).to_have_count(0)
    clocked_server.clock.advance(1)
    clocked_server.post([{"task_id": "b1", "n": 5, "total": 10, "meta": {"job": "etl"}}])
    etl = page.locator('li.job-card[data-job="etl"]')
    expect(etl).to_have_count(1)  # the finished run updated last
    expect(etl.locator(".job-name")).to_have_text("etl")
    expect(page.locator('li.job-card[data-job="j5"]')).to_have_count(0)
    expect(page.locator("li.job-card")).to_have_count(21)
    assert console_errors[id(page)] == []


def test_the_page_draws_sparklines_and_job_figures_as_the_server_does(
    browser: Browser, server: ServerProcess
) -> None:
    page = open_page(browser, server.url)
    live(page)
    histories = [
        ((0.0, 0.0, 1.0, 5.0, 2.5, 7.25, 4.0, 10.0), 10.0),
        ((100.0, 3.0, 101.0, 3.0), None),
        ((1e9, 0.125, 1e9 + 0.3, 0.375, 1e9 + 7.77, 0.8125), 1.0),
        ((5.0, 1.0), 2.0),
        ((1.0, 2.0, 1.0, 3.0), None),
    ]
    for history, top in histories:
        assert page.evaluate(
            "([h, top]) => progressista.format.sparkline(h, top)", [list(history), top]
        ) == display.sparkline(history, top), history
    from progressista.server.job import Job

    job = Job(
        id="etl#2", job="etl", run=2, state="failed",
        tasks={"active": 1, "stale": 1, "completed": 3, "failed": 1},
        n=12, total=None, fraction=0.4375, rate=2500.0, eta=3725.0, size=8, unit="B",
        head=None, head_state=None, started_at=0.0, updated_at=5.0, finished_at=None,
        advanced_at=5.0, error="KeyError: 'x'", error_task="etl-4", error_host="w1",
        history=(0.0, 0.0, 5.0, 0.4375),
    )  # fmt: skip
    shown = page.evaluate("(job) => progressista.format.job(job)", msgspec.to_builtins(job))
    expected = display.job_card(job)
    for key in ("summary", "details", "error", "spark", "run", "state"):
        assert shown[key] == expected[key], key
    assert expected["details"] == "44% · 2.50 kB/s · ETA 1:02:05"


def test_notify_me_tells_of_a_watched_job_through_the_browser(
    browser: Browser, server: ServerProcess
) -> None:
    server.post([{"task_id": "a", "n": 1, "total": 2, "meta": {"job": "etl"}}])
    context = browser.new_context()
    context.grant_permissions(["notifications"], origin=server.url.rstrip("/"))
    context.add_init_script("""(() => {
        const Real = window.Notification;
        window.__told = [];
        window.Notification = class extends Real {
            constructor(title, options) {
                super(title, options);
                window.__told.push([title, options.body]);
            }
            static get permission() { return Real.permission; }
            static requestPermission() { return Real.requestPermission(); }
        };
    })();""")
    page = context.new_page()
    page.goto(server.url)
    live(page)
    bell = page.locator('li.job-card[data-job="etl"] .job-notify')
    bell.click()
    expect(bell).to_have_attribute("aria-pressed", "true")
    expect(bell).to_have_text("notifying")
    expect(page.locator("#notify-note")).to_have_text("Notifying you about etl.")
    server.post([{"task_id": "a", "status": "error", "error": "boom", "meta": {"job": "etl"}}])
    page.wait_for_function("() => window.__told.length === 1")
    assert page.evaluate("window.__told") == [
        ["etl ✗ failed", "0 of 1 done, 1 failed · 50% · a: boom"]
    ]
    context.close()


def test_notify_me_says_why_where_the_browser_cannot(
    browser: Browser, server: ServerProcess
) -> None:
    server.post([{"task_id": "a", "n": 1, "meta": {"job": "etl"}}])
    context = browser.new_context()
    context.add_init_script("delete window.Notification;")
    page = context.new_page()
    page.goto(server.url)
    live(page)
    bell = page.locator('li.job-card[data-job="etl"] .job-notify')
    expect(bell).to_have_attribute("aria-disabled", "true")
    bell.click(force=True)  # aria-disabled: Playwright would wait; a person can still click
    expect(page.locator("#notify-note")).to_have_text(
        "Notifications unavailable: this browser cannot show notifications."
    )
    context.close()


def test_a_filtered_clear_removes_only_what_was_shown_and_can_be_undone(
    browser: Browser, server: ServerProcess
) -> None:
    server.post(
        [
            {"task_id": "a1", "status": "close", "meta": {"job": "teamA"}},
            {"task_id": "a2", "status": "close", "meta": {"job": "teamA"}},
            {"task_id": "ab", "status": "close", "meta": {"job": "teamAB"}},
            {"task_id": "b1", "status": "close", "meta": {"job": "teamB"}},
        ]
    )
    page = open_page(browser, server.url + "?q=job%3DteamA")
    live(page)
    completed = section(page, "completed")
    expect(completed.locator(".count")).to_have_text("2 of 4")
    # Undo: nothing leaves the server.
    completed.get_by_role("button", name="Clear completed").click()
    toast = page.locator(".toast")
    expect(toast.locator(".toast-text")).to_have_text(
        "Cleared 2 completed tasks matching job=teamA."
    )
    expect(card(page, "a1")).to_have_count(0)
    expect(completed.locator(".count")).to_have_text("0 of 2")
    toast.get_by_role("button", name="Undo").click()
    expect(card(page, "a1")).to_be_visible()
    # A task matching the filter arrives after the click: it is not part of what was cleared.
    completed.get_by_role("button", name="Clear completed").click()
    server.post([{"task_id": "a3", "status": "close", "meta": {"job": "teamA"}}])
    until(lambda: sorted(server.tasks()) == ["a3", "ab", "b1"])


def test_long_text_is_clamped_and_opens_with_a_click(
    browser: Browser, server: ServerProcess
) -> None:
    server.post(
        [{"task_id": "long", "desc": "word " * 200, "status": "error", "error": "line\n" * 80}]
    )
    page = open_page(browser, server.url)
    live(page)
    error = card(page, "long").locator(".error")
    closed = error.bounding_box()
    assert closed is not None and closed["height"] < 80
    error.click()
    opened = error.bounding_box()
    assert opened is not None and opened["height"] > 5 * closed["height"]
    title = card(page, "long").locator(".title")
    expect(title).to_have_attribute("title", "word " * 200)  # the whole text, on hover


def test_a_jobs_long_error_is_clamped_as_a_tasks_is(
    browser: Browser, server: ServerProcess
) -> None:
    """A failed job's card showed its whole error (1,100 characters, 530 px): three failed
    jobs pushed the board three screens down."""
    server.post([{"task_id": "w", "status": "error", "error": "line\n" * 80, "meta": {"job": "j"}}])
    page = open_page(browser, server.url)
    live(page)
    error = page.locator('li.job-card[data-job="j"] .error')
    expect(error).to_have_text(re.compile("line"))
    closed = error.bounding_box()
    assert closed is not None and closed["height"] < 80
    error.click()
    opened = error.bounding_box()
    assert opened is not None and opened["height"] > 5 * closed["height"]


def test_the_compact_view_and_sorting_are_kept_in_the_url(
    browser: Browser, server: ServerProcess
) -> None:
    server.post(
        [
            {"task_id": "slow", "desc": "Slow", "n": 10, "total": 100},
            {"task_id": "fast", "desc": "Fast", "n": 90, "total": 100},
        ]
    )
    page = open_page(browser, server.url)
    live(page)
    page.get_by_label("Sort each section").select_option("progress")
    page.get_by_label("Compact").check()
    expect(page).to_have_url(f"{server.url}?sort=progress&view=compact")
    page.reload()
    live(page)
    expect(page.locator("#board")).to_have_attribute("data-view", "compact")
    ids = section(page, "active").locator("li.card")
    expect(ids.first).to_have_attribute("data-task-id", "fast")
    box = ids.first.bounding_box()
    assert box is not None and box["height"] < 60  # one row per bar
    expect(ids.first.locator(".ago")).to_contain_text("updated")


def test_a_runs_bars_fold_under_it_and_open_with_a_click(
    browser: Browser, server: ServerProcess
) -> None:
    head = {"job": "etl", "role": "run"}
    server.post(
        [
            {"task_id": "etl", "desc": "run etl.py", "meta": head},
            *(
                {
                    "task_id": f"shard-{i}",
                    "n": i,
                    "total": 9,
                    "meta": {"job": "etl", "parent": "etl"},
                }
                for i in range(3)
            ),
            {"task_id": "shard-1/inner", "n": 1, "meta": {"job": "etl", "parent": "shard-1"}},
            {"task_id": "alone", "n": 1},
        ]
    )
    page = open_page(browser, server.url)
    live(page)
    active = section(page, "active")
    top = active.locator(":scope > ul.tasks > li.card")
    expect(top).to_have_count(2)  # the run and the lone bar; the rest folded under them
    run = card(page, "etl")
    toggle = run.locator(":scope > .kids")
    expect(toggle).to_have_text("▸ 3 bars")
    expect(card(page, "shard-0")).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_text("▾ 3 bars")
    expect(run.locator(':scope > .children > li.card[data-task-id="shard-0"]')).to_be_visible()
    inner = card(page, "shard-1").locator(":scope > .kids")
    expect(inner).to_have_text("▸ 1 bar")
    expect(active.locator(".count")).to_have_text("6")  # folded bars still count


def test_a_read_only_session_sees_no_discard_controls(browser: Browser) -> None:
    with running_server(["--read-token", "r34d", "--write-token", "wr1te"]) as server:
        request = urllib.request.Request(
            f"{server.url}progress",
            data=b'[{"task_id": "kept", "status": "close"}]',
            headers={"Content-Type": "application/json", "Authorization": "Bearer wr1te"},
        )
        urllib.request.urlopen(request, timeout=30).close()
        for token, shown in [("r34d", False), ("wr1te", True)]:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{server.url}login")
            page.fill("#token", token)
            page.click("button[type=submit]")
            live(page)
            discard = card(page, "kept").locator(".discard")
            clear = section(page, "completed").locator(".clear")
            if shown:
                expect(discard).to_be_visible()
                expect(clear).to_be_visible()
            else:
                expect(discard).to_be_hidden()
                expect(clear).to_be_hidden()
            context.close()
