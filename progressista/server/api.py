"""The JSON API and the live feed: parse the request, call the store or hub, map errors to HTTP.

Every error a client can cause is a JSON body ``{"error": sentence, "details": [...]}`` with the
status DESIGN §1 names; nothing a client sends produces a 5xx. Reads come from the store's table
in memory; long answers (every task of a big board) are written in slices that yield to the
event loop and wait for the client to take them.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from itertools import islice
from typing import Any

import msgspec
from aiohttp import web
from msgspec import UNSET

from ..schema import STATES, FieldError, SchemaError
from ..settings import DEFAULT_KEEPALIVE, parse_duration
from . import feed
from .auth import READ, WRITE, discard_role, origin_allowed, require
from .connections import read_in_time
from .errors import ApiError, json_response, unreadable_body
from .event import decode_events
from .feed import TASKS_PER_MESSAGE
from .hub import WindowsFull
from .job import JOB_STATES
from .keys import ALERTER, CLOCK, CONNECTIONS, HUB, INGEST_STATS, SETTINGS, STORE, THROTTLE
from .metrics import exposition
from .store import StoreFull, StoreUnavailable
from .table import TaskTable
from .task import Task
from .turns import next_turn
from .view import DEFAULT_WINDOW, MAX_WINDOW, Query, Window

__all__ = ["FULL_RETRY_AFTER", "UNAVAILABLE_RETRY_AFTER", "routes"]

#: Seconds a client is asked to wait when the server has no room for new tasks.
FULL_RETRY_AFTER = 10
#: Seconds a client is asked to wait while the store cannot be reached.
UNAVAILABLE_RETRY_AFTER = 5
#: Tasks deleted between two yields to the event loop: about 2 ms next to a million tasks
#: (1,000 held it 14-35 ms in a 100k-task clear), as cleanup's steps.
DELETE_SLICE = 250

routes = web.RouteTableDef()


def require_read(request: web.Request) -> None:
    require(request, READ, "reading")


def require_discard(request: web.Request) -> None:
    require(request, discard_role(request.app[SETTINGS]), "discarding tasks")


@routes.post("/progress")
async def ingest(request: web.Request) -> web.Response:
    """Store a batch of events (DESIGN §1); the hub hears of it from the store."""
    stats = request.app[INGEST_STATS]
    stats.requests += 1
    try:
        return await _ingest(request)
    except ApiError as error:
        stats.rejected[error.status] += 1
        raise


async def _ingest(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    require(request, WRITE, "posting progress")
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415, f"send events as JSON with 'Content-Type: application/json', not {content_type!r}"
        )
    length = request.content_length
    if length is not None and length > settings.max_body:
        raise _too_large(settings.max_body)
    try:
        body = await read_in_time(request, request.read(), settings.read_timeout)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(settings.max_body) from None
    except ConnectionResetError:
        # The worker went away mid-request (killed, say): nothing to store, nobody to answer,
        # and nothing worth an error in the log.
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    except web.RequestPayloadError as error:
        raise unreadable_body(request, error) from None
    try:
        events = decode_events(body, settings.max_batch)
    except SchemaError as error:
        raise ApiError(413 if error.too_large else 400, error.summary, error.details) from None
    # Updates for tasks the server does not hold: their worker sends what changed, so each
    # would be stored with its other fields at their defaults (no description, no labels)
    # until its next full state. Named in the reply, so that it comes at once.
    stored = app[STORE].table.tasks
    unknown = [
        event.task_id
        for event in events
        if event.task_id not in stored and event.status == "update" and event.desc is UNSET
    ]  # (about 40 ns an event when every task is held, the common case: 0.5% of ingest)
    try:
        result = await app[STORE].apply(events, app[CLOCK]())
    except StoreFull as error:
        raise ApiError(429, str(error), headers={"Retry-After": str(FULL_RETRY_AFTER)}) from None
    except StoreUnavailable as error:
        raise _unavailable(str(error)) from None
    stats = app[INGEST_STATS]
    stats.events_accepted += result.accepted
    stats.events_ignored += result.ignored
    reply: dict[str, Any] = {"accepted": result.accepted, "ignored": result.ignored}
    if unknown:
        reply["unknown"] = list(dict.fromkeys(unknown))
    keepalive = suggested_keepalive(settings.stale_after)
    if keepalive is not None:
        reply["keepalive"] = keepalive
    return json_response(reply, 202)


def suggested_keepalive(stale_after: float) -> float | None:
    """How often clients should re-send an unchanged bar, when their default would be too
    seldom: a server whose ``stale_after`` is under four keepalives asks for a quarter of it,
    so that live bars never flap to stale (DESIGN §1's suggested push interval)."""
    if stale_after >= 4 * DEFAULT_KEEPALIVE:
        return None
    return max(0.5, round(stale_after / 4, 2))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body is larger than the server's limit of {limit} bytes")


def _states_filter(request: web.Request) -> frozenset[str] | None:
    """The ``state`` query (repeated or comma-separated), or None when absent."""
    return _listed(request, "state", STATES)


def _listed(request: web.Request, name: str, allowed: Iterable[str]) -> frozenset[str] | None:
    """A query parameter naming some of ``allowed`` (repeated or comma-separated), or None."""
    values = [
        part.strip()
        for value in request.query.getall(name, [])
        for part in value.split(",")
        if part.strip()
    ]
    if not values:
        return None
    allowed = tuple(allowed)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise bad_query(name, f"unknown {name} {unknown[0]!r}; use {', '.join(allowed)}")
    return frozenset(values)


def bad_query(field: str, message: str) -> ApiError:
    return ApiError(400, f"bad query parameter {field!r}", [FieldError(None, field, message)])


def _no_room_for_windows() -> ApiError:
    return ApiError(503, WindowsFull.reason(), headers={"Retry-After": "10"})


async def window_for(request: web.Request, text: str, limit: int) -> Window:
    """The hub's window for this filter and size (``/view``, the page), or a 503 when every
    filtered window is watched."""
    try:
        return await request.app[HUB].window(text, limit)
    except WindowsFull:
        raise _no_room_for_windows() from None


def query_of(request: web.Request) -> Query:
    """The request's filter (``?q=``), or a 400 naming what is wrong with it."""
    try:
        return Query(request.query.get("q", ""))
    except ValueError as error:
        raise bad_query("q", str(error)) from None


def _positive_int(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise bad_query(name, "must be a whole number ≥ 1")
    return value


def _selected(
    table: TaskTable,
    ids: Iterable[str],
    states: frozenset[str] | None,
    job: str | None,
    query: Query,
) -> dict[str, Task]:
    tasks = table.tasks
    chosen = {}
    for task_id in ids:
        task = tasks.get(task_id)
        if (
            task is not None
            and (states is None or task.state in states)
            and (job is None or task.meta.get("job") == job)
            and query.matches(task)
        ):
            chosen[task_id] = task
    return chosen


@routes.get("/tasks")
async def list_tasks(request: web.Request) -> web.StreamResponse:
    """``{"tasks": {id: task}, "next": id or null}``: filtered by ``state``, ``job`` and ``q`` (the
    dashboard's filter), at most
    ``limit`` of them after the task ``after``, in the order tasks were first stored.

    ``next`` is the ``after`` that continues the listing, null once it is complete. The body is
    written in slices, so a million tasks neither hold the event loop nor sit in memory twice.
    """
    require_read(request)
    states = _states_filter(request)
    job = request.query.get("job")
    query = query_of(request)
    limit = _positive_int(request, "limit")
    table = request.app[STORE].table
    # Read a slice at a time (the table changes while the slices go out): a task stored when
    # the listing began and still there when its slice is read is listed once.
    ids = table.ids_after(request.query.get("after"))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    if not await _sent(request, response, b'{"tasks":{'):
        return response
    sent = 0
    last: str | None = None
    more = False
    while not ids.done:
        chunk = _selected(table, ids.take(TASKS_PER_MESSAGE), states, job, query)
        if limit is not None and sent + len(chunk) >= limit:
            chunk = dict(islice(chunk.items(), limit - sent))
            more = True
        if chunk:
            encoded = msgspec.json.encode(chunk)[1:-1]
            if not await _sent(request, response, (b"," if sent else b"") + encoded):
                return response
            sent += len(chunk)
            last = next(reversed(chunk))
        if more:
            break
        await next_turn()
    # Cut at the limit: more may follow (the next page says, possibly empty, with next null).
    tail = {"next": last if more else None}
    await _sent(request, response, b"}," + msgspec.json.encode(tail)[1:], last_piece=True)
    return response


async def _sent(
    request: web.Request, response: web.StreamResponse, data: bytes, *, last_piece: bool = False
) -> bool:
    """Write a piece of a listing; False when its reader has gone, or took nothing for
    ``viewer_timeout`` (the connection is then cut, as a stuck viewer's is): a reader that
    stops reading must not hold a handler, and its place in the listing, for ever, while one
    on a slow link keeps it as long as it takes something. The last piece ends the response,
    which waits for the reader too."""
    writing = asyncio.ensure_future(
        response.write_eof(data) if last_piece else response.write(data)
    )
    transport = request.transport
    try:
        await asyncio.sleep(0)  # the write has queued its bytes: how many wait, from here
        waiting = _unsent(transport)
        while True:
            done, _ = await asyncio.wait({writing}, timeout=request.app[SETTINGS].viewer_timeout)
            if done:
                break
            left = _unsent(transport)
            if left >= waiting:  # it took nothing all that time
                writing.cancel()
                if transport is not None:
                    transport.abort()
                request.app[HUB].viewers_dropped += 1
                return False
            waiting = left
    except asyncio.CancelledError:
        writing.cancel()
        raise
    try:
        writing.result()
    except ConnectionError:  # gone (a `curl | head`): no traceback in the log for that
        return False
    return True


def _unsent(transport: asyncio.BaseTransport | None) -> int:
    """Bytes a reader has not taken yet: in the transport's buffer, and in the kernel's send
    queue (Linux says how many; elsewhere only the buffer counts). The kernel's queue (megabytes
    on loopback) makes room in large steps, so a reader taking 100 KB/s could leave the buffer
    alone for longer than ``viewer_timeout``, though it was reading."""
    if transport is None:
        return 0
    unsent: int = getattr(transport, "get_write_buffer_size", lambda: 0)()
    return unsent + _kernel_queue(transport)


def _kernel_queue(transport: asyncio.BaseTransport) -> int:
    """The socket's send queue, not yet acknowledged by the reader (0 when unknown)."""
    try:
        import fcntl
        import termios
    except ImportError:  # not a Unix
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0
    return queued


@routes.delete("/tasks")
async def delete_tasks(request: web.Request) -> web.Response:
    """Discard the tasks named in a JSON body ``{"ids": [...]}``, or every task matching all the
    given filters (``state``, ``older_than``, ``q``); refuses to run without one.

    The dashboard names the ids it showed: what matched when the person clicked, not whatever
    matches by the time the request arrives.
    """
    require_discard(request)
    app = request.app
    store = app[STORE]
    if request.can_read_body:
        doomed = await _ids_in_body(request)
    else:
        doomed = await _matching(request, app[CLOCK]())
    deleted = 0
    for start in range(0, len(doomed), DELETE_SLICE):
        try:
            deleted += len(await store.delete(doomed[start : start + DELETE_SLICE]))
        except StoreUnavailable as error:
            done = f"{deleted} deleted, the rest not: " if deleted else ""
            raise _unavailable(f"{done}{error}") from None
        await next_turn()
    return json_response({"deleted": deleted})


def _unavailable(reason: str) -> ApiError:
    """A 503 the client retries after a while: the store cannot take writes right now."""
    return ApiError(503, reason, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})


class _Ids(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]


async def _ids_in_body(request: web.Request) -> list[str]:
    try:
        return msgspec.json.decode(await request.read(), type=_Ids).ids
    except msgspec.DecodeError as error:
        raise ApiError(
            400,
            'send the ids to delete as {"ids": ["task id", ...]}',
            [FieldError(None, "ids", str(error))],
        ) from None


async def _matching(request: web.Request, now: float) -> list[str]:
    """The ids every filter of the query selects (in slices: a big board is not read at once)."""
    states = _states_filter(request)
    older_than: float | None = None
    if "older_than" in request.query:
        try:
            older_than = parse_duration(request.query["older_than"])
        except ValueError as error:
            raise bad_query("older_than", str(error)) from None
    query = query_of(request)
    if states is None and older_than is None and query.everything:
        raise ApiError(
            400,
            "refusing to delete every task: give state=, older_than= or q= "
            "(e.g. DELETE /tasks?state=completed,failed)",
        )
    table = request.app[STORE].table
    wanted = set(states if states is not None else STATES)
    doomed = []
    ids = table.order.cursor()  # read in slices: no copy of a million ids at once
    while not ids.done:
        for task_id in ids.take(DELETE_SLICE):
            task = table.tasks.get(task_id)
            if (
                task is not None
                and task.state in wanted
                and (older_than is None or now - task.updated_at > older_than)
                and query.matches(task)
            ):
                doomed.append(task_id)
        await next_turn()
    return doomed


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """``{"jobs": [job, …]}``: every listed job run, most recently updated first; filter with
    ``?state=running,stalled`` and ``?job=name``."""
    require_read(request)
    states = _listed(request, "state", JOB_STATES)
    name = request.query.get("job")
    jobs = [
        job
        for job in request.app[STORE].table.jobs.jobs()
        if (states is None or job.state in states) and (name is None or job.job == name)
    ]
    return json_response({"jobs": jobs})


@routes.get("/jobs/{job:.+}")
async def get_job(request: web.Request) -> web.Response:
    """One job run and its tasks, nested (a task's ``meta.parent`` is its parent): the latest
    run of a name, or ``name#run`` (also ``?run=N``)."""
    require_read(request)
    table = request.app[STORE].table
    name = request.match_info["job"]
    run = request.query.get("run")
    key = f"{name}#{run}" if run is not None else name
    job = table.jobs.get(key) if "#" in key else None
    if job is None and run is None:  # a name, which may hold a '#' itself ("etl#nightly")
        job = table.jobs.latest(name)
    if job is None:
        raise ApiError(404, f"no job {key!r}")
    tasks = {
        task_id: task for task_id in table.jobs.members(job.id) if (task := table.get(task_id))
    }
    return json_response({"job": job, "tasks": _nested(tasks)})


def _nested(tasks: dict[str, Task]) -> list[dict[str, Any]]:
    """Tasks as a forest: each with ``children``, the tasks whose ``meta.parent`` it is."""
    nodes = {
        task_id: {**msgspec.structs.asdict(task), "children": []} for task_id, task in tasks.items()
    }
    roots = []
    parents: dict[str, str] = {}
    for task_id, task in tasks.items():
        parent = task.meta.get("parent")
        if isinstance(parent, str) and parent in nodes and parent != task_id:
            nodes[parent]["children"].append(nodes[task_id])
            parents[task_id] = parent
        else:
            roots.append(nodes[task_id])
    # Parents in a cycle (a's is b, b's is a): no root leads to them, and they were left out.
    # The first of them (in the tasks' order) not reached becomes a root, which breaks its
    # cycle; then the next, until every task is in the forest once.
    reached: set[str] = set()

    def reach(node: dict[str, Any]) -> None:
        stack = [node]
        while stack:
            found = stack.pop()
            if found["task_id"] not in reached:
                reached.add(found["task_id"])
                stack.extend(found["children"])

    for root in roots:
        reach(root)
    for task_id, node in nodes.items():
        if task_id not in reached:
            siblings = nodes[parents[task_id]]["children"]
            siblings[:] = [child for child in siblings if child is not node]
            roots.append(node)
            reach(node)
    return roots


@routes.get("/tasks/{task_id:.+}")
async def get_task(request: web.Request) -> web.Response:
    require_read(request)
    task_id = request.match_info["task_id"]
    task = request.app[STORE].table.get(task_id)
    if task is None:
        raise ApiError(404, f"no task with id {task_id!r}")
    return json_response(task)


@routes.delete("/tasks/{task_id:.+}")
async def delete_task(request: web.Request) -> web.Response:
    require_discard(request)
    task_id = request.match_info["task_id"]
    try:
        deleted = await request.app[STORE].delete([task_id])
    except StoreUnavailable as error:
        raise _unavailable(str(error)) from None
    if not deleted:
        raise ApiError(404, f"no task with id {task_id!r}")
    return web.Response(status=204)


def _subscription(request: web.Request) -> tuple[str, int] | None:
    """``?limit=N&q=filter`` makes a windowed viewer; without ``limit``, the whole feed."""
    if "limit" not in request.query:
        return None
    try:
        limit = int(request.query["limit"])
    except ValueError:
        limit = -1
    if not 0 <= limit <= MAX_WINDOW:
        raise bad_query("limit", f"must be a whole number from 0 to {MAX_WINDOW}")
    return (query_of(request).text, limit)


@routes.get("/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    """The live feed (DESIGN §4): the whole board, or a window of it."""
    app = request.app
    settings = app[SETTINGS]
    require_read(request)
    if not origin_allowed(request, settings.allowed_origins):
        raise ApiError(
            403,
            f"origin {request.headers.get('Origin')!r} may not open this WebSocket; "
            "add it with --allowed-origins",
        )
    subscription = _subscription(request)
    hub = app[HUB]
    if subscription is not None and not hub.make_room_for(*subscription):
        raise _no_room_for_windows()
    if hub.full:
        raise ApiError(
            503,
            f"the server has its maximum of {hub.max_viewers} viewers; retry later "
            "or raise --max-viewers",
            headers={"Retry-After": "10"},
        )
    socket = web.WebSocketResponse(
        heartbeat=settings.heartbeat, compress=True, max_msg_size=64 * 1024
    )
    await socket.prepare(request)
    await hub.serve(socket, request, subscription)
    return socket


@routes.get("/view")
async def window_view(request: web.Request) -> web.Response:
    """What a windowed viewer of ``/ws`` would be sent first, for pages that cannot open it:
    ``?limit=N&q=filter``; the page polls this instead."""
    require_read(request)
    subscription = _subscription(request) or (
        query_of(request).text,
        DEFAULT_WINDOW,
    )
    window = await window_for(request, *subscription)
    body = feed.view(request.app[STORE].table, window.shown, window.counts, request.app[CLOCK]())
    return web.Response(body=body, content_type="application/json")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer (open to probes that carry no token).

    A store outage does not fail it, so that a Redis hiccup does not take every server out of
    rotation at once; ``/readyz`` tells that.
    """
    problem = request.app[STORE].problem()
    return json_response({"status": "ok", "store": "ok" if problem is None else "unavailable"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 when the store takes writes, 503 with the reason when it cannot."""
    problem = request.app[STORE].problem()
    if problem is None:
        return json_response({"status": "ready", "store": "ok"})
    return json_response(
        {"status": "unavailable", "store": "unavailable", "reason": problem},
        503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    require_read(request)
    app = request.app
    alerter = app.get(ALERTER)
    body = await exposition(
        app[INGEST_STATS],
        app[HUB],
        app[STORE].table,
        app[SETTINGS].metrics_jobs,
        alerter.stats() if alerter is not None else [],
        app[CONNECTIONS].stats,
        app[THROTTLE].stats,
    )
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )
