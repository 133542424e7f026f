"""The typed keys under which the application keeps its shared objects (no globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ..settings import ServerSettings
from .alert import Alerter
from .hub import Hub
from .metrics import IngestStats
from .store import TaskStore
from .task import Lifetimes

__all__ = [
    "ALERTER",
    "CLEANUP_TASK",
    "CLOCK",
    "HUB",
    "INGEST_STATS",
    "LIFETIMES",
    "SETTINGS",
    "STORE",
]

SETTINGS = web.AppKey("settings", ServerSettings)
STORE = web.AppKey("store", TaskStore)
HUB = web.AppKey("hub", Hub)
#: Wall-clock seconds; injectable so tests can walk tasks through their lifecycle.
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
LIFETIMES = web.AppKey("lifetimes", Lifetimes)
INGEST_STATS = web.AppKey("ingest_stats", IngestStats)
CLEANUP_TASK = web.AppKey("cleanup_task", asyncio.Task[None])
#: Present when --notify gave destinations.
ALERTER = web.AppKey("alerter", Alerter)
