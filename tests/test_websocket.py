"""GET /ws: snapshot, coalesced patches, removals, slow viewers, origins and shutdown."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import WSMsgType

from progressista.server.cleanup import run_cleanup
from progressista.server.context import HUB, LIFETIMES, STORE

from .conftest import Client, FakeClock, MakeClient, event, post


async def receive(socket: aiohttp.ClientWebSocketResponse, timeout: float = 2.0) -> Any:
    message = await socket.receive(timeout=timeout)
    assert message.type == WSMsgType.TEXT, message
    return msgspec.json.decode(message.data)


async def test_a_viewer_gets_a_snapshot_then_patches(client: Client) -> None:
    await post(client, [event("a", n=1), event("b", status="close")])
    async with client.ws_connect("/ws") as viewer:
        snapshot = await receive(viewer)
        assert snapshot == {"type": "snapshot", "tasks": dict(client.app[STORE].view)}
        await post(client, event("a", n=2))
        patch = await receive(viewer)
        assert patch == {
            "type": "patch",
            "tasks": {"a": client.app[STORE].view["a"]},
            "removed": [],
        }
        assert patch["tasks"]["a"]["n"] == 2


async def test_an_idle_viewer_hears_at_once_and_a_burst_is_merged(
    make_client: MakeClient,
) -> None:
    client = await make_client(broadcast_interval=1.0)
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await post(client, event("first"))
        # Well before the 1 s interval: the first change after a quiet spell is not held back.
        first = await receive(viewer, timeout=0.6)
        assert list(first["tasks"]) == ["first"]
        await post(client, event("second", n=1))
        await post(client, event("third"))
        await post(client, event("second", n=2))
        merged = await receive(viewer)
        assert sorted(merged["tasks"]) == ["second", "third"]
        assert merged["tasks"]["second"]["n"] == 2


async def test_a_patch_carries_only_what_changed(client: Client) -> None:
    await post(client, [event(f"task-{i}", n=i) for i in range(500)])
    async with client.ws_connect("/ws") as viewer:
        assert len((await receive(viewer))["tasks"]) == 500
        await post(client, event("task-7", n=70))
        patch = await receive(viewer)
        assert list(patch["tasks"]) == ["task-7"]
        assert patch["removed"] == []


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
        await run_cleanup(app[STORE], app[HUB], app[LIFETIMES], clock())

    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await cleanup_after(11)
        patch = await receive(viewer)
        assert patch["tasks"]["quiet"]["state"] == "stale"
        assert patch["removed"] == []
        await post(client, event("quiet", n=1))
        assert (await receive(viewer))["tasks"]["quiet"]["state"] == "active"
        await cleanup_after(40)  # done closed 51 s ago, quiet silent for 40 s
        patch = await receive(viewer)
        assert patch["removed"] == ["done"]
        assert patch["tasks"]["quiet"]["state"] == "stale"
        await cleanup_after(71)  # quiet silent 111 s > stale_after + abandon_after
        assert await receive(viewer) == {"type": "patch", "tasks": {}, "removed": ["quiet"]}


async def test_resync_request_sends_a_fresh_snapshot(client: Client) -> None:
    await post(client, event("a"))
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        await viewer.send_str("resync")
        assert (await receive(viewer))["type"] == "snapshot"


async def test_viewers_are_forgotten_when_they_leave(client: Client) -> None:
    hub = client.app[HUB]
    async with client.ws_connect("/ws") as viewer:
        await receive(viewer)
        assert hub.viewer_count == 1
    for _ in range(100):
        if hub.viewer_count == 0:
            break
        await asyncio.sleep(0.01)
    assert hub.viewer_count == 0


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
                "add it to allowed_origins"
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
    await receive(viewer)
    closing = asyncio.create_task(client.server.close())
    message = await viewer.receive(timeout=5)
    assert message.type == WSMsgType.CLOSE
    assert message.data == 1001
    await viewer.close()
    await asyncio.wait_for(closing, 5)


async def _stalled_viewer(client: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake and then never reads again."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=raw, limit=1024)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_a_stalled_viewer_neither_slows_others_nor_grows_memory(
    make_client: MakeClient,
) -> None:
    client = await make_client(viewer_timeout=0.3)
    hub = client.app[HUB]
    tasks = 300
    fat = "x" * 900  # about 300 KB per message
    _, stalled = await _stalled_viewer(client)
    async with client.ws_connect("/ws", max_msg_size=0) as healthy:
        await receive(healthy)
        biggest = 0
        for round_ in range(1, 41):
            started = time.perf_counter()
            await post(client, [event(f"t{i}", n=round_, desc=fat) for i in range(tasks)])
            assert time.perf_counter() - started < 1.0
            patch = await receive(healthy)
            assert {task["n"] for task in patch["tasks"].values()} == {round_}
            biggest = max(biggest, len(msgspec.json.encode(patch)))
        # 40 rounds of ~300 KB went to the stalled viewer: without its backlog the server would
        # hold ~12 MB for it. It holds at most aiohttp's 256 KiB writer limit plus a message or
        # two in the socket buffer, and a set of ids.
        ((buffered, waiting),) = [b for b in hub.backlogs() if b[0] > 0]
        assert buffered <= 256 * 1024 + 2 * biggest
        assert waiting <= tasks
        # Stuck for longer than viewer_timeout: dropped, and its buffer with it.
        await asyncio.sleep(0.4)
        assert hub.drop_stalled() == 1
        assert hub.viewer_count == 1
        await post(client, event("t1", n=99))
        assert (await receive(healthy))["tasks"]["t1"]["n"] == 99
    stalled.close()


class _FakeSocket:
    """Just enough of a WebSocketResponse for Hub.serve: records frames, never sends any."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = asyncio.Event()

    async def send_frame(self, message: bytes, opcode: WSMsgType) -> None:
        self.frames.append(message)

    def __aiter__(self) -> _FakeSocket:
        return self

    async def __anext__(self) -> None:
        await self.closed.wait()
        raise StopAsyncIteration


class _FakeRequest:
    transport = None


async def test_a_viewer_joining_while_a_patch_is_due_still_gets_its_snapshot() -> None:
    from progressista.server.hub import Hub

    tasks: dict[str, Any] = {"old": {"task_id": "old"}}
    hub = Hub(tasks, interval=0, viewer_timeout=10)
    watcher = _FakeSocket()
    watching = asyncio.create_task(hub.serve(watcher, _FakeRequest()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    # The new viewer registers, then a change's flush runs before the viewer's writer can: the
    # order of the loop's queue when a viewer connects in the same turn as an ingest.
    joiner = _FakeSocket()
    joining = asyncio.create_task(hub.serve(joiner, _FakeRequest()))  # type: ignore[arg-type]
    tasks["new"] = {"task_id": "new"}
    hub.publish(["new"])
    for _ in range(100):
        if joiner.frames:
            break
        await asyncio.sleep(0.01)
    first = msgspec.json.decode(joiner.frames[0])
    assert first == {
        "type": "snapshot",
        "tasks": {"old": {"task_id": "old"}, "new": {"task_id": "new"}},
    }
    for fake in (watcher, joiner):
        fake.closed.set()
    await asyncio.gather(watching, joining)
