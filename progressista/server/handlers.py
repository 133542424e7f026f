"""HTTP and WebSocket handlers: parse the request, call the store or hub, map errors to HTTP.

Every error a client can cause is a JSON body ``{"error": sentence, "details": [...]}`` with the
status DESIGN §1 names; nothing a client sends produces a 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp_jinja2
import msgspec
from aiohttp import web

from ..schema import STATES, FieldError, SchemaError
from ..settings import parse_duration
from . import display
from .auth import (
    COOKIE_NAME,
    bearer_matches,
    cookie_value,
    origin_allowed,
    read_allowed,
    token_matches,
)
from .context import CLOCK, HUB, INGEST_STATS, SETTINGS, STORE
from .decoder import decode_events
from .metrics import exposition
from .store import StoreFull
from .task import Task

__all__ = ["CONTENT_SECURITY_POLICY", "ApiError", "error_response", "json_response", "routes"]

#: No inline script or style, nothing from other origins: a task field that slipped into the
#: page as markup still could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

#: Seconds a client is asked to wait when the server has no room for new tasks.
FULL_RETRY_AFTER = 10

routes = web.RouteTableDef()


class ApiError(Exception):
    """A request the API refuses; the ``json_errors`` middleware turns it into the response."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.details, self.headers)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    details: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": message, "details": [detail.as_json() for detail in details]}
    return json_response(body, status, headers)


def _unauthorized(what: str) -> ApiError:
    return ApiError(
        401,
        f"missing or wrong token: send 'Authorization: Bearer <{what} token>'",
        headers={"WWW-Authenticate": 'Bearer realm="progressista"'},
    )


@routes.post("/progress")
async def ingest(request: web.Request) -> web.Response:
    """Store a batch of events (DESIGN §1) and tell the viewers."""
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
    if settings.write_token is not None and not bearer_matches(request, settings.write_token):
        raise _unauthorized("write")
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415, f"send events as JSON with 'Content-Type: application/json', not {content_type!r}"
        )
    length = request.content_length
    if length is not None and length > settings.max_body:
        raise _too_large(settings.max_body)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(settings.max_body) from None
    except ConnectionResetError:
        # The worker went away mid-request (killed, say): nothing to store, nobody to answer,
        # and nothing worth an error in the log.
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    try:
        events = decode_events(body, settings.max_batch)
    except SchemaError as error:
        raise ApiError(413 if error.too_large else 400, error.summary, error.details) from None
    try:
        result = await app[STORE].apply(events, app[CLOCK]())
    except StoreFull as error:
        raise ApiError(429, str(error), headers={"Retry-After": str(FULL_RETRY_AFTER)}) from None
    hub = app[HUB]
    hub.publish(result.changed)
    if result.evicted:
        hub.publish(result.evicted)
    stats = app[INGEST_STATS]
    stats.events_accepted += result.accepted
    stats.events_ignored += result.ignored
    return json_response({"accepted": result.accepted, "ignored": result.ignored}, 202)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the body is larger than the server's limit of {limit} bytes")


def _states_filter(request: web.Request) -> frozenset[str] | None:
    """The ``state`` query (repeated or comma-separated), or None when absent."""
    values = [
        part.strip()
        for value in request.query.getall("state", [])
        for part in value.split(",")
        if part.strip()
    ]
    if not values:
        return None
    unknown = sorted(set(values) - set(STATES))
    if unknown:
        raise _bad_query("state", f"unknown state {unknown[0]!r}; use {', '.join(STATES)}")
    return frozenset(values)


def _bad_query(field: str, message: str) -> ApiError:
    return ApiError(400, f"bad query parameter {field!r}", [FieldError(None, field, message)])


def _require_read(request: web.Request) -> None:
    if not read_allowed(request, request.app[SETTINGS].read_token):
        raise _unauthorized("read")


