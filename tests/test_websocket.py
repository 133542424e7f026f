"""GET /ws: snapshots in pieces, partial patches, windows, slow viewers, origins and shutdown."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType

from progressista.server import feed, turns
from progressista.server import hub as hub_module
from progressista.server.cleanup import run_cleanup
from progressista.server.event import Event, decode_events
from progressista.server.hub import HIGH_WATER, Hub
from progressista.server.keys import HUB, LIFETIMES, STORE
from progressista.server.store import MemoryStore
from progressista.server.view import MAX_FILTER_CHARS

from .conftest import (
    Client,
    FakeClock,
    MakeClient,
    event,
    eventually,
    largest_tracked_holding,
    post,
    stored,
)
from .feed_model import Board, held, sent, without_unshown


async def receive(
    viewer: aiohttp.ClientWebSocketResponse, timeout: float = 10.0, *, jobs: bool = False
) -> Any:
    """The next message; "jobs" messages are skipped unless ``jobs``."""
    while True:
        message = await viewer.receive(timeout=timeout)
        assert message.type == WSMsgType.TEXT, message
        decoded = msgspec.json.decode(message.data)
        if jobs or decoded["type"] != "jobs":
            return decoded


async def follow_until(
    viewer: aiohttp.ClientWebSocketResponse, board: Board, done: Any, timeout: float = 10.0
) -> None:
    """Apply messages to ``board`` until ``done(board)`` holds."""
    while not done(board):
        board.apply(await receive(viewer, timeout))


async def keeping_up(hub: Hub) -> None:
    """Wait until every viewer is sent all it is owed (its snapshot's catch-up included)."""
    await eventually(lambda: not any(viewer.owes for viewer in hub._viewers))


async def test_a_viewer_gets_a_snapshot_then_patches_of_what_changed(
    client: Client, clock: FakeClock
) -> None:
    await post(client, [event("a", n=1, total=10), event("b", status="close")])
    async with client.ws_connect("/ws") as viewer:
        snapshot = await receive(viewer)
        assert snapshot == {"type": "snapshot", "tasks": sent(stored(client.app)), "more": False}
        clock.advance(2)
        await post(client, event("a", n=2))
        # Only what the event changed, and what the server derives from it but percent (the
        # viewer's to derive from n and total); updated_at is the message's "at", given once.
        assert await receive(viewer) == {
            "type": "patch",
            "tasks": {"a": {"n": 2, "rate": 0.5, "eta": 16.0}},
            "removed": [],
            "at": clock.now,
        }


async def test_a_new_task_arrives_whole(client: Client) -> None:
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await post(client, event("new", n=3, desc="Loading"))
        patch = await receive(viewer)
        # Whole, to replace anything held under its id, and without the fields at their
        # defaults: the viewer puts them back.
        assert (patch["tasks"], patch["replace"]) == ({}, {"new": sent(stored(client.app))["new"]})
        assert "unit" not in patch["replace"]["new"]
        board = Board()
        board.apply({"type": "snapshot", "tasks": {}, "more": False})
        board.apply(patch)
        assert board.shown() == without_unshown(stored(client.app))


async def test_an_idle_viewer_hears_at_once_and_a_burst_is_merged(
    make_client: MakeClient,
) -> None:
    client = await make_client(broadcast_interval=1.0)
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await post(client, event("first"))
        # The first change after a quiet spell is not held back for the interval.
        first = await receive(viewer, timeout=0.9)
        assert list(first["replace"]) == ["first"]
        await post(client, event("second", n=1))
        await post(client, event("third"))
        await post(client, event("second", n=2))
        merged = await receive(viewer)
        assert sorted(merged["replace"]) == ["second", "third"]
        assert merged["replace"]["second"]["n"] == 2


async def test_deletions_are_patches_with_removed_ids(client: Client) -> None:
    await post(client, [event("a"), event("b", status="close"), event("c", status="close")])
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await client.delete("/tasks/a")
        assert await receive(viewer) == {"type": "patch", "tasks": {}, "removed": ["a"]}
        await client.delete("/tasks?state=completed")
        patch = await receive(viewer)
        assert (patch["tasks"], sorted(patch["removed"])) == ({}, ["b", "c"])


async def test_every_cleanup_transition_reaches_viewers(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(stale_after=10, abandon_after=100, retention=50)
    app = client.app
    await post(client, [event("quiet"), event("done", status="close")])

    async def cleanup_after(seconds: float) -> None:
        clock.advance(seconds)
        await run_cleanup(app[STORE], app[LIFETIMES], clock())

    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await cleanup_after(11)
        # Going stale does not change updated_at: the message's "at" is the task's own.
        assert await receive(viewer) == {
            "type": "patch",
            "tasks": {"quiet": {"state": "stale"}},
            "removed": [],
            "at": clock.now - 11,
        }
        await post(client, event("quiet", n=1))
        assert (await receive(viewer))["tasks"]["quiet"]["state"] == "active"
        await cleanup_after(40)  # done closed 51 s ago, quiet silent for 40 s
        patch = await receive(viewer)
        assert patch["removed"] == ["done"]
        assert patch["tasks"]["quiet"]["state"] == "stale"
        await cleanup_after(71)  # quiet silent 111 s > stale_after + abandon_after
        assert await receive(viewer) == {"type": "patch", "tasks": {}, "removed": ["quiet"]}


async def test_a_big_board_arrives_in_pieces_and_the_viewer_ends_with_every_task(
    client: Client,
) -> None:
    count = feed.TASKS_PER_MESSAGE * 2 + 7
    for start in range(0, count, 1000):
        await post(client, [event(f"t{i}", n=i) for i in range(start, min(start + 1000, count))])
    async with client.ws_connect("/ws") as viewer:
        pieces: list[dict[str, Any]] = []
        board = Board()
        while not pieces or pieces[-1]["more"]:
            pieces.append(await receive(viewer))
            board.apply(pieces[-1])
        size = feed.TASKS_PER_MESSAGE
        assert [len(piece["tasks"]) for piece in pieces] == [size, size, 7]
        assert board.tasks == held(stored(client.app))


async def test_changes_while_a_snapshot_goes_out_are_not_lost(client: Client) -> None:
    count = feed.TASKS_PER_MESSAGE * 3
    for start in range(0, count, 1000):
        await post(client, [event(f"t{i}", n=0) for i in range(start, start + 1000)])
    async with client.ws_connect("/ws") as viewer:
        board = Board()
        board.apply(await receive(viewer))  # the first piece: the rest is still to come
        # Change tasks already sent, tasks not sent yet, remove one of each, add a new one.
        await post(client, [event("t0", n=5), event(f"t{count - 1}", n=5), event("late")])
        await client.delete("/tasks/t1")
        await client.delete(f"/tasks/t{count - 2}")
        expected = without_unshown(stored(client.app))
        await follow_until(viewer, board, lambda b: b.shown() == expected)


async def test_resync_sends_a_fresh_snapshot_and_a_storm_of_them_is_merged(
    client: Client,
) -> None:
    await post(client, event("a"))
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await viewer.send_str("resync")
        assert (await receive(viewer))["type"] == "snapshot"
        for _ in range(50):
            await viewer.send_str('{"type": "resync"}')
        await post(client, event("marker"))
        # The storm costs no snapshot now (the hub clock has not moved): the next message is
        # the change, not fifty snapshots ahead of it.
        assert list((await receive(viewer))["replace"]) == ["marker"]


async def test_a_resync_read_while_a_patch_goes_out_still_gets_a_snapshot(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush marked every viewer that took its last piece as holding its revision, over a
    resync read meanwhile: a viewer with unsent bytes (not yet back to read what it owes) was
    then caught up with nothing instead of the snapshot it asked for."""
    hub = client.app[HUB]
    await post(client, [event(f"t{i}", n=1) for i in range(5)])
    async with client.ws_connect("/ws") as viewer:
        assert (await receive(viewer))["type"] == "snapshot"
        await keeping_up(hub)
        (held,) = hub._viewers
        unsent = {"bytes": 0}
        buffered = hub_module._Viewer.buffered
        monkeypatch.setattr(
            hub_module._Viewer, "buffered", lambda v: unsent["bytes"] or buffered(v)
        )
        turn = turns.next_turn
        resync = ['{"type": "resync"}']

        def turn_with_a_resync_read() -> asyncio.Future[None]:
            if resync:  # read while the flush waits for its turn after its piece
                hub._on_message(held, resync.pop())
            return turn()

        monkeypatch.setattr(hub_module, "next_turn", turn_with_a_resync_read)
        # A flush of more changes than a window follows at once takes a turn after its piece.
        monkeypatch.setattr(hub_module, "FOLLOW_SLICE", 1)
        unsent["bytes"] = HIGH_WATER // 2  # a reader still, but its writer waits for room
        await post(client, [event("t0", n=2), event("t1", n=2)])
        assert (await receive(viewer))["type"] == "patch"
        await eventually(lambda: not resync)
        unsent["bytes"] = 0  # it drains (the hub looks every BEHIND_CHECK)
        assert (await receive(viewer))["type"] == "snapshot"


async def test_windows_follow_a_big_flush_without_a_collected_list_of_its_ids(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of every changed id, alive across the follow's turns, was walked by each garbage
    collection meanwhile (100k ids in a stale storm)."""
    client = await make_client(max_batch=5000, max_body=8 * 1024 * 1024)
    monkeypatch.setattr(hub_module, "FOLLOW_SLICE", 100)
    seen: list[int] = []
    turn = turns.next_turn

    def watched_turn() -> asyncio.Future[None]:
        seen.append(largest_tracked_holding("t0"))
        return turn()

    async with client.ws_connect("/ws?limit=5") as viewer:
        assert (await receive(viewer))["type"] == "view"
        monkeypatch.setattr(hub_module, "next_turn", watched_turn)
        await post(client, [event(f"t{i}", n=1) for i in range(2000)])
        assert (await receive(viewer))["type"] == "patch"
    assert len(seen) >= 19 and max(seen) < 1000, seen


class CountingTransport:
    """A viewer's transport that keeps what each write was given, and passes it on."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_flush_writes_its_patch_and_its_job_changes_to_a_viewer_at_once(
    client: Client,
) -> None:
    """With a thousand viewers the server's CPU went to its writes, one system call each, and
    a flush that changed a job wrote every viewer twice."""
    hub = client.app[HUB]
    await post(client, event("a", n=1, total=10, meta={"job": "etl"}))
    async with client.ws_connect("/ws") as viewer:
        assert (await receive(viewer))["type"] == "snapshot"
        await keeping_up(hub)
        (held,) = hub._viewers
        assert held.transport is not None
        counting = CountingTransport(held.transport)
        held.transport = counting  # type: ignore[assignment]  # duck-typed, as uvloop's are
        await post(client, event("a", n=5, meta={"job": "etl"}))
        got = {(await receive(viewer, jobs=True))["type"] for _ in range(2)}
        assert got == {"patch", "jobs"}
        assert len(counting.writes) == 1, counting.writes


async def test_a_flush_to_many_viewers_takes_turns_and_keeps_each_viewers_order(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush to a thousand viewers held the loop 20-55 ms in one go. Written a slice of
    viewers a turn, what else reaches a viewer still waiting (here a store problem, told to
    everyone at the first turn) must not overtake the flush's frames."""
    hub = client.app[HUB]
    monkeypatch.setattr(hub_module, "WRITE_SLICE", 1)
    await post(client, event("a", n=1))
    viewers = [await client.ws_connect("/ws") for _ in range(3)]
    for viewer in viewers:
        assert (await receive(viewer))["type"] == "snapshot"
    await keeping_up(hub)
    turn = turns.next_turn
    turns_taken: list[bool] = []

    def turn_telling_a_problem() -> asyncio.Future[None]:
        if not turns_taken:
            hub.set_problem("Redis is unreachable")
        turns_taken.append(True)
        return turn()

    monkeypatch.setattr(hub_module, "next_turn", turn_telling_a_problem)
    await post(client, event("a", n=2))
    for viewer in viewers:
        assert [(await receive(viewer))["type"] for _ in range(2)] == ["patch", "status"]
        await viewer.close()
    assert len(turns_taken) >= 2  # a viewer a turn: three slices


async def test_viewers_are_forgotten_when_they_leave(client: Client) -> None:
    hub = client.app[HUB]
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        assert hub.viewer_count == 1
    await eventually(lambda: hub.viewer_count == 0)


async def test_past_max_viewers_the_socket_is_refused_with_503(make_client: MakeClient) -> None:
    client = await make_client(max_viewers=1)
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        response = await client.get("/ws")
        assert response.status == 503
        assert response.headers["Retry-After"] == "10"
        assert (await response.json())["error"] == (
            "the server has its maximum of 1 viewers; retry later or raise --max-viewers"
        )


async def test_foreign_origins_are_refused(make_client: MakeClient) -> None:
    client = await make_client(allowed_origins=("https://ops.example",))
    own = f"http://{client.host}:{client.port}"
    for origin, allowed in [
        (own, True),
        ("https://ops.example", True),
        ("https://evil.example", False),
    ]:
        response = await client.get(
            "/ws",
            headers={
                "Origin": origin,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert (response.status == 101) == allowed, origin
        if not allowed:
            assert response.status == 403
            assert (await response.json())["error"] == (
                "origin 'https://evil.example' may not open this WebSocket; "
                "add it with --allowed-origins"
            )
        response.close()


async def test_the_websocket_needs_the_read_token(make_client: MakeClient) -> None:
    client = await make_client(read_token="r34d")
    response = await client.get("/ws")
    assert response.status == 401
    async with client.ws_connect("/ws", headers={"Authorization": "Bearer r34d"}) as viewer:
        assert (await receive(viewer))["type"] == "snapshot"


async def test_shutdown_closes_viewers_with_1001(client: Client) -> None:
    viewer = await client.ws_connect("/ws")
    assert (await receive(viewer))["type"] == "snapshot"
    assert (await receive(viewer, jobs=True))["type"] == "jobs"
    closing = asyncio.create_task(client.server.close())
    message = await viewer.receive(timeout=5)
    assert message.type == WSMsgType.CLOSE
    assert message.data == 1001
    await viewer.close()
    await asyncio.wait_for(closing, 5)


async def raw_viewer(
    client: Client,
    path: str = "/ws",
    *,
    extensions: str | None = None,
    receive_buffer: int | None = None,
) -> tuple[socket.socket, bytes]:
    """A WebSocket client on a bare socket, once the server accepted the upgrade: the socket
    and the response's head. ``extensions`` is offered (``permessage-deflate``)."""
    raw = socket.socket()
    if receive_buffer is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(raw, (client.host, client.port))
    offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    await loop.sock_sendall(
        raw,
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(raw, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return raw, head


async def _stalled_viewer(client: Client, path: str = "/ws") -> socket.socket:
    """A WebSocket client that completes the handshake and then reads nothing more."""
    raw, _ = await raw_viewer(client, path, receive_buffer=4096)
    return raw


async def test_a_stalled_viewer_neither_slows_others_nor_holds_memory_and_is_dropped(
    make_client: MakeClient, hub_clock: FakeClock
) -> None:
    client = await make_client(viewer_timeout=10)
    hub = client.app[HUB]
    fat = "x" * 900  # a new description each round: about 300 KB of patch per round
    stalled = await _stalled_viewer(client)
    async with client.ws_connect("/ws", max_msg_size=0) as healthy:
        board = Board()
        board.apply(await receive(healthy))
        for round_ in range(1, 41):
            await post(
                client, [event(f"t{i}", n=round_, desc=f"{round_}{fat}") for i in range(300)]
            )
            await follow_until(
                healthy, board, lambda b, r=round_: {t["n"] for t in b.tasks.values()} == {r}
            )
        # 40 rounds of ~300 KB went its way: the server holds for it only what its socket
        # buffer held when it fell behind (one message past HIGH_WATER at most), and no list
        # of what it missed.
        buffered, behind = hub.backlogs()
        assert behind == 1
        assert buffered <= HIGH_WATER + 2 * 300 * 1000
        # Stuck for longer than viewer_timeout (the hub's clock, moved by the test): dropped.
        hub_clock.advance(11)
        assert hub.drop_stalled() == 1
        assert hub.viewer_count == 1
        await post(client, event("t1", n=99))
        await follow_until(healthy, board, lambda b: b.tasks["t1"]["n"] == 99)
    stalled.close()


@pytest.mark.parametrize("walk", [4000, 10], ids=["from the change order", "by reading the board"])
async def test_a_slow_viewer_that_reads_again_catches_up_with_every_change(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, walk: int
) -> None:
    """What it missed comes as patches of whole tasks: found in the change order, or past
    ``CATCH_UP_WALK`` changes by reading the board in slices; never a second snapshot."""
    monkeypatch.setattr(hub_module, "CATCH_UP_WALK", walk)
    client = await make_client()
    hub = client.app[HUB]
    fat = "x" * 900
    stalled = await _stalled_viewer(client)
    loop = asyncio.get_running_loop()
    round_ = 0
    while hub.backlogs()[1] == 0:  # until the kernel's buffers are full and it falls behind
        round_ += 1
        assert round_ < 500, "the stalled viewer never fell behind"
        await post(client, [event(f"t{i}", n=round_, desc=f"{round_}{fat}") for i in range(300)])
        await asyncio.sleep(0.01)
    for step in range(1, 15):
        await post(client, [event(f"t{i}", n=round_ + step) for i in range(0, 300, step)])
    await client.delete("/tasks/t7")
    gone = await client.delete("/tasks", json={"ids": [f"t{i}" for i in range(100, 120)]})
    assert (await gone.json())["deleted"] == 20  # more removals than a walk of 10 takes
    await post(client, event("t105", n=1))  # one of them back
    expected = without_unshown(stored(client.app))
    # Now it reads: whatever it missed comes as whole tasks, and it ends equal to the server.
    board = Board()
    received = bytearray()
    snapshots = 0
    while board.shown() != expected:
        received += await asyncio.wait_for(loop.sock_recv(stalled, 1 << 16), 10)
        for payload in _text_frames(received):
            message = msgspec.json.decode(payload)
            snapshots += message["type"] == "snapshot"
            board.apply(message)
    assert snapshots == 1  # the one it got when it arrived
    stalled.close()


def server_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take the complete server frames off the front of ``buffer``: (first byte, payload)."""
    taken = []
    while len(buffer) >= 2:
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + length:
            break
        taken.append((buffer[0], bytes(buffer[offset : offset + length])))
        del buffer[: offset + length]
    return taken


def _text_frames(buffer: bytearray) -> list[bytes]:
    """Take the complete server frames off the front of ``buffer``; the text payloads."""
    return [payload for first, payload in server_frames(buffer) if first & 0x0F == 0x1]


async def test_a_window_shows_the_newest_of_each_state_with_counts(client: Client) -> None:
    await post(client, [event(f"run-{i}", meta={"job": "teamA"}) for i in range(5)])
    await post(
        client, [event(f"done-{i}", status="close", meta={"job": "teamAB"}) for i in range(3)]
    )
    async with client.ws_connect("/ws?limit=2&q=job%3DteamA") as viewer:
        view = await receive(viewer)
        assert view["type"] == "view"
        assert view["sections"] == {
            "active": ["run-4", "run-3"],
            "stale": [],
            "completed": [],
            "failed": [],
        }
        # job=teamA is the label, exactly: teamAB's tasks count in the totals only.
        assert view["counts"] == {
            "active": [5, 5],
            "stale": [0, 0],
            "completed": [0, 3],
            "failed": [0, 0],
        }
        assert sorted(view["tasks"]) == ["run-3", "run-4"]
        board = Board()
        board.apply(view)
        # A task entering the window pushes the oldest shown out; counts follow.
        await post(client, event("run-5", meta={"job": "teamA"}))
        await follow_until(viewer, board, lambda b: b.sections["active"] == ["run-5", "run-4"])
        assert sorted(board.tasks) == ["run-4", "run-5"]
        assert board.counts["active"] == [6, 6]
        # One leaving the state brings back the next newest.
        await post(client, event("run-5", status="error", error="boom"))
        await follow_until(viewer, board, lambda b: b.sections["failed"] == ["run-5"])
        assert board.sections["active"] == ["run-4", "run-3"]
        assert board.counts["failed"] == [1, 1]
        # Changes to tasks outside the filter move only the totals.
        await post(client, event("other"))
        await follow_until(viewer, board, lambda b: b.counts["active"] == [5, 6])
        assert "other" not in board.tasks


async def test_a_filtered_window_shows_the_newest_by_when_they_entered_their_state(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(stale_after=10)
    app = client.app
    # Stored in one order, finished (and gone stale) in another: a window built by reading
    # the tasks as they were stored must still show each state's newest first.
    await post(client, [event(f"t{i}", n=1, meta={"job": "x"}) for i in range(6)])
    for i in (4, 1, 5):
        clock.advance(1)
        await post(client, event(f"t{i}", status="close", meta={"job": "x"}))
    clock.advance(0.5)
    await post(client, event("t0", n=2, meta={"job": "x"}))  # spoke last: goes stale last
    clock.advance(11)
    await run_cleanup(app[STORE], app[LIFETIMES], clock())
    await post(client, event("t2", n=2, meta={"job": "x"}))  # back from stale
    async with client.ws_connect("/ws?limit=2&q=job%3Dx") as viewer:
        view = await receive(viewer)
        assert view["sections"] == {
            "active": ["t2"],
            "stale": ["t0", "t3"],
            "completed": ["t5", "t1"],
            "failed": [],
        }
        assert view["counts"]["completed"] == [3, 3]


async def test_a_viewer_can_change_its_filter_and_window(client: Client) -> None:
    await post(client, [event("a", meta={"job": "x"}), event("b", meta={"job": "y"})])
    async with client.ws_connect("/ws?limit=10") as viewer:
        assert sorted((await receive(viewer))["tasks"]) == ["a", "b"]
        await viewer.send_json({"type": "subscribe", "q": "job=y", "limit": 10})
        view = await receive(viewer)
        assert (view["type"], sorted(view["tasks"])) == ("view", ["b"])


async def test_a_subscription_with_a_filter_past_its_length_is_refused(client: Client) -> None:
    """The viewer keeps its window and is told why (the page marks its filter box)."""
    await post(client, event("a", n=1))
    async with client.ws_connect("/ws?limit=10") as viewer:
        assert sorted((await receive(viewer))["tasks"]) == ["a"]
        too_long = "j=" + "[" * MAX_FILTER_CHARS
        await viewer.send_json({"type": "subscribe", "q": too_long, "limit": 10})
        refused = await receive(viewer)
        assert (refused["type"], refused["q"]) == ("refused", too_long[:MAX_FILTER_CHARS])
        assert refused["reason"] == "a filter is at most 1,000 characters, not 1,002"
        await post(client, event("a", n=2))
        patch = await receive(viewer)  # still on its window, and connected
        assert (patch["type"], patch["tasks"]["a"]["n"]) == ("patch", 2)


async def test_a_bad_window_is_400(client: Client) -> None:
    response = await client.get("/ws?limit=5000")
    assert response.status == 400
    assert (await response.json())["details"][0]["field"] == "limit"


async def test_a_flush_of_several_batches_gives_each_commit_instant_once() -> None:
    """Each batch is committed at one instant; a flush holds several. Each instant with enough
    updates gets a message of its own that gives it once as ``at``; the rest share one, each
    with its own ``updated_at`` (31 bytes, a third of an update, to every viewer)."""
    store = MemoryStore(1000)
    await store.start()
    store.table.watch(lambda: None)  # record changes, as the hub does

    def batch(prefix: str, count: int, n: int) -> list[Event]:
        body = [{"task_id": f"{prefix}{i}", "n": n, "total": 10} for i in range(count)]
        return decode_events(msgspec.json.encode(body), 1000)

    for prefix, count in (("a", 10), ("b", 10), ("c", 1)):
        await store.apply(batch(prefix, count, 1), 100.0)

    def as_json() -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = msgspec.json.decode(
            msgspec.json.encode(store.table.tasks)
        )
        return tasks

    board = Board()
    board.apply({"type": "snapshot", "tasks": sent(as_json()), "more": False})
    store.table.take_changes()
    await store.apply(batch("a", 10, 2), 200.0)
    await store.apply(batch("b", 10, 2), 200.5)
    await store.apply([*batch("c", 1, 2), *batch("d", 1, 2)], 201.0)  # d is new
    await store.delete(["b9"])
    (piece,) = feed.patches(store.table, store.table.take_changes())
    messages = [msgspec.json.decode(payload) for payload in piece]
    assert [
        (m.get("at"), sorted({*m["tasks"], *m.get("replace", {})}), m["removed"]) for m in messages
    ] == [
        (201.0, ["c0", "d0"], ["b9"]),
        (200.0, [f"a{i}" for i in range(10)], []),
        (200.5, [f"b{i}" for i in range(9)], []),
    ]
    assert all("updated_at" not in messages[1]["tasks"][f"a{i}"] for i in range(10))
    assert messages[0]["replace"]["d0"] == sent(as_json())["d0"]  # new: whole
    for message in messages:
        board.apply(message)
    assert without_unshown(board.tasks) == without_unshown(as_json())
    await store.close()


async def test_a_flush_that_fails_has_every_viewer_start_over(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in sending changes must not leave viewers without news for good: it is logged,
    and each viewer is given a fresh snapshot or view, with the change in it."""
    await post(client, event("a", n=1, total=10))
    async with client.ws_connect("/ws") as whole, client.ws_connect("/ws?limit=5") as windowed:
        assert (await receive(whole))["type"] == "snapshot"
        assert (await receive(windowed))["type"] == "view"
        patches = feed.patches
        failed: list[bool] = []

        def broken(*args: Any) -> Any:
            if not failed:
                failed.append(True)
                raise RuntimeError("a bug")
            return patches(*args)

        monkeypatch.setattr(feed, "patches", broken)
        await post(client, event("a", n=2))
        fresh = await receive(whole)
        assert (fresh["type"], fresh["tasks"]["a"]["n"]) == ("snapshot", 2)
        view = await receive(windowed)
        assert (view["type"], view["tasks"]["a"]["n"]) == ("view", 2)
        await post(client, event("a", n=3))  # and news flows again
        assert (await receive(whole))["tasks"]["a"]["n"] == 3
    assert "every viewer starts over" in caplog.text


async def test_a_resync_sent_during_a_snapshot_gets_a_fresh_one_after_it(
    make_client: MakeClient,
) -> None:
    """The snapshot under way ends at its last piece (a viewer knows a board is whole there),
    and a fresh one follows: a long snapshot or catch-up used to set the viewer's revision at
    its end, over the resync, which then got only a catch-up."""
    client = await make_client()
    hub = client.app[HUB]
    fat = "x" * 900
    for start in range(0, 3000, 1000):  # about 3 MB of snapshot: more than the socket holds
        await post(client, [event(f"t{i}", n=1, desc=fat) for i in range(start, start + 1000)])
    stalled = await _stalled_viewer(client)
    await eventually(lambda: hub.backlogs()[1] == 1)  # its snapshot waits for it to read
    mask = b"\x01\x02\x03\x04"
    text = b"resync"
    frame = (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(stalled, frame)
    await post(client, event("t1", n=2))
    expected = without_unshown(stored(client.app))
    board = Board()
    received = bytearray()
    while board.snapshots < 2 or board.shown() != expected:
        received += await asyncio.wait_for(loop.sock_recv(stalled, 1 << 16), 10)
        for payload in _text_frames(received):
            board.apply(msgspec.json.decode(payload))
    stalled.close()


async def test_filtered_windows_are_bounded_unwatched_ones_going_first(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who may read can ask for a new filtered window (each filter and size is one),
    and each keeps an index of what it matches: 3,000 of them over 20k tasks took 3 GB."""
    monkeypatch.setattr(hub_module, "MAX_FILTERED_WINDOWS", 2)
    hub = client.app[HUB]
    await post(client, [event("a", meta={"job": "a"}), event("b", meta={"job": "b"})])

    def filters() -> list[str]:
        return sorted(text for text, _ in hub._windows if text)

    for text in ("job=a", "job=b", "job=c"):  # nobody watches these: the oldest goes
        response = await client.get("/view", params={"q": text, "limit": "5"})
        assert response.status == 200, text
    assert filters() == ["job=b", "job=c"]
    async with (
        client.ws_connect("/ws?limit=5&q=job%3Da") as first,
        client.ws_connect("/ws?limit=5&q=job%3Db") as second,
    ):
        assert (await receive(first))["type"] == (await receive(second))["type"] == "view"
        assert filters() == ["job=a", "job=b"]
        # Both watched: no room for a third, over HTTP, at connect, or by subscribing.
        response = await client.get("/view", params={"q": "job=d", "limit": "5"})
        assert response.status == 503
        assert (await response.json())["error"].startswith("the server keeps at most")
        assert (await client.get("/ws?limit=5&q=job%3Dd")).status == 503
        await second.send_json({"type": "subscribe", "q": "job=d", "limit": 5})
        refused = await receive(second)
        assert (refused["type"], refused["q"]) == ("refused", "job=d")
        assert refused["reason"].startswith("the server keeps at most 2 filtered views")
        await post(client, event("b", n=3, meta={"job": "b"}))
        patch = await receive(second)  # still its own window
        assert patch["tasks"]["b"]["n"] == 3
        assert filters() == ["job=a", "job=b"]
        # The unfiltered window is not counted.
        assert (await client.get("/view", params={"limit": "7"})).status == 200


async def test_a_percent_past_what_a_float_holds_is_null_for_viewers_too(client: Client) -> None:
    """The server stores 100 * n / total as null when it is not finite; a viewer deriving it
    from a partial update's n got Infinity, and its board differed from the server's."""
    await post(client, event("huge", n=1, total=1e-300))
    async with client.ws_connect("/ws") as viewer:
        board = Board()
        board.apply(await receive(viewer))
        await post(client, event("huge", n=1.7e308))
        expected = without_unshown(stored(client.app))
        assert expected["huge"]["percent"] is None
        await follow_until(viewer, board, lambda b: b.shown() == expected)
