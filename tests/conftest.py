"""Shared fixtures: the real app factory behind pytest-aiohttp's test client, with a fake clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from progressista.server import Runner, ServerSettings, create_app
from progressista.server.keys import STORE

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

#: In tests cleanup runs when a test calls run_cleanup, never on its own.
NEVER = 3600.0


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub_clock() -> FakeClock:
    """The hub's monotonic clock (how long a viewer has been stuck), moved by the test."""
    return FakeClock(1000.0)


class GuardedTestServer(TestServer):
    """pytest-aiohttp's test server, running the app as ``python -m progressista.server`` does:
    with :class:`Runner`, whose connections have timeouts, a limit and JSON parser errors."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return Runner(self.app, **kwargs)


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, clock: FakeClock, hub_clock: FakeClock
) -> MakeClient:
    """Build the real application with these settings and connect a test client to it."""

    async def make(**settings: Any) -> Client:
        settings.setdefault("cleanup_interval", NEVER)
        app = create_app(ServerSettings(**settings), clock=clock, hub_clock=hub_clock)
        client: TestClient[web.Request, None] = await aiohttp_client(GuardedTestServer(app))
        # pytest-aiohttp types a client built on a server as one without an app; it has ours.
        return cast(Client, client)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def stored(app: web.Application) -> dict[str, dict[str, Any]]:
    """Every task the app's store holds, as the JSON objects the API gives."""
    tasks: dict[str, dict[str, Any]] = msgspec.to_builtins(app[STORE].table.tasks)
    return tasks


async def post(client: Client, body: Any, **headers: str) -> tuple[int, Any]:
    """POST a JSON body to /progress and return the status and decoded reply."""
    response = await client.post("/progress", json=body, headers=headers)
    return response.status, await response.json()


def event(task_id: str = "t", **fields: Any) -> dict[str, Any]:
    """A valid event with only the fields a test cares about."""
    return {"task_id": task_id, **fields}


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, polling; fail after ``timeout`` seconds."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {predicate}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
