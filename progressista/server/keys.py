"""The typed keys under which the application keeps its shared objects (no globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ..settings import ServerSettings
from .alert import Alerter
from .hub import Hub
from .metrics import IngestStats
from .remote import TrustedProxies
from .store import TaskStore
from .task import Lifetimes
from .throttle import Throttle

if TYPE_CHECKING:
    from .connections import Connections  # which runs the application, so it imports these keys

__all__ = [
    "ALERTER",
    "CLEANUP_TASK",
    "CLOCK",
    "CONNECTIONS",
    "HUB",
    "INGEST_STATS",
    "LIFETIMES",
    "PROXIES",
    "SETTINGS",
    "STORE",
    "THROTTLE",
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
#: Which peers may name the client (X-Forwarded-For): for the access log and per-client limits.
PROXIES = web.AppKey("proxies", TrustedProxies)
#: Wrong tokens per client address, and who must wait before trying again.
THROTTLE = web.AppKey("throttle", Throttle)
#: The open connections and their limits, kept by the Runner's protocols.
CONNECTIONS: web.AppKey[Connections] = web.AppKey("connections")
