"""The hub: tells every WebSocket viewer what changed, coalesced, without letting one slow down.

Stores report changed task ids with :meth:`Hub.publish`. The first change after a quiet spell goes
out on the next loop iteration; changes arriving within ``interval`` after a message are merged
into the following one. Each message is serialised once and the same bytes go to every viewer
that keeps up, so its cost does not grow with the number of viewers or of stored tasks.

A viewer whose socket cannot take a message keeps one message queued; anything after that is
merged into a per-viewer set of ids (bounded by the number of tasks) and sent as one catch-up
patch, or as a snapshot when that is smaller, once the socket drains. A viewer stuck for longer
than ``viewer_timeout`` is disconnected so that it cannot hold memory; it reconnects and resyncs
from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from .task import Task

__all__ = ["Hub"]

log = logging.getLogger(__name__)

_encode = msgspec.json.encode


def _patch(tasks: Mapping[str, Task], ids: Iterable[str]) -> bytes:
    """A patch message: the current state of each id, and the ids that no longer exist."""
    changed: dict[str, Task] = {}
    removed: list[str] = []
    for task_id in ids:
        task = tasks.get(task_id)
        if task is None:
            removed.append(task_id)
        else:
            changed[task_id] = task
    return _encode({"type": "patch", "tasks": changed, "removed": removed})


class _Viewer:
    """One connected viewer and what it still has to be sent."""

    __slots__ = (
        "backlog",
        "needs_snapshot",
        "queued",
        "queued_ids",
        "sending_since",
        "socket",
        "transport",
        "wake",
    )

    def __init__(self, socket: web.WebSocketResponse, transport: asyncio.Transport | None):
        self.socket = socket
        self.transport = transport
        self.wake = asyncio.Event()
        #: A shared message waiting to go out, and the ids it covers.
        self.queued: bytes | None = None
        self.queued_ids: frozenset[str] = frozenset()
        #: Ids changed since the last message this viewer could take; None while it keeps up.
        self.backlog: set[str] | None = None
        #: Loop time when the send in progress started; None when idle.
        self.sending_since: float | None = None
        #: A snapshot is owed (a new viewer, or one that asked to resync). It is built when it
        #: is sent, so it covers every change until then and no patch has to be kept for it.
        self.needs_snapshot = False

    def want_snapshot(self) -> None:
        self.needs_snapshot = True
        self.queued, self.queued_ids, self.backlog = None, frozenset(), None
        self.wake.set()

    def offer(self, message: bytes, ids: frozenset[str]) -> None:
        """Queue a shared message, or fold it into the backlog when one is already waiting."""
        if self.needs_snapshot:
            return  # the snapshot still to come will hold this change
        if self.backlog is not None:
            self.backlog |= ids
        elif self.queued is None:
            self.queued, self.queued_ids = message, ids
            self.wake.set()
        else:
            self.backlog = set(self.queued_ids)
            self.backlog |= ids
            self.queued, self.queued_ids = None, frozenset()


class Hub:
    """Owns the viewers; knows WebSockets, not HTTP or storage."""

    def __init__(
        self, tasks: Mapping[str, Task], *, interval: float, viewer_timeout: float
    ) -> None:
        self._tasks = tasks
        self._interval = interval
        self._viewer_timeout = viewer_timeout
        self._viewers: set[_Viewer] = set()
        self._pending: set[str] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = float("-inf")
        self._version = 0
        self._snapshot: tuple[int, bytes] | None = None
        self._closing = False
        # Plain counters, read by /metrics; cheaper than touching metric objects per message.
        self.messages_sent = 0
        self.bytes_sent = 0
        self.viewers_dropped = 0

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    def publish(self, task_ids: Iterable[str]) -> None:
        """Note that these tasks changed or disappeared; viewers hear of it shortly."""
        self._version += 1
        if not self._viewers:
            return
        self._pending.update(task_ids)
        if self._flush_handle is None and self._pending:
            loop = asyncio.get_running_loop()
            delay = self._last_flush + self._interval - loop.time()
            if delay > 0:
                self._flush_handle = loop.call_later(delay, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)

    def snapshot(self) -> bytes:
        """The snapshot message, serialised at most once per version of the tasks."""
        if self._snapshot is None or self._snapshot[0] != self._version:
            message = _encode({"type": "snapshot", "tasks": self._tasks})
            self._snapshot = (self._version, message)
        return self._snapshot[1]

    def _flush(self) -> None:
        self._flush_handle = None
        self._last_flush = asyncio.get_running_loop().time()
        ids = frozenset(self._pending)
        self._pending.clear()
        if not ids or not self._viewers:
            return
        message = _patch(self._tasks, ids)
        for viewer in self._viewers:
            viewer.offer(message, ids)

    async def serve(self, socket: web.WebSocketResponse, request: web.BaseRequest) -> None:
        """Feed one prepared WebSocket until it closes: a snapshot, then patches."""
        if self._closing:
            await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            return
        transport = request.transport
        viewer = _Viewer(socket, transport if isinstance(transport, asyncio.Transport) else None)
        viewer.want_snapshot()
        self._viewers.add(viewer)
        writer = asyncio.create_task(self._write(viewer))
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT and message.data == "resync":
                    viewer.want_snapshot()
        finally:
            self._viewers.discard(viewer)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self, viewer: _Viewer) -> None:
        socket = viewer.socket
        loop = asyncio.get_running_loop()
        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            message: bytes | None
            if viewer.needs_snapshot:
                # Built and the flag cleared with no await between: every change before this
                # instant is in it, every change after it arrives as a patch.
                viewer.needs_snapshot = False
                message = self.snapshot()
            else:
                message = viewer.queued
            viewer.queued, viewer.queued_ids = None, frozenset()
            if message is None:
                if viewer.backlog is None:
                    continue
                message = self._catch_up(viewer.backlog)
                viewer.backlog = None
            # send_frame returns at once unless the socket's buffer is full; drop_stalled()
            # aborts a send that stays blocked, which ends up here as a ConnectionError.
            viewer.sending_since = loop.time()
            try:
                await socket.send_frame(message, WSMsgType.TEXT)
            except ConnectionError:
                self._abort(viewer)
                return
            finally:
                viewer.sending_since = None
            self.messages_sent += 1
            self.bytes_sent += len(message)
            if viewer.queued is not None or viewer.backlog is not None or viewer.needs_snapshot:
                viewer.wake.set()

    def _catch_up(self, ids: set[str]) -> bytes:
        """One message for a viewer that fell behind: a patch, or the snapshot if smaller."""
        if len(ids) * 2 > len(self._tasks):
            return self.snapshot()
        return _patch(self._tasks, ids)

    def drop_stalled(self) -> int:
        """Disconnect viewers whose current send has been blocked for ``viewer_timeout``.

        Called periodically by the server; returns how many were dropped.
        """
        deadline = asyncio.get_running_loop().time() - self._viewer_timeout
        stalled = [
            viewer
            for viewer in self._viewers
            if viewer.sending_since is not None and viewer.sending_since < deadline
        ]
        for viewer in stalled:
            log.warning("disconnecting a viewer that took no data for %.0f s", self._viewer_timeout)
            self._abort(viewer)
        self.viewers_dropped += len(stalled)
        return len(stalled)

    def _abort(self, viewer: _Viewer) -> None:
        self._viewers.discard(viewer)
        if viewer.transport is not None:
            viewer.transport.abort()

    async def close(self) -> None:
        """Say goodbye to every viewer with 1001 (going away); new ones are turned away."""
        self._closing = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        viewers = list(self._viewers)
        await asyncio.gather(*(self._close_one(viewer) for viewer in viewers))

    async def _close_one(self, viewer: _Viewer) -> None:
        try:
            await asyncio.wait_for(
                viewer.socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down"),
                timeout=1.0,
            )
        except (asyncio.TimeoutError, ConnectionError):
            self._abort(viewer)

    def backlogs(self) -> list[tuple[int, int]]:
        """Per viewer: bytes waiting in its socket buffer, and ids waiting in its backlog.

        What a slow viewer costs the server; exported by /metrics.
        """
        return [
            (
                viewer.transport.get_write_buffer_size() if viewer.transport else 0,
                len(viewer.backlog) if viewer.backlog is not None else 0,
            )
            for viewer in self._viewers
        ]
