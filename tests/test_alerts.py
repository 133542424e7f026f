"""Alerts through real Apprise and real HTTP, to a local receiver behind Apprise's json:// scheme.

The app's clock is injected, so the settling delay, stalls and retries happen when a test moves
time; the receiver is an aiohttp app in the test's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from progressista.server import ServerSettings, create_app
from progressista.server.alert import ALERT_SETTLE, RETRY_FIRST, parse_destination
from progressista.server.cleanup import run_cleanup
from progressista.server.keys import LIFETIMES, STORE

from .conftest import NEVER, WAIT, Client, FakeClock, event, eventually, free_port, post


class Receiver:
    """A webhook that records what it is sent; it can refuse the first few."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.refuse = 0
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return web.Response(status=500)
        self.messages.append(await request.json())
        return web.Response(text="ok")

    def titles(self) -> list[str]:
        return [message["title"] for message in self.messages]


MakeAlerting = Callable[..., Awaitable[tuple[Client, Receiver, str]]]


@pytest.fixture
def alerting(aiohttp_client: Any, aiohttp_server: AiohttpServer, clock: FakeClock) -> MakeAlerting:
    async def make(**settings: Any) -> tuple[Client, Receiver, str]:
        receiver = Receiver()
        hook = web.Application()
        hook.router.add_post("/hook", receiver.handle)
        server = await aiohttp_server(hook)
        url = f"json://127.0.0.1:{server.port}/hook"
        notify = settings.pop("notify", (url,))
        settings.setdefault("cleanup_interval", NEVER)
        settings.setdefault("job_gap", 0)  # as make_client: a job is decided as its last bar ends
        app = create_app(
            ServerSettings(notify=tuple(n.format(url=url) for n in notify), **settings),
            clock=clock,
        )
        client = await aiohttp_client(app)
        return client, receiver, url

    return make


def job_event(task_id: str, **fields: Any) -> dict[str, Any]:
    return event(task_id, meta={"job": "etl", "host": "worker-7"}, **fields)


async def settle(clock: FakeClock) -> None:
    clock.advance(ALERT_SETTLE + 0.1)


async def test_a_failed_job_is_one_message_with_the_first_error_and_a_link(
    alerting: MakeAlerting, clock: FakeClock
) -> None:
    client, receiver, _ = await alerting(public_url="https://progress.example.com/")
    await post(client, [job_event(f"shard-{i}", n=1, total=10) for i in range(500)])
    await post(client, job_event("shard-7", status="error", error="KeyError: 'x'"))
    # The rest of the shards fail as the first message waits to go out: still one message.
    await post(client, [job_event(f"shard-{i}", status="error", error="boom") for i in range(500)])
    await settle(clock)
    await eventually(lambda: len(receiver.messages) == 1, WAIT)
    (message,) = receiver.messages
    assert message["title"] == "✗ etl failed"
    assert message["message"] == (
        "500 of 500 bars failed. First: KeyError: 'x' (shard-7 on worker-7).\n"
        "https://progress.example.com/?q=job%3Detl"
    )
    assert message["type"] == "failure"  # services colour it as one


async def test_a_completed_job_says_how_long_it_took(
    alerting: MakeAlerting, clock: FakeClock
) -> None:
    client, receiver, _ = await alerting()
    await post(client, [job_event("a", n=0, total=2), job_event("b", n=0, total=2)])
    clock.advance(125)
    await post(client, [job_event("a", status="close"), job_event("b", status="close")])
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["✓ etl completed"], WAIT)
    assert receiver.messages[0]["message"] == "2 bars in 2 min 5 s."
    assert receiver.messages[0]["type"] == "success"


async def test_a_job_completed_after_its_gap_took_until_its_last_bar_ended(
    alerting: MakeAlerting, clock: FakeClock
) -> None:
    client, receiver, _ = await alerting(job_gap=10)
    await post(client, job_event("a", n=0, total=2))
    clock.advance(5)
    await post(client, job_event("a", status="close"))
    await settle(clock)
    clock.advance(10)
    await run_cleanup(client.app[STORE], client.app[LIFETIMES], clock())
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["✓ etl completed"], WAIT)
    assert receiver.messages[0]["message"] == "1 bar in 5 s."


async def test_a_job_of_one_bar_reads_as_one(alerting: MakeAlerting, clock: FakeClock) -> None:
    client, receiver, _ = await alerting()
    await post(client, job_event("a", n=0, total=2))
    clock.advance(5)
    await post(client, job_event("a", status="close"))
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["✓ etl completed"], WAIT)
    assert receiver.messages[0]["message"] == "1 bar in 5 s."


async def test_a_stall_and_its_recovery_are_told(alerting: MakeAlerting, clock: FakeClock) -> None:
    client, receiver, _ = await alerting(job_stall_after=60, stale_after=3600)
    app = client.app
    await post(client, job_event("a", n=1, total=10))
    clock.advance(61)
    await run_cleanup(app[STORE], app[LIFETIMES], clock())
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["⏸ etl stalled"], WAIT)
    assert receiver.messages[0]["message"].startswith("No bar has moved for 1 min 3 s (1 open")
    clock.advance(10)
    await post(client, job_event("a", n=2))
    await settle(clock)
    await eventually(lambda: receiver.titles()[1:] == ["▶ etl moving again"], WAIT)


