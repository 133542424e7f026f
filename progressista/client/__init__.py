"""Progressista's client: tqdm bars that also stream to a Progressista server.

``RemoteTqdm`` (and ``tqdm``, ``trange``) for ordinary code; ``AsyncRemoteTqdm`` for asyncio code.
Importing this module imports tqdm and the standard library only: the asyncio client (and
aiohttp with it) loads on first use of ``AsyncRemoteTqdm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bar import RemoteTqdm, trange
from .lifecycle import flush
from .warning import ProgressistaWarning

if TYPE_CHECKING:
    from .aio import AsyncRemoteTqdm

__all__ = ["AsyncRemoteTqdm", "ProgressistaWarning", "RemoteTqdm", "flush", "tqdm", "trange"]

#: Drop-in name: ``from progressista.client import tqdm``.
tqdm = RemoteTqdm


def __getattr__(name: str) -> Any:
    if name == "AsyncRemoteTqdm":
        from .aio import AsyncRemoteTqdm

        return AsyncRemoteTqdm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
