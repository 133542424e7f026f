"""The Progressista server: one aiohttp Application for ingest, task API, WebSocket and cleanup.

Run it with ``python -m progressista.server``; embed it with :func:`create_app`.
"""

from __future__ import annotations

from ..settings import ServerSettings
from .app import create_app

__all__ = ["ServerSettings", "create_app"]
