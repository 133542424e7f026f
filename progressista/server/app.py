"""The composition root: :func:`create_app` wires settings, store, hub, routes and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..settings import ServerSettings
from .asset import asset_dir
from .auth import host_allowed
from .cleanup import cleanup_loop
from .context import CLEANUP_TASK, CLOCK, HUB, INGEST_STATS, LIFETIMES, SETTINGS, STORE
from .handlers import ApiError, error_response, routes
from .hub import Hub
from .metrics import IngestStats
from .store import MemoryStore, TaskStore
from .task import Lifetimes

__all__ = ["create_app"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def host_guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Refuse requests sent to a host name this server does not answer to (DNS rebinding)."""
    settings = request.app[SETTINGS]
    if not host_allowed(request, settings.host, settings.allowed_hosts):
        raise ApiError(
            403,
            f"this server does not answer to the host name {request.host!r}; "
            "add it with --allowed-hosts",
        )
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """The one edge where refusals become HTTP: :class:`ApiError` and aiohttp's own errors
    (unknown route, wrong method) both leave as the API's JSON error shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        headers = {name: value for name, value in error.headers.items() if name in ("Allow",)}
        return error_response(
            error.status, f"{error.reason}: {request.method} {request.path}", headers=headers
        )


def create_app(
    settings: ServerSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    store: TaskStore | None = None,
) -> web.Application:
    """Build the one Application: ingest, task API, WebSocket, dashboard and cleanup.

    ``clock`` (wall-clock seconds) and ``store`` are injectable for tests; by default tasks live
    in memory and time is real.
    """
    settings = settings or ServerSettings()
    app = web.Application(client_max_size=settings.max_body, middlewares=[json_errors, host_guard])
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[STORE] = store if store is not None else MemoryStore(settings.max_tasks)
    app[HUB] = Hub(
        app[STORE].view,
        interval=settings.broadcast_interval,
        viewer_timeout=settings.viewer_timeout,
    )
    app[LIFETIMES] = Lifetimes(
        stale_after=settings.stale_after,
        abandon_after=settings.abandon_after,
        retention=settings.retention,
        max_age=settings.max_age,
    )
    app[INGEST_STATS] = IngestStats()

    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(asset_dir("templates")), autoescape=True
    )
    app.add_routes(routes)
    app.router.add_static("/static", asset_dir("static"), name="static")
    app.cleanup_ctx.append(_cleanup_task)
    app.on_shutdown.append(_close_viewers)
    return app


async def _cleanup_task(app: web.Application) -> AsyncIterator[None]:
    """Run the cleanup loop for the application's lifetime, then close the store."""
    task = asyncio.create_task(
        cleanup_loop(
            app[STORE], app[HUB], app[LIFETIMES], app[CLOCK], app[SETTINGS].cleanup_interval
        ),
        name="progressista-cleanup",
    )
    app[CLEANUP_TASK] = task
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[STORE].close()


async def _close_viewers(app: web.Application) -> None:
    await app[HUB].close()
