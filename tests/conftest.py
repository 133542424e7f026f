"""Shared fixtures: the real app factory behind pytest-aiohttp's test client, with a fake clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from progressista.server import ServerSettings, create_app

#: The client tests' servers, bars and readers (fixtures and helpers): see tests/remote.py.
pytest_plugins = ["tests.remote"]

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
def make_client(aiohttp_client: AiohttpClient, clock: FakeClock) -> MakeClient:
    """Build the real application with these settings and connect a test client to it."""

    async def make(**settings: Any) -> Client:
        settings.setdefault("cleanup_interval", NEVER)
        app = create_app(ServerSettings(**settings), clock=clock)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


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
