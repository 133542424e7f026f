"""POST /progress over the real app: every status code, its exact body, and the store after it."""

from __future__ import annotations

import gzip
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from progressista.server.keys import INGEST_STATS
from progressista.server.task import readable

from .conftest import Client, FakeClock, MakeClient, event, post
from .conftest import stored as stored_in


def stored(client: Client) -> dict[str, Any]:
    return stored_in(client.app)


async def test_one_event_creates_a_task_with_server_fields(
    client: Client, clock: FakeClock
) -> None:
    status, body = await post(client, event("a", n=5, total=20, desc="Loading", seq=1))
    assert (status, body) == (202, {"accepted": 1, "ignored": 0})
    assert stored(client) == {
        "a": {
            "task_id": "a",
            "state": "active",
            "status": "update",
            "desc": "Loading",
            "n": 5,
            "total": 20,
            "percent": 25.0,
            "unit": "it",
            "unit_scale": False,
            "unit_divisor": 1000,
            "rate": None,
            "eta": None,
            "elapsed": None,
            "postfix": "",
            "meta": {},
            "error": None,
            "seq": 1,
            "timestamp": None,
            "created_at": clock.now,
            "updated_at": clock.now,
            "closed_at": None,
            "history": [clock.now, 5.0],
            "trend": None,
            "rev": 1,
        }
    }


async def test_a_batch_is_applied_in_order(client: Client) -> None:
    status, body = await post(client, [event("a", n=1), event("b", n=2), event("a", n=3)])
    # (Updates without their description, for tasks not held: named once each.)
    assert (status, body) == (202, {"accepted": 3, "ignored": 0, "unknown": ["a", "b"]})
    assert {task_id: task["n"] for task_id, task in stored(client).items()} == {"a": 3, "b": 2}


async def test_an_older_seq_is_ignored_so_retries_and_reordering_are_harmless(
    client: Client,
) -> None:
    await post(client, event("a", n=10, seq=5))
    status, body = await post(client, [event("a", n=3, seq=4), event("a", n=99, seq=5)])
    assert (status, body) == (202, {"accepted": 0, "ignored": 2})
    assert stored(client)["a"]["n"] == 10
    assert await post(client, event("a", n=11, seq=6)) == (202, {"accepted": 1, "ignored": 0})
    assert stored(client)["a"]["n"] == 11


async def test_fields_absent_from_an_event_keep_their_stored_value(client: Client) -> None:
    await post(client, event("a", desc="Loading", total=10, meta={"job": "etl"}))
    await post(client, event("a", n=4))
    task = stored(client)["a"]
    assert (task["desc"], task["total"], task["meta"], task["n"]) == (
        "Loading",
        10,
        {"job": "etl"},
        4,
    )


async def test_rate_is_smoothed_on_the_server_when_the_client_sends_none(
    client: Client, clock: FakeClock
) -> None:
    await post(client, event("a", n=0, total=100))
    clock.advance(2)
    await post(client, event("a", n=20))
    task = stored(client)["a"]
    assert (task["rate"], task["eta"]) == (10.0, 8.0)
    clock.advance(1)
    await post(client, event("a", n=40))
    assert stored(client)["a"]["rate"] == 0.3 * 20 + 0.7 * 10


async def test_times_and_rates_are_stored_to_the_digits_a_person_reads(
    client: Client, clock: FakeClock
) -> None:
    """They go to every viewer with every event; their 17 digits were a fifth of its bytes."""
    await post(client, event("a", n=3, elapsed=103.06833863258362, rate=0.27472527472527475))
    assert (stored(client)["a"]["elapsed"], stored(client)["a"]["rate"]) == (103.068, 0.2747)
    await post(client, event("a", n=5, elapsed=7, rate=12437.67082039105))  # ints stay ints
    assert (stored(client)["a"]["elapsed"], stored(client)["a"]["rate"]) == (7, 12437.671)
    await post(client, event("b", n=0))
    clock.advance(3)
    await post(client, event("b", n=1))  # a rate of the server's own: one item in 3 seconds
    assert stored(client)["b"]["rate"] == 0.3333
    response = await client.get("/tasks/a")
    assert b'"elapsed":7,' in await response.read()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2.183017626800762, "2.183"),
        (999.9996, "1000.0"),
        (1e11 + 0.123456, "100000000000.123"),
        (1e12 + 0.5, "1000000000000.5"),  # past what thousandths can hold exactly: as it is
        (0.000277777777, "0.0002778"),  # one item an hour: four digits, not none
        (5e-300, "5e-300"),
        (0.0, "0.0"),
        (12, "12"),
        (-1.2345678912345, "-1.235"),  # a trend, as a bar counts down
        (-0.000277777777, "-0.0002778"),
    ],
)
def test_readable_keeps_thousandths_or_four_significant_digits(value: float, shown: str) -> None:
    assert repr(readable(value)) == shown
    assert readable(readable(value)) == readable(value)


