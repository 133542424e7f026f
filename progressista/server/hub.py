"""The hub: tells every WebSocket viewer what changed, without letting one slow down the rest.

The table records which fields of which tasks changed; after each burst (at most one flush per
``interval``) the hub turns those changes into messages, frames each once, and writes the same
bytes straight to the transport of every viewer that is keeping up. So a change costs one
encoding however many viewers watch, and a thousand viewers cost a thousand writes, not a
thousand tasks waking up.

A viewer that is not keeping up (more than :data:`HIGH_WATER` bytes waiting in its socket) is
skipped, and holds nothing on the server but the revision it has seen. When its socket drains,
it catches up on what changed since (whole tasks, from the table's change order), or, if that
is more than half the board or older than the removals the table remembers, from a fresh
snapshot. A viewer that takes nothing for ``viewer_timeout`` is disconnected.

Two kinds of viewer:

- a *feed* viewer (``GET /ws``) gets every task: a snapshot in pieces, then patches;
- a *windowed* viewer (``GET /ws?limit=100&q=job%3Detl``, or a ``subscribe`` message) gets the
  counts per state and the newest ``limit`` tasks of each state matching its filter, as a
  ``view`` and then patches (see :mod:`progressista.server.view`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from . import feed
from .table import REMOVED, Changes, TaskTable
from .task import ALL_FIELDS
from .turns import next_turn
from .view import MAX_FILTER_CHARS, MAX_WINDOW, Query, Window
from .wire import DEFLATE_WINDOW_BITS, Frames

__all__ = ["HIGH_WATER", "MAX_FILTERED_WINDOWS", "Hub", "Subscription", "WindowsFull"]

log = logging.getLogger(__name__)

#: Bytes waiting in a viewer's socket beyond which it is behind: skipped until it drains.
HIGH_WATER = 256 * 1024
#: A viewer that is behind catches up once no more than this is waiting.
LOW_WATER = 64 * 1024
#: Seconds between checks on the viewers that are behind.
BEHIND_CHECK = 0.05
#: A viewer may ask for a fresh snapshot (or a new window) at most this often; more is merged.
RESYNC_INTERVAL = 1.0
#: Changed tasks a viewer catching up is sent from the change order, newest first; past this
#: (about 4 ms next to a million tasks, each id a cache miss) the board is read in slices.
CATCH_UP_WALK = 4000
#: Seconds of encoding after which a long piece of work lets the loop breathe.
SLICE = 0.005
#: Seconds a window nobody watches is kept (a page's first paint, then its viewer subscribes).
WINDOW_IDLE = 60.0
#: Most filtered windows kept at once. Each keeps its own index of the tasks it matches (up to
#: the whole board: 3,000 windows over 20k tasks took 3 GB), and anyone who may read can ask for
#: new ones (each filter and size is one). Past it the least recently used one nobody watches
#: goes; when every one is watched, a new filter is refused (503). Unfiltered windows read the
#: table's own sections and are not counted.
MAX_FILTERED_WINDOWS = 100
#: Changed ids a filtered window follows between two yields to the loop: about 1.5 ms next to
#: a million tasks, where each id is a cache miss (5,000 held the loop 8 ms in a stale storm).
FOLLOW_SLICE = 1000
#: Tasks a filtered window's build reads between two yields to the loop: about 1 ms next to a
#: million tasks for a label filter, 3 ms for words (4,096 held the loop 11 ms at 1M).
SCAN_SLICE = 1000
#: Viewers a flush writes to between two yields to the loop: each write is a system call,
#: 15-40 µs on this machine, and a flush to a thousand viewers held the loop 20-55 ms.
WRITE_SLICE = 200


class WindowsFull(Exception):
    """Every filtered window is watched, and there is no room for another."""

    @staticmethod
    def reason() -> str:
        """What the viewer is told: a 503's text, or a refused subscription's reason."""
        return (
            f"the server keeps at most {MAX_FILTERED_WINDOWS} filtered views and every one is "
            "watched; retry later, or without a filter"
        )


class Subscription(msgspec.Struct, forbid_unknown_fields=False):
    """What a windowed viewer asks for: ``{"type": "subscribe", "q": ..., "limit": ...}``."""

    type: str
    q: str = ""
    limit: int = 100


class _Viewer:
    """One connected viewer and where it stands."""

    __slots__ = (
        "behind_since",
        "deflate",
        "drained",
        "generation",
        "has_jobs",
        "last_resync",
        "owes",
        "resync_due",
        "socket",
        "starts",
        "subscription",
        "synced",
        "transport",
        "wake",
        "window",
    )

    def __init__(
        self,
        socket: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        subscription: tuple[str, int] | None,
    ) -> None:
        self.socket = socket
        self.transport = transport
        #: Its client negotiated permessage-deflate with the full window: it gets messages
        #: deflated (see :mod:`.wire`).
        self.deflate = socket.compress == DEFLATE_WINDOW_BITS
        #: (filter, limit) for a windowed viewer; None for the whole feed.
        self.subscription = subscription
        self.window: Window | None = None
        #: Feed viewers: the revision up to which it holds everything; None: it needs a snapshot.
        self.synced: int | None = None
        #: It needs a snapshot, a catch-up or a fresh view before shared messages suit it.
        self.owes = True
        self.wake = asyncio.Event()
        self.wake.set()
        self.drained = asyncio.Event()
        #: Clock time when it fell behind; None while it keeps up.
        self.behind_since: float | None = None
        self.last_resync = float("-inf")
        self.resync_due = False
        #: Bumped whenever it must start over (a resync, a replaced table): a snapshot or a
        #: catch-up under way for it then stops, and leaves its revision alone.
        self.starts = 0
        #: The table's generation its snapshot or view came from.
        self.generation = -1
        #: It may hold job runs (so an empty overview still has something to replace). True
        #: at first: a page that reconnects to a restarted server holds the runs it showed
        #: before, which the server may have forgotten; its first overview always goes.
        self.has_jobs = True

    def buffered(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def alive(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and not self.socket.closed


class Hub:
    """Owns the viewers; knows WebSockets, not HTTP or storage."""

    def __init__(
        self,
        table: TaskTable,
        *,
        interval: float,
        viewer_timeout: float,
        max_viewers: int = 10_000,
        max_snapshots: int = 4,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        #: Wall-clock seconds, as task times are (the page's "updated 4 s ago").
        self.wall_clock = wall_clock
        self._interval = interval
        self._viewer_timeout = viewer_timeout
        self.max_viewers = max_viewers
        self._clock = clock
        self._viewers: set[_Viewer] = set()
        self._windows: dict[tuple[str, int], Window] = {}
        self._behind: set[_Viewer] = set()
        self._snapshot_slots = asyncio.Semaphore(max_snapshots)
        self._flushed_rev = table.rev
        self._generation = table.generation
        #: Each job run's fields as every viewer keeping up holds them: job changes are sent
        #: as the fields that differ from these (see :func:`feed.job_changes`).
        self._jobs_told: dict[str, dict[str, Any]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._flushing = False
        #: While a flush runs without yielding: each viewer's frames so far, written at once
        #: when it yields or ends (see :meth:`_write_out`).
        self._corked: dict[_Viewer, list[bytes]] | None = None
        #: While those are written out, a slice of viewers at a time: the frames of the viewers
        #: not written yet, which anything else written to them must follow.
        self._held: dict[_Viewer, list[bytes]] | None = None
        self._again = False
        self._last_flush = float("-inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._problem: str | None = None
        self._closing = False
        # Plain counters, read by /metrics; cheaper than touching metric objects per message.
        self.messages_sent = 0
        self.bytes_sent = 0
        self.viewers_dropped = 0
        table.watch(self._changed)

    # Viewers ---------------------------------------------------------------------------------

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @property
    def deflating_count(self) -> int:
        """Viewers that get messages deflated (their client offered permessage-deflate)."""
        return sum(1 for viewer in self._viewers if viewer.deflate)

    @property
    def full(self) -> bool:
        """No room for another viewer (``max_viewers``)."""
        return len(self._viewers) >= self.max_viewers

    async def serve(
        self,
        socket: web.WebSocketResponse,
        request: web.BaseRequest,
        subscription: tuple[str, int] | None = None,
    ) -> None:
        """Feed one prepared WebSocket until it closes.

        ``subscription`` (filter, limit) makes it a windowed viewer from the start.
        """
        if self._closing:
            await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
            return
        # Not checked with isinstance: uvloop's transports (aiohttp's GunicornUVLoopWebWorker)
        # are not asyncio.Transport subclasses, and a viewer without one is never written to.
        viewer = _Viewer(socket, request.transport, subscription)
        self._viewers.add(viewer)
        if self._problem is not None:
            self._write(viewer, Frames.of(feed.status(self._problem)))
        writer = asyncio.create_task(self._serve_owed(viewer))
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    self._on_message(viewer, message.data)
        finally:
            self._forget(viewer)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _on_message(self, viewer: _Viewer, text: str) -> None:
        """A viewer asked for something: a fresh snapshot, or another window."""
        if text == "resync":
            self._resync(viewer)
            return
        try:
            request = msgspec.json.decode(text, type=Subscription)
        except msgspec.DecodeError:
            log.debug("ignoring a viewer message that is not a request: %.80r", text)
            return
        if request.type == "resync":
            self._resync(viewer)
        elif request.type == "subscribe":
            limit = min(max(request.limit, 0), MAX_WINDOW)
            try:
                query = Query(request.q)
            except ValueError as error:
                self._refuse(viewer, request.q, str(error))
                return
            if not self.make_room_for(query.text, limit):
                self._refuse(viewer, query.text, WindowsFull.reason())
                return
            viewer.subscription = (query.text, limit)
            self._resync(viewer)

    def _refuse(self, viewer: _Viewer, query: str, reason: str) -> None:
        """Tell the viewer its subscription was not followed, and why; its window stays."""
        log.debug("refusing a viewer's subscription: %s", reason)
        self._write(viewer, Frames.of(feed.refused(query[:MAX_FILTER_CHARS], reason)))

    def _resync(self, viewer: _Viewer) -> None:
        """Start the viewer afresh, at most once per RESYNC_INTERVAL; more requests merge."""
        wait = viewer.last_resync + RESYNC_INTERVAL - self._clock()
        if wait > 0:
            if not viewer.resync_due:
                viewer.resync_due = True
                asyncio.get_running_loop().call_later(wait, self._resync_now, viewer)
            return
        self._resync_now(viewer)

    def _resync_now(self, viewer: _Viewer) -> None:
        viewer.resync_due = False
        viewer.last_resync = self._clock()
        self._leave_window(viewer)
        self._owe_fresh_start(viewer)

    @staticmethod
    def _owe_fresh_start(viewer: _Viewer) -> None:
        """It needs a fresh snapshot or view; a snapshot or catch-up under way for it stops
        taking its revision for the viewer's (see ``starts``)."""
        viewer.synced = None
        viewer.starts += 1
        viewer.owes = True
        viewer.wake.set()

    def _forget(self, viewer: _Viewer) -> None:
        self._viewers.discard(viewer)
        self._behind.discard(viewer)
        self._leave_window(viewer)

    def _leave_window(self, viewer: _Viewer) -> None:
        window, viewer.window = viewer.window, None
        if window is not None:
            window.last_used = self._clock()

    def _drop_idle_windows(self) -> None:
        """Forget windows nobody has watched for WINDOW_IDLE: each costs work at every flush."""
        watched = {viewer.window for viewer in self._viewers}
        idle = self._clock() - WINDOW_IDLE
        for key, window in list(self._windows.items()):
            if window not in watched and window.last_used < idle:
                del self._windows[key]

    async def _serve_owed(self, viewer: _Viewer) -> None:
        """The viewer's own work: snapshots, catch-ups and fresh views, paced by its socket."""
        try:
            while True:
                await viewer.wake.wait()
                viewer.wake.clear()
                while viewer.owes:
                    if not await self._until_drained(viewer):
                        return
                    if viewer.subscription is not None:
                        await self._send_view(viewer)
                    elif viewer.synced is None:
                        await self._send_snapshot(viewer)
                    else:
                        await self._catch_up(viewer)
        except ConnectionError:
            self._abort(viewer)

    async def _send_view(self, viewer: _Viewer) -> None:
        """A windowed viewer's whole view; its window is shared, and built on first use."""
        assert viewer.subscription is not None
        if viewer.window is None:
            viewer.window = self._window(*viewer.subscription)
        window = viewer.window
        await window.ready.wait()
        if viewer.window is not window or not viewer.owes:
            return  # it asked for something else meanwhile
        viewer.owes = False
        viewer.generation = window.generation
        view = feed.view(self.table, window.shown, window.counts, self.wall_clock())
        self._write(viewer, Frames.of(view))
        self._send_jobs_overview(viewer)

    def make_room_for(self, text: str, limit: int) -> bool:
        """Whether the window for this filter and size exists or may be made: past
        MAX_FILTERED_WINDOWS, the least recently used window nobody watches goes to make room."""
        if not text or (text, limit) in self._windows:
            return True
        filtered = [(w.last_used, key) for key, w in self._windows.items() if key[0]]
        if len(filtered) < MAX_FILTERED_WINDOWS:
            return True
        watched = {viewer.window for viewer in self._viewers}
        for _, key in sorted(filtered):  # the least recently used first
            if self._windows[key] not in watched:
                del self._windows[key]
                return True
        return False

    async def window(self, text: str, limit: int) -> Window:
        """The window for this filter and size, once it holds every matching task (the page's
        first paint shares it with the viewers that then subscribe to the same); WindowsFull
        when there is no room for it."""
        if not self.make_room_for(text, limit):
            raise WindowsFull(MAX_FILTERED_WINDOWS)
        window = self._window(text, limit)
        await window.ready.wait()
        return window

    def _window(self, text: str, limit: int) -> Window:
        window = self._windows.get((text, limit))
        if window is None or window.generation != self.table.generation:
            window = Window(self.table, Query(text), limit)
            self._windows[window.key] = window
            self._spawn(self._build(window))
        window.last_used = self._clock()
        return window

    async def _build(self, window: Window) -> None:
        """Fill a filtered window by one scan of the board, in slices; changes meanwhile reach
        it through the flushes, which follow every window as soon as it exists."""
        if not window.query.everything:
            ids = self.table.order.cursor()
            while not ids.done:
                window.scan(ids.take(SCAN_SLICE))
                await next_turn()
            window.finish()
        window.shown = window.newest()
        window.counts = window.current_counts()
        window.ready.set()

    async def _send_snapshot(self, viewer: _Viewer) -> None:
        """Every task, in pieces, each written when the viewer's socket has room.

        A slot (``max_snapshots``) is held only while a piece is encoded, never while waiting
        for a slow viewer's socket: a hundred viewers that never read cannot keep a new one
        from its snapshot.
        """
        table = self.table
        base = table.rev
        viewer.generation = table.generation
        starts = viewer.starts
        size = feed.TASKS_PER_MESSAGE
        pieces = table.order.cursor()
        more = True
        while more:
            if not await self._until_drained(viewer):
                return
            async with self._snapshot_slots:
                if viewer.generation != table.generation:
                    return  # the table was replaced meanwhile: a new snapshot is owed
                ids = pieces.take(size)
                more = not pieces.done
                tasks = {
                    task_id: task
                    for task_id in ids
                    if (task := table.tasks.get(task_id)) is not None
                }
                self._write(viewer, Frames.of(feed.snapshot(tasks, more)))
            if more:  # (after the last, the viewer counts as synced at once: the next flush
                await next_turn()  # patches it, rather than owing it a catch-up)
        if viewer.starts == starts:
            viewer.synced = base  # then catch up on what changed while the pieces went out
        # else it asked to start over meanwhile: this snapshot ends (a viewer knows a board is
        # whole at a last piece), and a fresh one follows.

    async def _catch_up(self, viewer: _Viewer) -> None:
        """Whole tasks for what changed since the viewer's revision (a fresh snapshot when
        removals that old are forgotten)."""
        assert viewer.synced is not None
        table = self.table
        start, starts = table.rev, viewer.starts
        removed = table.removed_since(viewer.synced)
        if removed is None:
            viewer.synced = None
            return
        changed = (
            table.changed_since(viewer.synced, CATCH_UP_WALK)
            if len(removed) <= CATCH_UP_WALK
            else None
        )
        if changed is None:
            await self._catch_up_by_scan(viewer, removed)
            return
        paused = False
        began = time.perf_counter()
        for messages in feed.whole(table, reversed(changed), removed):
            if viewer.buffered() > HIGH_WATER:
                paused = True
                if not await self._until_drained(viewer):
                    return
            elif time.perf_counter() - began > SLICE:
                paused = True
                await next_turn()
                began = time.perf_counter()
            if viewer.starts != starts:
                return  # it starts over: a snapshot is owed
            self._write(viewer, Frames(messages))
        if paused:
            viewer.synced = start  # changes during the pauses: another round
        else:
            viewer.synced = table.rev
            viewer.owes = False
            self._send_jobs_overview(viewer)

    async def _catch_up_by_scan(self, viewer: _Viewer, removed: list[str]) -> None:
        """More changed than the change order can be walked for at once (a stale storm, a big
        clear): the removals first, then the board read in the order tasks were stored, a
        slice at a time each, as a snapshot is, sending only what changed since the viewer's
        revision (a removed id stored again since goes whole).

        What changes meanwhile is caught by the next round, from the revision the scan began.
        """
        assert viewer.synced is not None
        table = self.table
        since, start, starts = viewer.synced, table.rev, viewer.starts
        generation = table.generation
        tasks = table.tasks
        ids = table.order.cursor()
        gone = 0  # removals sent so far
        while True:
            if not await self._until_drained(viewer):
                return
            async with self._snapshot_slots:
                if viewer.starts != starts or table.generation != generation:
                    return  # it starts over (a resync, a replaced table): a snapshot is owed
                if gone < len(removed):
                    changes = dict.fromkeys(removed[gone : gone + SCAN_SLICE], REMOVED)
                    gone += SCAN_SLICE
                else:
                    changes = {}
                    for task_id in ids.take(SCAN_SLICE):
                        task = tasks.get(task_id)
                        if task is not None and task.rev > since:
                            changes[task_id] = ALL_FIELDS
                for messages in feed.patches(table, changes):
                    self._write(viewer, Frames(messages))
                if gone >= len(removed) and ids.done:
                    break
            await next_turn()
        viewer.synced = start

    async def _until_drained(self, viewer: _Viewer) -> bool:
        """Wait until the viewer's socket has room; False when the viewer is gone."""
        while viewer.buffered() > LOW_WATER:
            if not viewer.alive():
                return False
            self._fell_behind(viewer)
            viewer.drained.clear()
            await viewer.drained.wait()
        return viewer.alive()

    def _fell_behind(self, viewer: _Viewer) -> None:
        if viewer.behind_since is None:
            viewer.behind_since = self._clock()
        if not self._behind:
            self._spawn(self._watch_behind())
        self._behind.add(viewer)

    async def _watch_behind(self) -> None:
        """While viewers are behind: wake those that drained, drop those stuck too long."""
        while self._behind:
            await asyncio.sleep(BEHIND_CHECK)
            self.drop_stalled()
            for viewer in list(self._behind):
                if viewer.buffered() <= LOW_WATER or not viewer.alive():
                    self._behind.discard(viewer)
                    viewer.behind_since = None
                    viewer.drained.set()

    def drop_stalled(self) -> int:
        """Disconnect viewers that have taken no data for ``viewer_timeout``; how many."""
        deadline = self._clock() - self._viewer_timeout
        stalled = [
            viewer
            for viewer in self._behind
            if viewer.behind_since is not None and viewer.behind_since < deadline
        ]
        for viewer in stalled:
            log.warning("disconnecting a viewer that took no data for %.0f s", self._viewer_timeout)
            self._abort(viewer)
        self.viewers_dropped += len(stalled)
        return len(stalled)

    def _abort(self, viewer: _Viewer) -> None:
        self._forget(viewer)
        viewer.drained.set()
        if viewer.transport is not None:
            viewer.transport.abort()

    def _write(self, viewer: _Viewer, frames: Frames) -> bool:
        if not viewer.alive():
            return False
        assert viewer.transport is not None
        data = frames.deflated() if viewer.deflate else frames.plain()
        corked = self._corked
        if corked is not None:
            pending = corked.get(viewer)
            if pending is None:
                corked[viewer] = [data]
            else:
                pending.append(data)
        elif self._held and viewer in self._held:
            self._held[viewer].append(data)
        else:
            viewer.transport.write(data)
        self.messages_sent += frames.messages
        self.bytes_sent += len(data)
        return True

    def _deliver(self, viewers: Iterable[_Viewer], frames: Frames) -> list[_Viewer]:
        """Write a shared frame to each viewer with room; those without fall behind."""
        took = []
        for viewer in viewers:
            if viewer.owes:
                continue
            if viewer.buffered() > HIGH_WATER:
                viewer.owes = True
                self._fell_behind(viewer)
                viewer.wake.set()
            elif self._write(viewer, frames):
                took.append(viewer)
        return took

    # Changes ---------------------------------------------------------------------------------

    def _changed(self) -> None:
        """The table committed changes: flush within ``interval`` (at once after a quiet spell)."""
        if self._flushing:
            self._again = True
            return
        if self._flush_handle is not None or self._closing:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_flush + self._interval - loop.time()
        self._flush_handle = (
            loop.call_later(delay, self._start_flush)
            if delay > 0
            else loop.call_soon(self._start_flush)
        )

    def _start_flush(self) -> None:
        self._flush_handle = None
        self._flushing = True
        self._spawn(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._last_flush = loop.time()
                if self.table.generation != self._generation:
                    self._start_over()
                base, rev = self._flushed_rev, self.table.rev
                changes = self.table.take_changes()
                self._corked = {}
                try:
                    if changes and (self._viewers or self._windows):
                        await self._send_changes(changes, base)
                    if self._viewers:
                        job_changes, jobs_dropped = self.table.jobs.take_changes()
                        if job_changes or jobs_dropped:
                            self._send_jobs(job_changes, jobs_dropped)
                    else:  # unread, the job sums wait (see JobIndex); a viewer arriving gets
                        self.table.jobs.forget_changes()  # every job afresh
                        self._jobs_told.clear()  # and nobody holds a run (nor is told of drops)
                finally:
                    await self._write_out()
                self._flushed_rev = rev
                if not self._again or self._closing:
                    return
                self._again = False
                await asyncio.sleep(max(0.0, self._last_flush + self._interval - loop.time()))
        except Exception:
            # A bug here must not leave every viewer without news for good (the next flush
            # would likely fail alike): say so, and have each start over from a fresh view.
            log.exception("sending changes to viewers failed; every viewer starts over")
            self._windows.clear()
            self._flushed_rev = self.table.rev
            for viewer in list(self._viewers):
                self._resync_now(viewer)
        finally:
            self._flushing = False

    async def _next_flush_turn(self) -> None:
        """Between two slices of a flush: write what it has for each viewer, then wait for the
        next turn."""
        await self._write_out()
        await next_turn()
        self._corked = {}

    async def _write_out(self) -> None:
        """Write each viewer's frames of the flush so far in one call: a small flush's patch
        and its job changes are one system call per viewer, not two. WRITE_SLICE viewers a
        turn; meanwhile what else is written to a viewer still waiting goes after its frames.
        """
        corked, self._corked = self._corked, None
        if not corked:
            return
        viewers = list(corked)
        self._held = corked
        try:
            for start in range(0, len(viewers), WRITE_SLICE):
                if start:
                    await next_turn()
                for viewer in viewers[start : start + WRITE_SLICE]:
                    self._write_held(viewer, corked.pop(viewer))
        finally:
            self._held = None
            for viewer, pieces in corked.items():  # cancelled (shutting down): the rest now
                self._write_held(viewer, pieces)

    @staticmethod
    def _write_held(viewer: _Viewer, pieces: list[bytes]) -> None:
        if viewer.alive():
            assert viewer.transport is not None
            viewer.transport.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _send_jobs(self, changed: set[str], dropped: set[str]) -> None:
        """Job runs that changed, to every viewer keeping up (those behind get all of them
        with their catch-up)."""
        listed = [job for key in changed if (job := self.table.jobs.get(key)) is not None]
        message = feed.job_changes(listed, dropped, self._jobs_told)
        if message is not None:
            for viewer in self._deliver(list(self._viewers), Frames.of(message)):
                viewer.has_jobs = True

    def _send_jobs_overview(self, viewer: _Viewer) -> None:
        """Every job run to show, replacing what the viewer holds (nothing to a viewer known
        to hold none that would get none)."""
        listed = self.table.jobs.overview(feed.RECENT_JOBS)
        if listed or viewer.has_jobs:
            viewer.has_jobs = bool(listed)
            self._write(viewer, Frames.of(feed.jobs(listed)))
        feed.keep_told_alike(self._jobs_told, listed)  # even none: the viewer holds none

    def _start_over(self) -> None:
        """The table replaced every task (its revisions started over): so does every viewer
        that holds tasks from before."""
        generation = self._generation = self.table.generation
        self._flushed_rev = self.table.rev
        self.table.take_changes()
        self._windows = {key: w for key, w in self._windows.items() if w.generation == generation}
        for viewer in self._viewers:
            if viewer.generation != generation:
                viewer.window = None
                self._owe_fresh_start(viewer)

    async def _send_changes(self, changes: Changes, base: int) -> None:
        rev = self.table.rev
        readers = [
            viewer
            for viewer in self._viewers
            if viewer.subscription is None
            and not viewer.owes
            and viewer.synced is not None
            and viewer.synced >= base
        ]
        reading = set(readers)
        others = [v for v in self._viewers if v.subscription is None and v not in reading]
        for viewer in others:
            if not viewer.owes:  # it missed this patch: catch up from its revision
                viewer.owes = True
                viewer.wake.set()
        if readers:
            for index, messages in enumerate(feed.patches(self.table, changes)):
                if index:
                    await self._next_flush_turn()
                readers = self._deliver(readers, Frames(messages))
            if len(changes) > FOLLOW_SLICE:  # the windows' work is long too
                await self._next_flush_turn()
            for viewer in readers:
                if not viewer.owes:  # (one that asked to start over meanwhile owes it still)
                    viewer.synced = max(viewer.synced or 0, rev)
        self._drop_idle_windows()
        for window in list(self._windows.values()):
            # In slices: a stale storm or a big clear changes 100k tasks in one flush. Read
            # from the dict (nothing changes it: the table took a new one), not from a list of
            # its ids, which every garbage collection meanwhile would walk (the dict of strings
            # and numbers it does not track): 100k ids, a few ms a collection.
            for index, chunk in enumerate(feed.chunks(changes, FOLLOW_SLICE)):
                if index:
                    await self._next_flush_turn()
                window.follow(chunk)
            if not window.ready.is_set():
                continue  # its viewers wait for the build, which reads the table as it is
            shown, counts = window.newest(), window.current_counts()
            patch = feed.view_patch(self.table, window.shown, shown, window.counts, counts, changes)
            window.shown, window.counts = shown, counts
            if patch is not None:
                viewers = [v for v in self._viewers if v.window is window]
                self._deliver(viewers, Frames.of(patch))

    # Store health ----------------------------------------------------------------------------

    def set_problem(self, problem: str | None) -> None:
        """Tell every viewer whether the store can take progress (None: it can again)."""
        if problem == self._problem:
            return
        self._problem = problem
        frames = Frames.of(feed.status(problem))
        for viewer in list(self._viewers):
            self._write(viewer, frames)

    # Life cycle ------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Say goodbye to every viewer with 1001 (going away); new ones are turned away."""
        self._closing = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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

    def backlogs(self) -> tuple[int, int]:
        """Bytes waiting in viewers' sockets, and how many viewers are behind (for /metrics)."""
        return sum(viewer.buffered() for viewer in self._viewers), len(self._behind)

    @property
    def window_count(self) -> int:
        return len(self._windows)
