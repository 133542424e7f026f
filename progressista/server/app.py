"""The composition root: :func:`create_app` wires settings, store, hub, routes and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import time
from collections.abc import AsyncIterator, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from ..settings import ServerSettings
from . import api, pages
from .alert import Alerter, parse_destination
from .asset import asset_dir
from .auth import site_guard
from .cleanup import cleanup_loop
from .connections import Connections
from .errors import json_errors
from .hub import Hub
from .job import JobIndex
from .keys import (
    ALERTER,
    CLEANUP_TASK,
    CLOCK,
    CONNECTIONS,
    HUB,
    INGEST_STATS,
    LIFETIMES,
    PROXIES,
    SETTINGS,
    STORE,
    THROTTLE,
)
from .metrics import IngestStats
from .remote import TrustedProxies
from .store import MemoryStore, TaskStore
from .task import Lifetimes
from .throttle import Throttle

__all__ = ["create_app"]


def create_app(
    settings: ServerSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    store: TaskStore | None = None,
    hub_clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the one Application: ingest, task API, WebSocket, dashboard and cleanup.

    ``clock`` (wall-clock seconds, for task times), ``hub_clock`` (monotonic seconds, for how
    long a viewer has been stuck and when a client may try a token again) and ``store`` are
    injectable for tests; by default tasks live in memory and time is real.
    """
    settings = settings or ServerSettings()
    app = web.Application(
        client_max_size=settings.max_body,
        middlewares=[json_errors, site_guard],
        # aiohttp closes a connection that has no request under way for this long.
        handler_args={"keepalive_timeout": settings.keepalive_timeout},
    )
    app[SETTINGS] = settings
    app[PROXIES] = TrustedProxies(
        [ipaddress.ip_network(network) for network in settings.trusted_proxies],
        settings.proxy_header,
    )
    app[THROTTLE] = Throttle(settings.max_token_failures, clock=hub_clock)
    app[CONNECTIONS] = Connections(
        settings.read_timeout, settings.max_connections, proxies=app[PROXIES]
    )
    app[CLOCK] = clock
    app[LIFETIMES] = Lifetimes(
        stale_after=settings.stale_after,
        abandon_after=settings.abandon_after,
        retention=settings.retention,
        max_age=settings.max_age,
    )
    app[STORE] = store if store is not None else _store(settings, app[LIFETIMES])
    app[HUB] = Hub(
        app[STORE].table,
        interval=settings.broadcast_interval,
        viewer_timeout=settings.viewer_timeout,
        max_viewers=settings.max_viewers,
        clock=hub_clock,
        wall_clock=clock,
    )
    app[STORE].on_problem(app[HUB].set_problem)
    app[INGEST_STATS] = IngestStats()
    destinations = [
        parse_destination(entry, index)
        for index, entry in enumerate((*settings.notify, *settings.notify_file))
    ]
    if destinations:
        store = app[STORE]
        app[ALERTER] = Alerter(
            store.table,
            store.ledger,
            destinations,
            frozenset(settings.notify_on),
            settings.public_url,
            clock=clock,
            sends=lambda: store.leads,
        )

    templates = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(asset_dir("templates")), autoescape=True
    )
    for name in templates.list_templates():
        # Compiled now, not in the first request: 25 ms the first viewer's paint would hold
        # the event loop for (the pages' own, and those they extend and include, which Jinja
        # compiles as it first renders them: 8-14 ms of it at the first paint at 1M tasks).
        templates.get_template(name)
    app.add_routes(api.routes)
    app.add_routes(pages.routes)
    app.router.add_static("/static", asset_dir("static"), name="static")
    app.cleanup_ctx.append(_store_and_cleanup)
    app.on_shutdown.append(_close_viewers)
    return app


def _store(settings: ServerSettings, lifetimes: Lifetimes) -> TaskStore:
    jobs = JobIndex(
        stall_after=settings.job_stall_after,
        gap=settings.job_gap,
        retention=settings.job_retention,
        max_jobs=settings.max_jobs,
    )
    if settings.store == "memory":
        return MemoryStore(settings.max_tasks, track_age=settings.max_age is not None, jobs=jobs)
    from .redis_store import RedisStore  # only when asked for: redis-py is an extra

    return RedisStore(
        settings.store,
        lifetimes=lifetimes,
        max_tasks=settings.max_tasks,
        prefix=settings.redis_prefix,
        stream_length=settings.redis_stream_length,
        stream_bytes=settings.redis_stream_bytes,
        password=settings.redis_password,
        jobs=jobs,
    )


def keep_out_of_collections() -> None:
    """Move what exists now (the table's indexes, loaded tasks, the app) out of the garbage
    collector's reach. Every full collection walks every tracked container: the table's dicts
    hold an entry per task, which cost 229 ms per collection at a million tasks, a stall the
    loop cannot afford. They live as long as the server. Garbage from before goes first, so
    that freezing keeps nothing that was already unreachable.
    """
    gc.collect()
    gc.freeze()


async def _store_and_cleanup(app: web.Application) -> AsyncIterator[None]:
    """Open the store, run the cleanup loop for the application's lifetime, then close both."""
    store = app[STORE]
    await store.start()
    keep_out_of_collections()
    tasks = [
        asyncio.create_task(
            cleanup_loop(store, app[LIFETIMES], app[CLOCK], app[SETTINGS].cleanup_interval),
            name="progressista-cleanup",
        )
    ]
    app[CLEANUP_TASK] = tasks[0]
    alerter = app.get(ALERTER)
    if alerter is not None:
        alerter.armed = True  # from here on, job changes are news
        tasks.append(asyncio.create_task(alerter.run(), name="progressista-alerts"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await store.close()


async def _close_viewers(app: web.Application) -> None:
    await app[HUB].close()