async def test_the_eta_follows_the_steady_rate_of_the_samples_not_the_last_rate(
    client: Client, clock: FakeClock
) -> None:
    # Samples at least 2 s apart: (0 s, 0), (2 s, 20), (4 s, 40), a slope of 10 a second.
    for n in (0, 20, 40):
        await post(client, event("a", n=n, total=100))
        clock.advance(2)
    clock.advance(-1)
    await post(client, event("a", n=50, rate=5))
    task = stored(client)["a"]
    # The client's own rate is kept as it sent it; the ETA comes from the steady rate.
    assert (task["rate"], task["trend"], task["eta"]) == (5, 10.0, 5.0)


async def test_history_keeps_a_bounded_spread_of_samples_over_the_whole_run(
    client: Client, clock: FakeClock
) -> None:
    for second in range(1000):
        await post(client, event("long", n=second, total=2000))
        clock.advance(1)
    history = stored(client)["long"]["history"]
    times = history[0::2]
    assert len(times) <= 32
    assert times[0] == 1_800_000_000.0  # the start is kept
    assert times[-1] >= 1_800_000_000.0 + 999 - max(2, 999 / 16)  # and the recent past
    assert all(b > a for a, b in itertools.pairwise(times))
    # Steady progress of one a second: the steady rate says so, and the ETA follows from it.
    task = stored(client)["long"]
    assert task["trend"] == pytest.approx(1.0)
    assert task["eta"] == pytest.approx(2000 - 999)


def test_the_steady_rate_is_the_least_squares_slope_for_any_number_of_samples() -> None:
    """fit_slope runs straight-line code for up to TREND_POINTS samples: it must give what
    the textbook formula gives, for every count, with irregular times far from zero."""
    import random

    from progressista.server.task import TREND_POINTS, TREND_SPAN, fit_slope

    rng = random.Random(7)
    for count in range(TREND_POINTS + 4):
        for _ in range(50):
            times = sorted(1.8e9 + rng.random() * 100 for _ in range(count))
            values = [rng.random() * 1e4 for _ in range(count)]
            points = tuple(v for pair in zip(times, values, strict=True) for v in pair)
            if count < 3 or times[-1] - times[0] < TREND_SPAN:
                assert fit_slope(points) is None
                continue
            mean_t, mean_v = sum(times) / count, sum(values) / count
            slope = sum(
                (t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)
            ) / sum((t - mean_t) ** 2 for t in times)
            assert fit_slope(points) == pytest.approx(slope, rel=1e-6)
    assert fit_slope((0.0, 1.0, 5.0, 1.0, 10.0, 1.0)) == 0.0  # flat
    assert fit_slope((0.0, 1.0, 0.0, 2.0, 0.0, 3.0), min_span=0) is None  # one instant


async def test_close_completes_and_error_fails_with_its_text(
    client: Client, clock: FakeClock
) -> None:
    await post(
        client,
        [
            event("ok", n=10, total=10, status="close"),
            event("bad", status="error", error="ValueError: boom"),
        ],
    )
    tasks = stored(client)
    assert (tasks["ok"]["state"], tasks["ok"]["closed_at"]) == ("completed", clock.now)
    assert (tasks["bad"]["state"], tasks["bad"]["error"]) == ("failed", "ValueError: boom")


async def test_an_event_after_close_starts_a_new_run(client: Client, clock: FakeClock) -> None:
    await post(client, event("a", n=10, desc="first", status="close", seq=3))
    clock.advance(60)
    await post(client, event("a", n=1, status="start", seq=4))
    task = stored(client)["a"]
    assert (task["state"], task["n"], task["desc"], task["created_at"], task["closed_at"]) == (
        "active",
        1,
        "",
        clock.now,
        None,
    )


