"""GET /: server-rendered first paint, escaping, security headers, static files, login."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
import pytest

from progressista.server.auth import COOKIE_NAME
from progressista.server.pages import CONTENT_SECURITY_POLICY

from .conftest import WAIT, Client, FakeClock, MakeClient, event, post

XSS = "<img src=x onerror=window.__xss=1>"


async def test_the_page_lists_tasks_by_state(client: Client, clock: FakeClock) -> None:
    await post(
        client,
        [
            event("running", desc="Crunching", n=3, total=10),
            event("broken", status="error", error="KeyError: 'x'"),
        ],
    )
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    active = page[page.index('data-state="active"') : page.index('data-state="stale"')]
    assert (
        f'<li class="card" data-task-id="running" data-state="active" data-job="" '
        f'data-updated="{clock.now}" tabindex="0">'
    ) in active
    assert '<span class="title clamp" title="Crunching">Crunching</span>' in active
    assert '<span class="ago">updated just now</span>' in active
    assert '<span class="amount">3 / 10 it</span>' in active
    assert '<span class="percent">30%</span>' in active
    assert '<progress max="10" value="3" aria-label="Crunching">' in active
    failed = page[page.index('<section class="section" data-state="failed"') :]
    assert "KeyError: &#39;x&#39;" in failed
    assert '<span class="count">1</span>' in failed


async def test_the_page_keeps_the_view_asked_for_in_the_url(client: Client) -> None:
    page = await (await client.get("/?q=etl&group=job")).text()
    assert 'value="etl"' in page
    assert 'id="group-by-job" name="group" value="job" type="checkbox" checked' in page


async def test_an_empty_board_says_how_to_start(client: Client) -> None:
    page = await (await client.get("/")).text()
    assert '<p id="empty" class="empty">No tasks yet.' in page


async def test_task_text_is_escaped_never_markup(client: Client) -> None:
    await post(client, event(XSS, desc=XSS, postfix=XSS, unit="<b>", meta={"job": XSS}))
    page = await (await client.get("/")).text()
    assert XSS not in page
    assert "&lt;img src=x onerror=window.__xss=1&gt;" in page
    assert "<b>" not in page


async def test_the_page_forbids_inline_script(client: Client) -> None:
    response = await client.get("/")
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await response.text()
    assert "<script>" not in page  # only <script src=...>


async def test_static_files_are_served(client: Client) -> None:
    for path, kind in [("/static/dashboard.js", "javascript"), ("/static/dashboard.css", "css")]:
        response = await client.get(path)
        assert response.status == 200, path
        assert kind in response.content_type
        assert len(await response.read()) > 100


async def test_a_read_token_puts_the_page_behind_a_login_form(make_client: MakeClient) -> None:
    client = await make_client(read_token="r34d-t0ken")
    await post(client, event("secret-task"))
    response = await client.get("/")
    assert response.status == 401
    page = await response.text()
    assert 'action="/login"' in page
    assert "secret-task" not in page

    response = await client.post("/login", data={"token": "wrong"}, allow_redirects=False)
    assert response.status == 401
    assert "That token is not right." in await response.text()
    assert COOKIE_NAME not in response.cookies

    response = await client.post("/login", data={"token": "r34d-t0ken"}, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/")
    cookie = response.cookies[COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert "r34d-t0ken" not in cookie.value
    # The client's cookie jar now carries the session: the page, the API and /ws open up.
    response = await client.get("/")
    assert response.status == 200
    assert "secret-task" in await response.text()
    assert (await client.get("/tasks")).status == 200
    async with client.ws_connect("/ws") as viewer:
        assert (await viewer.receive_json(timeout=WAIT))["type"] == "snapshot"


async def test_the_login_form_takes_either_token_and_the_session_remembers_which(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d", write_token="wr1te")
    await post(client, event("a"), Authorization="Bearer wr1te")

    response = await client.post("/login", data={"token": "r34d"}, allow_redirects=False)
    cookie = response.cookies[COOKIE_NAME].value
    assert cookie.startswith("read.") and "r34d" not in cookie
    page = await (await client.get("/")).text()
    assert 'data-role="read"' in page  # the page hides discard and Clear
    response = await client.delete("/tasks/a")
    assert response.status == 403

    response = await client.post("/login", data={"token": "wr1te"}, allow_redirects=False)
    cookie = response.cookies[COOKIE_NAME].value
    assert cookie.startswith("write.") and "wr1te" not in cookie
    assert 'data-role="write"' in await (await client.get("/")).text()
    assert (await client.delete("/tasks/a")).status == 204


async def test_a_session_cookie_cannot_be_forged_into_another_role(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d", write_token="wr1te")
    await post(client, event("a"), Authorization="Bearer wr1te")
    response = await client.post("/login", data={"token": "r34d"}, allow_redirects=False)
    read_proof = response.cookies[COOKIE_NAME].value.partition(".")[2]
    for forged in (f"write.{read_proof}", "write.", "write", "admin." + read_proof):
        client.session.cookie_jar.clear()
        response = await client.delete("/tasks/a", cookies={COOKIE_NAME: forged})
        assert response.status == 401, forged
    assert (
        "a" in await (await client.get("/tasks", headers={"Authorization": "Bearer r34d"})).text()
    )


async def test_with_only_a_write_token_the_open_board_offers_a_sign_in_to_discard(
    make_client: MakeClient,
) -> None:
    client = await make_client(write_token="wr1te")
    page = await (await client.get("/")).text()
    assert 'data-role="read"' in page
    response = await client.get("/login")
    assert response.status == 200
    assert 'action="/login"' in await response.text()
    response = await client.post("/login", data={"token": "wr1te"}, allow_redirects=False)
    assert response.cookies[COOKIE_NAME].value.startswith("write.")
    assert 'data-role="write"' in await (await client.get("/")).text()


async def test_an_open_board_may_discard(client: Client) -> None:
    assert 'data-role="write"' in await (await client.get("/")).text()
    assert (await client.get("/login", allow_redirects=False)).status == 303


async def test_login_without_a_read_token_just_goes_to_the_page(client: Client) -> None:
    response = await client.post("/login", data={"token": "x"}, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/")


async def test_a_big_board_paints_the_newest_of_each_state_and_offers_more(
    client: Client, clock: FakeClock
) -> None:
    for i in range(5):
        await post(client, event(f"t{i}"))
        clock.advance(1)
    page = await (await client.get("/?limit=3")).text()
    painted = sorted(
        (page.index(f'data-task-id="t{i}"'), f"t{i}")
        for i in range(5)
        if f'data-task-id="t{i}"' in page
    )
    assert [task_id for _, task_id in painted] == ["t4", "t3", "t2"]  # the newest, newest first
    assert '<span class="count">5</span>' in page  # counts are of every task
    assert 'data-more="active">Show more (2 not shown)</button>' in page


async def test_a_filtered_page_counts_what_matches_out_of_all(client: Client) -> None:
    await post(client, [event("a", meta={"job": "teamA"}), event("b", meta={"job": "teamAB"})])
    page = await (await client.get("/?q=job%3DteamA")).text()
    assert 'data-task-id="a"' in page
    assert 'data-task-id="b"' not in page
    assert '<span class="count">1 of 2</span>' in page


async def test_rendering_a_big_page_lets_other_work_run(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from progressista.server import pages, turns

    await post(client, [event(f"t{i}", desc="x" * 200) for i in range(300)])
    monkeypatch.setattr(pages, "PAGE_CHUNK", 4096)
    yields = 0
    real_turn = turns.next_turn

    def counting_turn() -> asyncio.Future[None]:
        nonlocal yields
        yields += 1
        return real_turn()

    monkeypatch.setattr(pages, "next_turn", counting_turn)
    response = await client.get("/?limit=300")
    assert response.status == 200
    assert len(await response.read()) > 40 * 4096
    assert yields >= 40  # once per chunk: ingest and viewers get the loop in between


def test_the_blank_card_has_every_key_a_card_has() -> None:
    from progressista.server import display
    from progressista.server.event import Event
    from progressista.server.task import new_task

    task = new_task(Event(task_id="t"), 1.0)
    assert set(display.BLANK_CARD) == set(display.card(task, 2.0))


async def test_the_page_shows_the_jobs_overview(client: Client) -> None:
    await post(
        client,
        [
            event("s1", n=5, total=10, meta={"job": "etl"}),
            event("s2", status="error", error="boom", meta={"job": "etl"}),
        ],
    )
    page = await (await client.get("/")).text()
    jobs = page[page.index('<section id="jobs"') : page.index('<div id="board"')]
    assert 'data-job-id="etl#1" data-job="etl" data-state="failed"' in jobs
    assert '<span class="job-summary">0 of 2 done, 1 failed</span>' in jobs
    assert "s2: boom" in jobs


def test_the_blank_job_card_has_every_key_a_job_card_has() -> None:
    from progressista.server import display
    from progressista.server.job import JobIndex

    jobs = JobIndex()
    from progressista.server.event import Event
    from progressista.server.task import new_task

    jobs.update(None, new_task(Event(task_id="t", meta={"job": "j"}), 1.0), 1.0)
    jobs.settle()
    (job,) = jobs.jobs()
    assert set(display.BLANK_JOB) == set(display.job_card(job))


@pytest.mark.parametrize(
    ("part_headers", "error"),
    [
        (
            "Content-Type: text/plain; charset=nosuch",
            "the login form cannot be read: unknown encoding: nosuch",
        ),
        (
            "Content-Transfer-Encoding: nosuch",
            "the login form cannot be read: unknown content transfer encoding: nosuch",
        ),
        (
            "Content-Type: text/plain; charset=utf-8",
            "the login form cannot be read: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
        ),
    ],
)
async def test_a_login_form_that_cannot_be_decoded_is_400_with_one_log_line(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, part_headers: str, error: str
) -> None:
    import logging

    client = await make_client(read_token="r34d")  # no token needed to send a broken form
    body = (
        f'--b\r\nContent-Disposition: form-data; name="token"\r\n{part_headers}\r\n\r\n'.encode()
        + b"\xff\xfe\r\n--b--\r\n"
    )
    response = await client.post(
        "/login", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert (response.status, await response.json()) == (400, {"error": error, "details": []})
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_page_on_another_site_cannot_post_or_discard_with_the_session(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d", write_token="wr1te")
    await post(client, event("a"), Authorization="Bearer wr1te")
    response = await client.post("/login", data={"token": "wr1te"}, allow_redirects=False)
    assert response.status == 303  # the browser now holds a write session
    foreign = {"Origin": "https://evil.example"}
    for method, path, body in [
        ("DELETE", "/tasks/a", None),
        ("DELETE", "/tasks?state=active", None),
        ("POST", "/progress", event("planted")),
        ("POST", "/login", None),
    ]:
        response = await client.request(method, path, json=body, headers=foreign)
        assert (response.status, await response.json()) == (
            403,
            {
                "error": f"a page from 'https://evil.example' may not send {method} requests "
                "here; add its origin with --allowed-origins if it is yours",
                "details": [],
            },
        ), path
    # "http://[::1" cannot be parsed at all: it was a 500 with a traceback.
    for origin in ("null", f"http://127.0.0.1.evil.example:{client.port}", "http://[::1"):
        response = await client.delete("/tasks/a", headers={"Origin": origin})
        assert response.status == 403, origin
    assert "a" in await (await client.get("/tasks")).text()
    # The board's own page, and programs (which send no Origin), are let through.
    own = {"Origin": f"http://127.0.0.1:{client.port}"}
    assert (await client.post("/progress", json=event("b"), headers=own)).status == 202
    assert (await client.delete("/tasks/a", headers=own)).status == 204
    assert (await client.delete("/tasks/b")).status == 204


async def test_a_listed_origin_may_discard(make_client: MakeClient) -> None:
    client = await make_client(allowed_origins=("https://board.example",))
    await post(client, event("a"))
    response = await client.delete("/tasks/a", headers={"Origin": "https://board.example"})
    assert response.status == 204


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        # A browser's own page under Referrer-Policy: no-referrer sends Origin: null.
        ({"Sec-Fetch-Site": "same-origin", "Origin": "null"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, False),
        ({"Sec-Fetch-Site": "same-site", "Origin": "https://sub.127.0.0.1"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://board.example"}, True),  # listed
    ],
)
async def test_browsers_say_where_a_request_comes_from_in_sec_fetch_site(
    make_client: MakeClient, headers: dict[str, str], allowed: bool
) -> None:
    client = await make_client(allowed_origins=("https://board.example",))
    await post(client, event("a"))
    response = await client.delete("/tasks/a", headers=headers)
    assert response.status == (204 if allowed else 403)


def test_the_run_task_reads_as_a_command_not_a_meter() -> None:
    from progressista.server import display
    from progressista.server.event import Event
    from progressista.server.task import new_task

    meta: dict[str, str | bool | int | float | None] = {
        "job": "etl",
        "role": "run",
        "command": "etl.py",
        "processes": 2,
        "bars": 3,
    }
    run = new_task(
        Event(task_id="etl", desc="run etl.py", n=1, unit="bars", rate=0.05, meta=meta), 100.0
    )
    shown = display.card(run, 160.0)
    assert (shown["rate"], shown["eta"], shown["labels"]) == ("", "", ["command=etl.py"])
    bar = new_task(Event(task_id="b", n=1, total=4, rate=2.0, meta={"parent": "etl"}), 100.0)
    assert display.card(bar, 101.0)["labels"] == []  # the nesting shows the parent
    assert display.card(bar, 101.0)["rate"] == "2.00 it/s"


async def test_no_template_is_compiled_while_a_page_is_served(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jinja compiles a template the first time it is rendered, including those a page extends
    # and includes: 8-14 ms the first paint at a million tasks held the event loop for. The
    # application compiles them all as it is made.
    environment = aiohttp_jinja2.get_env(client.app)
    compiled: list[str | None] = []
    original = environment.compile

    def compile(source: Any, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        compiled.append(name)
        return original(source, name, *args, **kwargs)

    monkeypatch.setattr(environment, "compile", compile)
    await post(client, event("running", n=3, total=10))
    for path in ("/", "/login"):
        assert (await client.get(path)).status == 200
    assert compiled == []
