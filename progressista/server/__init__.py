"""The Progressista server: one aiohttp Application for ingest, task API, WebSocket and cleanup.

Run it with ``python -m progressista.server``; embed it with :func:`create_app`, served by
:class:`Runner` (an ``AppRunner`` that applies the connection limits).
"""

from __future__ import annotations

from ..settings import ServerSettings
from .app import create_app
from .connections import Runner

__all__ = ["Runner", "ServerSettings", "create_app"]