async def test_a_retried_close_does_not_start_a_new_run(client: Client) -> None:
    await post(client, event("a", status="close", seq=3))
    assert await post(client, event("a", status="close", seq=3)) == (
        202,
        {"accepted": 0, "ignored": 1},
    )
    assert stored(client)["a"]["state"] == "completed"


async def test_invalid_events_are_rejected_whole_with_every_field_named(client: Client) -> None:
    await post(client, event("keep", n=1))
    status, body = await post(client, [event("new", n=2), event("keep", n=-1), {"n": 1}])
    assert status == 400
    assert body == {
        "error": "2 events are invalid; nothing was stored",
        "details": [
            {"index": 1, "field": "n", "message": "must be a finite number ≥ 0"},
            {"index": 2, "field": "task_id", "message": "is required"},
        ],
    }
    assert list(stored(client)) == ["keep"]
    assert stored(client)["keep"]["n"] == 1


async def test_a_single_invalid_event_has_a_null_index(client: Client) -> None:
    assert await post(client, event("a", status="finished")) == (
        400,
        {
            "error": "the event is invalid",
            "details": [
                {
                    "index": None,
                    "field": "status",
                    "message": "must be one of start, update, close, error",
                }
            ],
        },
    )


async def test_nan_and_infinity_are_rejected(client: Client) -> None:
    response = await client.post(
        "/progress",
        data=b'{"task_id": "a", "n": 1e400}',
        headers={"Content-Type": "application/json"},
    )
    assert (response.status, await response.json()) == (
        400,
        {"error": "the body is invalid: Number out of range - at `$.n`", "details": []},
    )
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        response = await client.post(
            "/progress",
            data=b'{"task_id": "a", "n": ' + literal + b"}",
            headers={"Content-Type": "application/json"},
        )
        body = await response.json()
        assert response.status == 400, literal
        assert body["error"].startswith("the body is not valid JSON: "), body
    assert stored(client) == {}


