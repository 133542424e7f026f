"""The dashboard's pages: the board (first paint rendered here, then live over ``/ws``) and the
login form that trades the read token for a session cookie.

The board shows, per state, the newest tasks matching the URL's filter (``?q=``) and the true
counts for everything; the script asks the server for more when the person scrolls past them.
So a page over a million tasks costs what it shows, not what is stored.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from ..schema import STATES
from ..shown import SHOWN_DEFAULTS
from . import display
from .api import query_of, window_for
from .auth import (
    COOKIE_NAME,
    READ,
    cookie_value,
    discard_role,
    matching_role,
    may,
    throttled,
)
from .connections import read_in_time
from .errors import unreadable_body
from .feed import RECENT_JOBS
from .keys import CLOCK, SETTINGS, STORE, THROTTLE
from .turns import next_turn
from .view import DEFAULT_WINDOW, MAX_WINDOW

__all__ = ["CONTENT_SECURITY_POLICY", "routes"]

#: No inline script or style, nothing from other origins: a task field that slipped into the
#: page as markup still could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

#: Bytes of rendered page sent at a time: the browser starts parsing while the server is still
#: rendering, and ingest and viewers get the event loop between chunks.
PAGE_CHUNK = 16 * 1024

#: How each section may be sorted (the cards it shows): URL value, label.
SORTS = (
    ("newest", "Newest"),
    ("updated", "Recently updated"),
    ("progress", "Progress"),
    ("eta", "ETA"),
    ("name", "Name"),
)

_TASK_DEFAULTS = json.dumps(SHOWN_DEFAULTS, separators=(",", ":"))

_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # No referrer to other sites; the page's own requests keep their Origin (under no-referrer
    # browsers send Origin: null, and POST and DELETE from an unknown origin are refused).
    "Referrer-Policy": "same-origin",
}

routes = web.RouteTableDef()


def _page(
    template: str, request: web.Request, context: dict[str, Any], status: int = 200
) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(_PAGE_HEADERS)
    return response


async def _streamed_page(
    template: str, request: web.Request, context: dict[str, Any]
) -> web.StreamResponse:
    """Render ``template`` as it is sent, yielding to the loop between chunks."""
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
            await next_turn()  # write() only yields when the socket is full: yield anyway
    await response.write("".join(pending).encode())
    await response.write_eof()
    return response


def _window_size(request: web.Request) -> int:
    try:
        return min(max(int(request.query.get("limit", DEFAULT_WINDOW)), 1), MAX_WINDOW)
    except ValueError:
        return DEFAULT_WINDOW


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    """The board, its first paint rendered here so it needs no round trip."""
    app = request.app
    if not may(request, READ):
        return _page("login.html", request, {"failed": False}, status=401)
    query = query_of(request)
    limit = _window_size(request)
    window = await window_for(request, query.text, limit)
    table = app[STORE].table
    totals = table.counts()
    now = app[CLOCK]()
    shown = {
        state: [task for task_id in window.shown[state] if (task := table.get(task_id))]
        for state in STATES
    }
    context = {
        "groups": shown,
        "counts": {state: [window.counts[state], totals[state]] for state in STATES},
        "view": lambda task: display.card(task, now),  # built as the page streams
        "states": STATES,
        "total": len(table),
        "blank": display.BLANK_CARD,
        "jobs": table.jobs.overview(RECENT_JOBS),
        "job_view": display.job_card,
        "blank_job": display.BLANK_JOB,
        "query": query.text,
        "group": "job" if request.query.get("group") == "job" else "state",
        "compact": request.query.get("view") == "compact",
        "sort": request.query.get("sort", "newest"),
        "sorts": SORTS,
        "now": now,
        "limit": limit,
        "step": DEFAULT_WINDOW,
        # What a whole task on the feed leaves out (progressista.shown): one list for all.
        "task_defaults": _TASK_DEFAULTS,
        "url": f"{request.scheme}://{request.host}",
        # The page hides the discard controls from a session that may only read.
        "role": "write" if may(request, discard_role(app[SETTINGS])) else "read",
    }
    return await _streamed_page("index.html", request, context)


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    """The sign-in form, also for someone who may read and wants to sign in to discard."""
    settings = request.app[SETTINGS]
    if settings.read_token is None and settings.write_token is None:
        raise web.HTTPSeeOther("/")
    return _page("login.html", request, {"failed": False})


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    """Trade a token typed into the login form, read or write, for a session cookie of its
    role."""
    settings = request.app[SETTINGS]
    if settings.read_token is None and settings.write_token is None:
        raise web.HTTPSeeOther("/")
    try:
        form = await read_in_time(request, request.post(), settings.read_timeout)
    except (ValueError, LookupError, RuntimeError, web.RequestPayloadError) as error:
        # What the form parser raises on a body it cannot decode: an unknown charset
        # (LookupError), undecodable bytes or a broken multipart body (ValueError), an unknown
        # Content-Transfer-Encoding (RuntimeError), a corrupt compressed body.
        raise unreadable_body(request, error, "the login form") from None
    client, wait = throttled(request)
    if wait is not None:  # a person at a form: the form again, saying why
        response = _page("login.html", request, {"failed": False, "wait": wait}, status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    supplied = form.get("token")
    role = matching_role(supplied.strip(), settings) if isinstance(supplied, str) else None
    token = settings.write_token if role == "write" else settings.read_token
    if role is None or token is None:
        request.app[THROTTLE].failed(client)
        return _page("login.html", request, {"failed": True}, status=401)
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE_NAME,
        cookie_value(role, token),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    raise response