@routes.get("/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    """``{"tasks": {id: task}}``, optionally filtered by ``state`` and ``job``."""
    _require_read(request)
    states = _states_filter(request)
    job = request.query.get("job")
    tasks = await request.app[STORE].select(states, job)
    return json_response({"tasks": tasks})


@routes.delete("/tasks")
async def delete_tasks(request: web.Request) -> web.Response:
    """Discard every task matching all given filters; refuses to run without one."""
    _require_read(request)
    states = _states_filter(request)
    older_than: float | None = None
    if "older_than" in request.query:
        try:
            older_than = parse_duration(request.query["older_than"])
        except ValueError as error:
            raise _bad_query("older_than", str(error)) from None
    if states is None and older_than is None:
        raise ApiError(
            400,
            "refusing to delete every task: give state= and/or older_than= "
            "(e.g. DELETE /tasks?state=completed,failed)",
        )
    app = request.app
    deleted = await app[STORE].delete_where(states, older_than, app[CLOCK]())
    app[HUB].publish(deleted)
    return json_response({"deleted": len(deleted)})


def _task_id(request: web.Request) -> str:
    return request.match_info["task_id"]


@routes.get("/tasks/{task_id:.+}")
async def get_task(request: web.Request) -> web.Response:
    _require_read(request)
    task_id = _task_id(request)
    task = await request.app[STORE].get(task_id)
    if task is None:
        raise ApiError(404, f"no task with id {task_id!r}")
    return json_response(task)


@routes.delete("/tasks/{task_id:.+}")
async def delete_task(request: web.Request) -> web.Response:
    _require_read(request)
    task_id = _task_id(request)
    if not await request.app[STORE].delete(task_id):
        raise ApiError(404, f"no task with id {task_id!r}")
    request.app[HUB].publish((task_id,))
    return web.Response(status=204)


@routes.get("/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    """Live view: a snapshot, then coalesced patches (DESIGN §4)."""
    settings = request.app[SETTINGS]
    _require_read(request)
    if not origin_allowed(request, settings.allowed_origins):
        raise ApiError(
            403,
            f"origin {request.headers.get('Origin')!r} may not open this WebSocket; "
            "add it to allowed_origins",
        )
    socket = web.WebSocketResponse(
        heartbeat=settings.heartbeat, compress=False, max_msg_size=64 * 1024
    )
    await socket.prepare(request)
    await request.app[HUB].serve(socket, request)
    return socket


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness and store reachability, open to probes that carry no token."""
    return json_response({"status": "ok", "store": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    _require_read(request)
    app = request.app
    body = exposition(app[INGEST_STATS], app[HUB], app[STORE].view)
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


#: Cards the server paints at most; the script adds any others from the first snapshot, so a
#: board of 50,000 tasks does not make a 50 MB page.
FIRST_PAINT_CARDS = 5000


def _first_paint(tasks: Mapping[str, Task]) -> tuple[dict[str, list[Task]], dict[str, int], int]:
    """The tasks the server paints, by state and newest first; every state's count; the rest."""
    by_state: dict[str, list[Task]] = {state: [] for state in STATES}
    for task in tasks.values():
        by_state[task["state"]].append(task)
    counts = {state: len(group) for state, group in by_state.items()}
    room = FIRST_PAINT_CARDS
    for state in STATES:
        group = by_state[state]
        group.sort(key=lambda task: task["created_at"], reverse=True)
        del group[room:]
        room -= len(group)
    return by_state, counts, len(tasks) - sum(len(group) for group in by_state.values())


_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(
    template: str, request: web.Request, context: dict[str, Any], status: int = 200
) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(_PAGE_HEADERS)
    return response


#: Bytes of rendered page sent at a time: the browser starts parsing while the server is still
#: rendering, and ingest and viewers get the event loop between chunks.
PAGE_CHUNK = 64 * 1024


async def _streamed_page(
    template: str, request: web.Request, context: dict[str, Any]
) -> web.StreamResponse:
    """Render ``template`` as it is sent: 5,000 cards take a quarter of a second to render."""
    response = web.StreamResponse(headers=_PAGE_HEADERS)
    response.content_type = "text/html"
    response.charset = "utf-8"
    await response.prepare(request)
    pending: list[str] = []
    size = 0
    for piece in aiohttp_jinja2.get_env(request.app).get_template(template).generate(context):
        pending.append(piece)
        size += len(piece)
        if size >= PAGE_CHUNK:
            await response.write("".join(pending).encode())
            pending.clear()
            size = 0
            await asyncio.sleep(0)  # write() only yields when the socket is full: yield anyway
    await response.write("".join(pending).encode())
    await response.write_eof()
    return response


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    """The dashboard, its first paint rendered here so it needs no round trip."""
    if not read_allowed(request, request.app[SETTINGS].read_token):
        return _page("login.html", request, {"failed": False}, status=401)
    tasks = request.app[STORE].view
    painted, counts, unpainted = _first_paint(tasks)
    now = request.app[CLOCK]()
    context = {
        "groups": painted,
        "counts": counts,
        "unpainted": unpainted,
        "view": lambda task: display.card(task, now),  # built as the page streams
        "states": STATES,
        "total": len(tasks),
        "blank": display.BLANK_CARD,
        "query": request.query.get("q", ""),
        "group": "job" if request.query.get("group") == "job" else "state",
        "url": f"{request.scheme}://{request.host}",
    }
    return await _streamed_page("index.html", request, context)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Trade the read token typed into the login form for a session cookie."""
    read_token = request.app[SETTINGS].read_token
    if read_token is None:
        raise web.HTTPSeeOther("/")
    form = await request.post()
    supplied = form.get("token")
    if not (isinstance(supplied, str) and token_matches(supplied.strip(), read_token)):
        return _page("login.html", request, {"failed": True}, status=401)
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE_NAME,
        cookie_value(read_token),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    raise response
