"""The dashboard in a real browser (headless Chromium) against a real server process."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from progressista.server import display
from progressista.server.task import Task

from .browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path
from .server_process import ServerProcess, running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

XSS = "<img src=x onerror=window.__xss=1>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    # Quick lifecycle, so cards can be watched going stale and being removed.
    with running_server(
        [
            "--stale-after",
            "1",
            "--retention",
            "1.5",
            "--cleanup-interval",
            "0.1",
            "--log-level",
            "warning",
        ]
    ) as process:
        yield process


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


def card(page: Page, task_id: str) -> Any:
    return page.locator(f'li.card[data-task-id="{task_id}"]')


def section(page: Page, state: str) -> Any:
    return page.locator(f'#by-state section[data-state="{state}"]')


def live(page: Page) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=10_000)


def test_cards_appear_move_between_sections_and_go(browser: Browser, server: ServerProcess) -> None:
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
    # Silence: the server's cleanup marks it stale (stale_after is 1 s here).
    expect(section(page, "stale").locator('li.card[data-task-id="job-a"]')).to_be_visible()
    server.post([{"task_id": "job-a", "n": 200, "status": "close"}])
    expect(section(page, "completed").locator('li.card[data-task-id="job-a"]')).to_be_visible()
    expect(loading.locator(".amount")).to_have_text("200 / 200 rows")
    # Retention is 1.5 s here: the card goes when the task does.
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
    blocked = page.evaluate("""() => new Promise((resolve) => {
        document.addEventListener("securitypolicyviolation", () => resolve(true));
        const script = document.createElement("script");
        script.textContent = "window.__inline = 1";
        document.body.append(script);
        setTimeout(() => resolve(false), 1000);
    })""")
    assert blocked is True
    assert page.evaluate("window.__inline") is None


def test_reconnects_after_a_restart_and_resyncs(browser: Browser) -> None:
    with running_server(["--log-level", "warning"]) as first:
        first.post(
            [
                {"task_id": "before-restart", "desc": "Old"},
                {"task_id": "constructor"},
                {"task_id": "toString"},
            ]
        )
        page = open_page(browser, first.url)
        live(page)
        expect(card(page, "before-restart")).to_be_visible()
        expect(card(page, "constructor")).to_be_visible()
        port = first.port
    expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    expect(page.locator("#connection")).to_contain_text("reconnecting")
    with running_server(["--port", str(port), "--log-level", "warning"]) as second:
        second.post([{"task_id": "after-restart", "desc": "New"}])
        live(page)
        expect(card(page, "after-restart")).to_be_visible(timeout=20_000)
        # The new server's snapshot does not know the old task: the page forgets it too.
        expect(card(page, "before-restart")).to_have_count(0)
        # Even ids that are names of every JavaScript object's properties.
        expect(card(page, "constructor")).to_have_count(0)
        expect(card(page, "toString")).to_have_count(0)
        expect(section(page, "active").locator(".count")).to_have_text("1")


def test_without_websockets_it_falls_back_to_polling(
    browser: Browser, server: ServerProcess
) -> None:
    context = browser.new_context()
    context.add_init_script("window.WebSocket = undefined;")
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    server.post([{"task_id": "polled", "desc": "Seen by polling", "n": 2, "total": 4}])
    expect(card(page, "polled").locator(".percent")).to_have_text("50%", timeout=10_000)
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


def test_task_ids_with_slashes_and_unicode_can_be_discarded(
    browser: Browser, server: ServerProcess
) -> None:
    odd = "etl/2026-11-29/shard 7 ✓ 進捗"
    server.post([{"task_id": odd, "desc": "Odd id"}])
    page = open_page(browser, server.url)
    live(page)
    card(page, odd).get_by_role("button", name="Discard").click()
    expect(card(page, odd)).to_have_count(0)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}tasks/{quote(odd, safe='')}", timeout=5)
    assert missing.value.code == 404
    missing.value.close()


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


def test_polling_stops_once_the_socket_opens(browser: Browser, server: ServerProcess) -> None:
    context = browser.new_context()
    # The first three sockets fail (a path that refuses the upgrade), so the page starts
    # polling; the fourth connects.
    context.add_init_script("""(() => {
        const Real = window.WebSocket;
        let made = 0;
        window.WebSocket = function (url) {
            made += 1;
            return new Real(made <= 3 ? url.replace(/\\/ws\\?/, "/not-a-socket?") : url);
        };
    })();""")
    page = context.new_page()
    polls: list[float] = []
    page.on(
        "request",
        lambda request: polls.append(time.monotonic()) if "/view?" in request.url else None,
    )
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-state", "polling", timeout=15_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=30_000)
    # Live: polling has stopped, and a poll that was in flight did not restart it.
    page.wait_for_function("() => !progressista.polling()", timeout=3000)
    settled = time.monotonic()
    page.wait_for_timeout(1000)
    assert [moment for moment in polls if moment > settled] == []
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    context.close()


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