async def test_a_destination_that_fails_gets_the_message_once_when_it_recovers(
    alerting: MakeAlerting, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    client, receiver, url = await alerting()
    receiver.refuse = 2
    await post(client, job_event("a", status="error", error="boom"))
    await settle(clock)
    await eventually(lambda: receiver.attempts == 1, WAIT)
    for attempts in (1, 2):
        clock.advance(RETRY_FIRST * 4)

        def retried(before: int = attempts) -> bool:
            return receiver.attempts > before

        await eventually(retried, WAIT)
    await eventually(lambda: receiver.titles() == ["✗ etl failed"], WAIT)
    clock.advance(RETRY_FIRST * 100)
    await post(client, job_event("b", n=1))  # wake the sender: nothing more must go out
    assert receiver.titles() == ["✗ etl failed"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "json#1 did not take a notification" in logged
    assert url not in logged and "127.0.0.1" not in logged  # a destination's URL is a secret
    # The receiver has the message before the sender has its reply and counts it.
    counted = (
        'progressista_alerts_total{destination="json#1",outcome="sent"} 1.0',
        'progressista_alerts_total{destination="json#1",outcome="failed"} 2.0',
    )
    text = ""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        text = await (await client.get("/metrics")).text()
        if all(line in text for line in counted):
            break
        await asyncio.sleep(0.02)
    assert all(line in text for line in counted), text


async def test_each_destination_gets_only_the_jobs_it_asked_for(
    alerting: MakeAlerting, clock: FakeClock
) -> None:
    client, receiver, _ = await alerting(notify=("jobs=ml-*,train {url}",))
    await post(client, job_event("a", status="error", error="x"))
    await post(client, event("m", status="error", error="y", meta={"job": "ml-resnet"}))
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["✗ ml-resnet failed"], WAIT)


async def test_a_single_failed_task_outside_a_job_is_told_only_when_asked(
    alerting: MakeAlerting, clock: FakeClock
) -> None:
    client, receiver, _ = await alerting(notify_on=("failed", "task-failed"))
    await post(client, event("lonely", status="error", error="ValueError: no"))
    await settle(clock)
    await eventually(lambda: receiver.titles() == ["✗ task lonely failed"], WAIT)
    assert receiver.messages[0]["message"] == "ValueError: no"


def test_destinations_parse_job_globs_and_never_show_their_url() -> None:
    plain = parse_destination("slack://T000/B000/XXXX", 0)
    assert (plain.jobs, plain.label) == ((), "slack#1")
    scoped = parse_destination("jobs=etl-*,nightly mailto://user:pw@example.com", 2)
    assert (scoped.url, scoped.jobs, scoped.label) == (
        "mailto://user:pw@example.com",
        ("etl-*", "nightly"),
        "mailto#3",
    )


def test_notification_urls_stay_out_of_the_settings_line() -> None:
    from progressista.settings import parse_args

    settings = parse_args(
        ["--notify", "slack://T/B/secret", "--notify", "jobs=a* ntfy://topic"], {}
    )
    assert settings.notify == ("slack://T/B/secret", "jobs=a* ntfy://topic")
    assert settings.describe()["notify"] == "<set>"
    logging.getLogger(__name__).info("settings: %s", settings.describe())


@pytest.mark.slow
async def test_notify_test_sends_one_sample_message(aiohttp_server: AiohttpServer) -> None:
    import asyncio
    import sys

    receiver = Receiver()
    hook = web.Application()
    hook.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(hook)
    command = [sys.executable, "-m", "progressista.cli", "notify-test"]
    process = await asyncio.create_subprocess_exec(
        *command,
        f"json://127.0.0.1:{server.port}/hook",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert (process.returncode, stderr.decode()) == (0, "sent: check that it arrived\n")
    assert receiver.titles() == ["✓ progressista test"]
    process = await asyncio.create_subprocess_exec(
        *command, "nonsense-scheme://x", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert (process.returncode, stderr.decode()) == (  # a URL it cannot use is a misuse
        2,
        "progressista: notify-test: Apprise does not understand that URL "
        "(see https://github.com/caronc/apprise/wiki for the services and their URLs)\n",
    )
    refused = f"json://127.0.0.1:{free_port()}/hook"  # nobody listens: the service says why
    process = await asyncio.create_subprocess_exec(
        *command, refused, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert (process.returncode, stderr.decode()) == (
        1,
        "progressista: the notification was not sent: the service did not take the message: "
        "A Connection error occurred sending JSON notification to 127.0.0.1.\n",
    )


def test_a_notification_url_apprise_cannot_use_stops_the_server_at_start(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from progressista.server.__main__ import main

    assert main(["--port", "0", "--notify", "json://ok.example/hook", "--notify", "sekret"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "progressista: notification URL 2 (no scheme): Apprise does not understand that URL "
        "(see https://github.com/caronc/apprise/wiki for the services and their URLs)\n"
    )
    assert "sekret" not in caplog.text
