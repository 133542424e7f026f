"""GET and DELETE on /tasks: filters, odd ids, the refusal to wipe everything, auth."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
from yarl import URL

from progressista.server.view import MAX_FILTER_CHARS

from .conftest import WAIT, Client, FakeClock, MakeClient, event, eventually, post, stored

ODD_IDS = ["a/b/c", "with space", "ünïcødé ✓ 進捗", "50%", "q?x=1#frag", "a/../b", "./x", "+plus"]


def task_url(client: Client, task_id: str) -> URL:
    """The id percent-encoded as one path segment; encoded=True stops yarl normalising it."""
    root = client.make_url("/")
    return URL(f"{root.scheme}://{root.authority}/tasks/{quote(task_id, safe='')}", encoded=True)


async def test_list_all_tasks(client: Client) -> None:
    await post(client, [event("a"), event("b", status="close")])
    response = await client.get("/tasks")
    assert response.status == 200
    tasks = (await response.json())["tasks"]
    assert {task_id: task["state"] for task_id, task in tasks.items()} == {
        "a": "active",
        "b": "completed",
    }


async def test_filter_by_state_and_job(client: Client) -> None:
    await post(
        client,
        [
            event("a", meta={"job": "etl"}),
            event("b", meta={"job": "etl"}, status="close"),
            event("c", meta={"job": "train"}, status="error", error="x"),
            event("d"),
        ],
    )

    async def ids(query: str) -> list[str]:
        response = await client.get("/tasks" + query)
        assert response.status == 200, await response.text()
        return sorted((await response.json())["tasks"])

    assert await ids("?state=active") == ["a", "d"]
    assert await ids("?state=completed,failed") == ["b", "c"]
    assert await ids("?state=completed&state=failed") == ["b", "c"]
    assert await ids("?job=etl") == ["a", "b"]
    assert await ids("?job=etl&state=active") == ["a"]
    assert await ids("?job=nobody") == []


async def test_the_listing_pages_with_limit_and_after_in_the_order_tasks_came(
    client: Client,
) -> None:
    await post(
        client, [event(f"t{i}", status="close" if i % 3 == 0 else "update") for i in range(10)]
    )

    async def page(query: str) -> tuple[list[str], str | None]:
        response = await client.get("/tasks" + query)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert set(body) == {"tasks", "next"}
        return list(body["tasks"]), body["next"]

    assert await page("") == ([f"t{i}" for i in range(10)], None)
    assert await page("?limit=4") == (["t0", "t1", "t2", "t3"], "t3")
    assert await page("?limit=4&after=t3") == (["t4", "t5", "t6", "t7"], "t7")
    assert await page("?limit=4&after=t7") == (["t8", "t9"], None)
    assert await page("?state=completed&limit=2") == (["t0", "t3"], "t3")
    assert await page("?state=completed&limit=2&after=t3") == (["t6", "t9"], "t9")
    assert await page("?state=completed&limit=2&after=t9") == ([], None)
    # A cursor that is gone (the task was discarded) starts over rather than skipping tasks.
    assert (await client.delete("/tasks/t3")).status == 204
    assert await page("?limit=2&after=t3") == (["t0", "t1"], "t1")
    for bad in ("?limit=0", "?limit=x", "?limit=-3"):
        response = await client.get("/tasks" + bad)
        assert response.status == 400
        assert (await response.json())["details"][0] == {
            "index": None,
            "field": "limit",
            "message": "must be a whole number ≥ 1",
        }


async def test_unknown_state_filter_is_400(client: Client) -> None:
    response = await client.get("/tasks?state=running")
    assert response.status == 400
    assert await response.json() == {
        "error": "bad query parameter 'state'",
        "details": [
            {
                "index": None,
                "field": "state",
                "message": "unknown state 'running'; use active, stale, completed, failed",
            }
        ],
    }


@pytest.mark.parametrize("task_id", ODD_IDS)
async def test_any_id_can_be_fetched_and_deleted(client: Client, task_id: str) -> None:
    await post(client, event(task_id, n=3))
    response = await client.session.get(task_url(client, task_id))
    assert response.status == 200
    assert (await response.json())["task_id"] == task_id
    response = await client.session.delete(task_url(client, task_id))
    assert response.status == 204
    assert stored(client.app) == {}
    response = await client.session.get(task_url(client, task_id))
    assert response.status == 404
    assert await response.json() == {"error": f"no task with id {task_id!r}", "details": []}


async def test_deleting_a_missing_task_is_404(client: Client) -> None:
    response = await client.delete("/tasks/ghost")
    assert response.status == 404
    assert await response.json() == {"error": "no task with id 'ghost'", "details": []}


async def test_a_store_that_cannot_take_writes_makes_deletes_503_to_retry(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from progressista.server.keys import STORE
    from progressista.server.store import StoreUnavailable

    await post(client, [event("a"), event("b")])

    async def refused(task_ids: object) -> list[str]:
        raise StoreUnavailable("the server's Redis store refused the write (OOM); retry shortly")

    monkeypatch.setattr(client.app[STORE], "delete", refused)
    for response in (
        await client.delete("/tasks/a"),
        await client.delete("/tasks?state=active"),
        await client.delete("/tasks", json={"ids": ["a", "b"]}),
    ):
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"].startswith("the server's Redis store refused")
    assert sorted(stored(client.app)) == ["a", "b"]


async def test_bulk_delete_refuses_to_wipe_everything(client: Client) -> None:
    await post(client, event("a"))
    response = await client.delete("/tasks")
    assert response.status == 400
    assert await response.json() == {
        "error": "refusing to delete every task: give state=, older_than= or q= "
        "(e.g. DELETE /tasks?state=completed,failed)",
        "details": [],
    }
    assert list(stored(client.app)) == ["a"]


async def test_bulk_delete_by_state_and_age(client: Client, clock: FakeClock) -> None:
    await post(client, [event("old-done", status="close"), event("old-running")])
    clock.advance(120)
    await post(client, [event("new-done", status="close"), event("new-running")])
    response = await client.delete("/tasks?state=completed&older_than=60")
    assert (response.status, await response.json()) == (200, {"deleted": 1})
    assert sorted(stored(client.app)) == ["new-done", "new-running", "old-running"]
    response = await client.delete("/tasks?older_than=1m")
    assert (response.status, await response.json()) == (200, {"deleted": 1})
    response = await client.delete("/tasks?state=active,completed")
    assert (response.status, await response.json()) == (200, {"deleted": 2})
    assert stored(client.app) == {}


async def test_a_delete_can_name_exactly_the_tasks_to_remove(client: Client) -> None:
    await post(client, [event("a"), event("b"), event("c/d")])
    response = await client.delete("/tasks", json={"ids": ["a", "c/d", "ghost"]})
    assert (response.status, await response.json()) == (200, {"deleted": 2})
    assert list(stored(client.app)) == ["b"]
    response = await client.delete("/tasks", json={"ids": "a"})
    assert response.status == 400
    assert (await response.json())["error"] == 'send the ids to delete as {"ids": ["task id", ...]}'


async def test_the_dashboard_filter_selects_and_deletes_exactly_what_it_matches(
    client: Client,
) -> None:
    await post(
        client,
        [
            event("a1", status="close", meta={"job": "teamA"}),
            event("a2", meta={"job": "teamA"}),
            event("ab", status="close", meta={"job": "teamAB"}),
        ],
    )
    response = await client.get("/tasks?q=job%3DteamA&state=completed")
    assert list((await response.json())["tasks"]) == ["a1"]
    response = await client.delete("/tasks?q=job%3DteamA&state=completed")
    assert (response.status, await response.json()) == (200, {"deleted": 1})
    assert sorted(stored(client.app)) == ["a2", "ab"]


async def test_a_filters_brackets_are_themselves_and_only_star_and_query_mark_are_wildcards(
    client: Client,
) -> None:
    """fnmatch read ``[...]`` as a class (the README never said so), and on Python 3.11 it
    took a minute to read 60,000 unclosed brackets, the event loop held throughout."""
    await post(
        client,
        [event("x", meta={"shard": "etl-[x]-1"}), event("y", meta={"shard": "etl-x-1"})],
    )
    response = await client.get("/tasks", params={"q": "shard=etl-[x]*"})
    assert list((await response.json())["tasks"]) == ["x"]
    response = await client.get("/tasks", params={"q": "shard=etl-?-1"})
    assert list((await response.json())["tasks"]) == ["y"]


@pytest.mark.parametrize("path", ["/tasks", "/view", "/"])
async def test_a_filter_past_its_length_is_400(client: Client, path: str) -> None:
    response = await client.get(path, params={"q": "j=" + "[" * MAX_FILTER_CHARS})
    assert (response.status, await response.json()) == (
        400,
        {
            "error": "bad query parameter 'q'",
            "details": [
                {
                    "index": None,
                    "field": "q",
                    "message": "a filter is at most 1,000 characters, not "
                    f"{MAX_FILTER_CHARS + 2:,}",
                }
            ],
        },
    )


async def test_bulk_delete_with_a_bad_duration_is_400(client: Client) -> None:
    response = await client.delete("/tasks?older_than=soon")
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "bad query parameter 'older_than'"
    assert body["details"][0]["field"] == "older_than"


async def test_reading_takes_the_read_token_and_discarding_the_write_token(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d", write_token="wr1te")
    await post(client, event("a"), Authorization="Bearer wr1te")
    reads = [("GET", "/tasks"), ("GET", "/tasks/a"), ("GET", "/metrics"), ("GET", "/view")]
    discards = [("DELETE", "/tasks/a"), ("DELETE", "/tasks?state=completed")]
    for (method, path), role in [*((r, "read") for r in reads), *((d, "write") for d in discards)]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await client.request(method, path, headers=headers)
            assert (response.status, await response.json()) == (
                401,
                {
                    "error": f"missing or wrong token: send 'Authorization: Bearer <{role} token>'",
                    "details": [],
                },
            ), path
    for method, path in reads:  # the write token reads too
        for token in ("r34d", "wr1te"):
            response = await client.request(
                method, path, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status == 200, (path, token)
    read_only = {
        "error": "the read token may only read: discarding tasks takes the write token, sent as "
        "'Authorization: Bearer <write token>' or signed in with at /login",
        "details": [],
    }
    for method, path in discards:
        response = await client.request(method, path, headers={"Authorization": "Bearer r34d"})
        assert (response.status, await response.json()) == (403, read_only), path
    response = await client.post(
        "/progress", json=event("b"), headers={"Authorization": "Bearer r34d"}
    )
    assert (response.status, (await response.json())["error"]) == (
        403,
        "the read token may only read: posting progress takes the write token, sent as "
        "'Authorization: Bearer <write token>' or signed in with at /login",
    )
    assert sorted(stored(client.app)) == ["a"]
    response = await client.delete("/tasks/a", headers={"Authorization": "Bearer wr1te"})
    assert response.status == 204
    assert stored(client.app) == {}


async def test_without_a_write_token_discarding_takes_the_read_token(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d")
    await post(client, event("a"))  # writing is open: no write token configured
    assert (await client.delete("/tasks/a")).status == 401
    response = await client.delete("/tasks/a", headers={"Authorization": "Bearer r34d"})
    assert response.status == 204


async def test_health_and_readiness_are_open_to_probes(make_client: MakeClient) -> None:
    client = await make_client(read_token="r34d")
    response = await client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok", "store": "ok"})
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (200, {"status": "ready", "store": "ok"})


async def test_metrics_count_events_tasks_and_viewers(client: Client) -> None:
    await post(client, [event("a"), event("b", status="close"), event("b", seq=0)])
    await post(client, event("a", n=-1))
    async with client.ws_connect("/ws") as socket:
        await socket.receive_json(timeout=WAIT)
        text = await (await client.get("/metrics")).text()
    lines = set(text.splitlines())
    assert {
        "progressista_ingest_requests_total 2.0",
        'progressista_events_total{outcome="accepted"} 3.0',
        'progressista_events_total{outcome="ignored"} 0.0',
        'progressista_ingest_rejected_total{status="400"} 1.0',
        'progressista_tasks{state="active"} 2.0',
        'progressista_tasks{state="completed"} 0.0',
        "progressista_viewers 1.0",
    } <= lines, text


async def test_a_rebound_host_name_is_refused(make_client: MakeClient) -> None:
    client = await make_client()
    for host, allowed in [
        ("evil.example:8000", False),
        (f"127.0.0.1:{client.port}", True),
        ("localhost", True),
        ("[::1]:8000", True),
    ]:
        response = await client.get("/tasks", headers={"Host": host})
        assert (response.status == 200) == allowed, host
        if not allowed:
            assert await response.json() == {
                "error": "this server does not answer to the host name 'evil.example:8000'; "
                "add it with --allowed-hosts",
                "details": [],
            }
    listed = await make_client(allowed_hosts=("dash.example",))
    assert (await listed.get("/tasks", headers={"Host": "dash.example"})).status == 200
    assert (await listed.get("/tasks", headers={"Host": "evil.example"})).status == 403
    exposed = await make_client(host="0.0.0.0")
    assert (await exposed.get("/tasks", headers={"Host": "anything.example"})).status == 200


@pytest.mark.parametrize("bound_to", ["127.0.0.2", "127.255.255.254", "::1", "localhost"])
async def test_every_loopback_address_is_guarded_against_rebinding(
    make_client: MakeClient, bound_to: str
) -> None:
    # The settings say where the server is bound; the test client itself stays on 127.0.0.1.
    client = await make_client(host=bound_to)
    for host, allowed in [
        ("evil.example", False),
        ("evil.example:8000", False),
        ("127.0.0.2:8000", True),
        ("127.1.2.3", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
    ]:
        response = await client.get("/tasks", headers={"Host": host})
        assert response.status == (200 if allowed else 403), (bound_to, host)


async def test_a_listing_reader_that_stops_reading_is_cut_off(make_client: MakeClient) -> None:
    """A ``GET /tasks`` reader that takes nothing for ``viewer_timeout`` is disconnected, as a
    stuck viewer is, rather than holding its handler and its place in the listing for ever."""
    import asyncio
    import socket

    from progressista.server.keys import HUB

    client = await make_client(viewer_timeout=0.2, max_tasks=50_000)
    for start in range(0, 20_000, 1000):  # megabytes of listing, more than socket buffers hold
        batch = [
            event(f"t{i}", n=i, total=20_000, desc="x" * 100) for i in range(start, start + 1000)
        ]
        assert (await post(client, batch))[0] == 202
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((str(client.server.host), int(client.server.port or 0)))
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(f"GET /tasks HTTP/1.1\r\nHost: 127.0.0.1:{client.server.port}\r\n\r\n".encode())
    hub = client.app[HUB]
    await eventually(lambda: hub.viewers_dropped == 1)
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionError:
        pass  # cut off: what was in flight may or may not arrive
    writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert not received.endswith(b'"next":null}')  # the listing never completed
    # A reader that reads gets the whole listing, as before.
    response = await client.get("/tasks")
    assert len((await response.json())["tasks"]) == 20_000


@pytest.mark.parametrize("last_piece", [False, True], ids=["a piece", "the end"])
@pytest.mark.parametrize("taking", [False, True], ids=["stuck", "slow"])
async def test_a_listing_waits_for_a_reader_as_long_as_it_takes_something(
    last_piece: bool, taking: bool
) -> None:
    """A reader that takes nothing for ``viewer_timeout`` is cut off; one on a slow link, whose
    piece takes longer than that but which keeps taking bytes, is not. (aiohttp's ``write``
    waits for the socket only every 64 KiB, ``write_eof`` always: a listing whose last piece
    found the socket full once waited there for ever.)"""
    import asyncio
    from types import SimpleNamespace
    from typing import cast

    from aiohttp import web

    from progressista.server import api
    from progressista.server.keys import HUB, SETTINGS
    from progressista.settings import ServerSettings

    never = asyncio.get_running_loop().create_future()
    buffered = [100_000]  # bytes waiting in the transport

    class Reader:
        """Stuck: takes nothing. Slow: 1 KB every 20 ms, its piece done after 0.4 s."""

        async def write(self, data: bytes) -> None:
            if not taking:
                await never
            for _ in range(20):
                await asyncio.sleep(0.02)
                buffered[0] -= 1000

        async def write_eof(self, data: bytes = b"") -> None:
            await self.write(data)

    aborted: list[bool] = []
    hub = SimpleNamespace(viewers_dropped=0)
    request = SimpleNamespace(
        app={SETTINGS: ServerSettings(viewer_timeout=0.1), HUB: hub},
        transport=SimpleNamespace(
            abort=lambda: aborted.append(True),
            get_write_buffer_size=lambda: buffered[0],
            get_extra_info=lambda name: None,
        ),
    )
    sent = await api._sent(
        cast(web.Request, request), cast(web.StreamResponse, Reader()), b"}", last_piece=last_piece
    )
    if taking:
        assert (sent, aborted, hub.viewers_dropped) == (True, [], 0)
    else:
        assert (sent, aborted, hub.viewers_dropped) == (False, [True], 1)


def test_bytes_a_reader_has_not_taken_count_the_kernels_queue_too() -> None:
    """The kernel's send queue makes room for the transport in large steps: a reader that
    takes its bytes steadily shows there first (on Linux), so it is not taken for stuck."""
    import socket
    import sys
    from types import SimpleNamespace
    from typing import cast

    from progressista.server import api

    listener = socket.create_server(("127.0.0.1", 0))
    writer = socket.create_connection(listener.getsockname())
    reader, _ = listener.accept()
    try:
        writer.setblocking(False)
        sent = 0
        try:
            while sent < 8 << 20:
                sent += writer.send(b"x" * 65536)
        except BlockingIOError:
            pass  # the kernel holds what it can
        transport = SimpleNamespace(
            get_write_buffer_size=lambda: 0, get_extra_info=lambda name: writer
        )
        before = api._unsent(cast(asyncio.BaseTransport, transport))
        if not sys.platform.startswith("linux"):
            assert before == 0  # the buffer only, elsewhere
            return
        assert before > 0
        for _ in range(1000):  # until the kernel has word of what the reader took
            reader.recv(65536)
            if api._unsent(cast(asyncio.BaseTransport, transport)) < before:
                break
        assert api._unsent(cast(asyncio.BaseTransport, transport)) < before
    finally:
        for each in (reader, writer, listener):
            each.close()