async def test_malformed_json_is_400(client: Client) -> None:
    response = await client.post(
        "/progress", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"].startswith("the body is not valid JSON")


async def test_a_body_that_is_not_json_typed_is_415(client: Client) -> None:
    response = await client.post(
        "/progress", data=b'{"task_id": "a"}', headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert await response.json() == {
        "error": "send events as JSON with 'Content-Type: application/json', not 'text/plain'",
        "details": [],
    }


async def test_json_with_a_charset_is_accepted(client: Client) -> None:
    response = await client.post(
        "/progress",
        data=b'{"task_id": "a"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 202


async def test_a_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body=1000)
    status, body = await post(client, event("a", desc="x" * 990))
    assert (status, body) == (
        413,
        {"error": "the body is larger than the server's limit of 1000 bytes", "details": []},
    )

    # Chunked bodies carry no Content-Length and are cut off while reading.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"task_id": "a", "desc": "'
        yield b"x" * 2000
        yield b'"}'

    response = await client.post(
        "/progress", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert stored(client) == {}


async def test_a_batch_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_batch=2)
    assert await post(client, [event("a"), event("b"), event("c")]) == (
        413,
        {
            "error": "a batch may hold at most 2 events",
            "details": [{"index": None, "field": "", "message": "3 events sent"}],
        },
    )


async def test_write_token_is_required_when_configured(make_client: MakeClient) -> None:
    client = await make_client(write_token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response = await client.post("/progress", json=event("a"), headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="progressista"'
        assert await response.json() == {
            "error": "missing or wrong token: send 'Authorization: Bearer <write token>'",
            "details": [],
        }
    assert await post(client, event("a", status="start"), Authorization="Bearer s3cret") == (
        202,
        {"accepted": 1, "ignored": 0},
    )


async def test_when_full_completed_tasks_are_evicted_first_then_new_tasks_get_429(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(max_tasks=3)
    await post(client, event("done-early", status="close"))
    clock.advance(1)
    await post(client, [event("done-late", status="close"), event("running")])
    assert await post(client, event("new-1", status="start")) == (
        202,
        {"accepted": 1, "ignored": 0},
    )
    assert sorted(stored(client)) == ["done-late", "new-1", "running"]
    await post(client, event("new-2"))
    assert sorted(stored(client)) == ["new-1", "new-2", "running"]
    response = await client.post("/progress", json=[event("running", n=5), event("new-3")])
    assert response.status == 429
    assert response.headers["Retry-After"] == "10"
    assert await response.json() == {
        "error": "the server holds its maximum of 3 tasks and none is finished; "
        "retry later, or raise --max-tasks",
        "details": [],
    }
    assert stored(client)["running"]["n"] == 0  # all or nothing
    assert await post(client, event("running", n=6)) == (202, {"accepted": 1, "ignored": 0})


async def test_wrong_method_and_unknown_route_are_json(client: Client) -> None:
    response = await client.get("/progress")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert await response.json() == {"error": "Method Not Allowed: GET /progress", "details": []}
    response = await client.get("/nowhere")
    assert response.status == 404
    assert await response.json() == {"error": "Not Found: GET /nowhere", "details": []}


async def test_outcomes_are_counted(client: Client) -> None:
    await post(client, [event("a", seq=2), event("a", seq=1)])
    await post(client, event("a", n=-1))
    stats = client.app[INGEST_STATS]
    assert (stats.requests, stats.events_accepted, stats.events_ignored, dict(stats.rejected)) == (
        2,
        1,
        1,
        {400: 1},
    )


async def test_derived_values_that_overflow_are_unknown_not_infinite(client: Client) -> None:
    assert (await post(client, event("big", n=0, total=1e308, rate=1e-300)))[0] == 202
    assert (await post(client, event("huge", n=1e308, total=1e-300)))[0] == 202
    tasks = stored(client)
    assert (tasks["big"]["eta"], tasks["huge"]["percent"]) == (None, None)
    response = await client.get("/")
    assert response.status == 200


@pytest.mark.parametrize(
    "body",
    [b'{"task_id": 1} garbage', b'[{"task_id": 1}, ', b"[" * 100_000 + b"]" * 100_000],
)
async def test_bodies_that_break_late_are_400_not_500(client: Client, body: bytes) -> None:
    response = await client.post(
        "/progress", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]


async def test_undecodable_token_bytes_are_401_not_500(make_client: MakeClient) -> None:
    import asyncio

    client = await make_client(write_token="w", read_token="r")
    for request in (
        b"POST /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: progressista_session=\xff\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(request)
        status = await reader.readline()
        writer.close()
        assert status.startswith(b"HTTP/1.1 401"), status


async def test_a_server_with_a_short_stale_after_asks_clients_for_more_keepalives(
    make_client: MakeClient,
) -> None:
    client = await make_client(stale_after=20)
    start = event("a", status="start")
    assert await post(client, start) == (202, {"accepted": 1, "ignored": 0, "keepalive": 5.0})
    client = await make_client(stale_after=60)
    assert await post(client, start) == (202, {"accepted": 1, "ignored": 0})


@pytest.mark.parametrize(
    ("encoding", "body", "error"),
    [
        ("gzip", b"not gzip at all", "the body is not valid gzip (Content-Encoding: gzip)"),
        (
            "deflate",
            b"\x78\x9c not deflate",
            "the body is not valid deflate (Content-Encoding: deflate)",
        ),
    ],
)
async def test_a_body_that_does_not_decompress_is_400_with_one_log_line(
    client: Client, caplog: pytest.LogCaptureFixture, encoding: str, body: bytes, error: str
) -> None:
    response = await client.post(
        "/progress",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert (response.status, await response.json()) == (400, {"error": error, "details": []})
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert client.app[INGEST_STATS].rejected == {400: 1}


async def test_a_compressed_body_is_accepted(client: Client) -> None:
    response = await client.post(
        "/progress",
        data=gzip.compress(b'{"task_id": "zipped", "n": 3}'),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status == 202
    assert stored(client)["zipped"]["n"] == 3


async def test_updates_for_tasks_the_server_does_not_hold_are_named(client: Client) -> None:
    """What changed, for a task the server does not hold (discarded while its worker runs):
    the reply names it, so that the worker sends it whole; a start, or an update that
    carries its description (a whole state), needs no such word."""
    response = await client.post(
        "/progress",
        json=[
            {"task_id": "lost", "n": 5},
            {"task_id": "fresh", "status": "start", "n": 1},
            {"task_id": "whole", "n": 1, "desc": "Whole"},
        ],
    )
    assert response.status == 202
    assert (await response.json())["unknown"] == ["lost"]
    response = await client.post("/progress", json={"task_id": "lost", "n": 6})
    assert "unknown" not in await response.json()
