"""Shared fixtures: the real app factory behind pytest-aiohttp's test client, with a fake clock."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, cast
from unittest import mock

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from progressista.server import Runner, ServerSettings, create_app
from progressista.server.keys import STORE

#: The client tests' servers, bars and readers (fixtures and helpers): see tests/remote.py.
pytest_plugins = ["tests.remote"]

#: Test modules that run on uvloop as well as on asyncio's own loop: aiohttp's
#: GunicornUVLoopWebWorker serves the application on uvloop, whose transports are no
#: asyncio.Transport (the hub once checked, and fed such viewers nothing), and workers run
#: AsyncRemoteTqdm on whatever loop they chose.
ON_UVLOOP_TOO = frozenset({"tests.test_websocket", "tests.test_client_async"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Both loops for the modules in ON_UVLOOP_TOO (where uvloop installs: not on Windows),
    asyncio's for the rest."""
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    module = getattr(item, "module", None)
    if module is not None and module.__name__ in ON_UVLOOP_TOO:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - a platform uvloop does not support
            return loops
        loops["uvloop"] = uvloop.new_event_loop
    return loops


Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

#: In tests cleanup runs when a test calls run_cleanup, never on its own.
NEVER = 3600.0

#: Seconds a test waits for something it expects before it fails. A hang detector, not a speed
#: limit: a passing wait ends as soon as its condition holds, and this machine may be busy.
WAIT = 30.0


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Keep ``make test-fast`` (``-m "not slow"``) fast: only a slow test may start a program.

    Servers, workers and browsers take seconds to start, more on a busy machine. A test that
    starts one (its fixtures included) must be marked ``slow``; one that is not fails at its
    first ``Popen``, asyncio's and Playwright's included, which is where the mark is missing.
    """
    if item.get_closest_marker("slow") is not None:
        return (yield)

    def refuse(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{item.nodeid} starts a program: mark it @pytest.mark.slow")

    with mock.patch.object(subprocess.Popen, "__init__", refuse):
        return (yield)


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
        # A job without a head is decided as its last bar ends, unless a test is about the
        # gap the server gives it for another bar (job_gap, 10 s when served).
        settings.setdefault("job_gap", 0)
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
    tasks: dict[str, dict[str, Any]] = msgspec.json.decode(
        msgspec.json.encode(app[STORE].table.tasks)
    )
    return tasks


async def post(client: Client, body: Any, **headers: str) -> tuple[int, Any]:
    """POST a JSON body to /progress and return the status and decoded reply."""
    response = await client.post("/progress", json=body, headers=headers)
    return response.status, await response.json()


def event(task_id: str = "t", **fields: Any) -> dict[str, Any]:
    """A valid event with only the fields a test cares about."""
    return {"task_id": task_id, **fields}


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
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


def largest_tracked_holding(value: str) -> int:
    """The most entries of any container the garbage collector tracks (and so walks at each
    collection of its generation) that holds ``value``; 0 when none does."""
    import gc

    return max(
        (
            len(found)
            for found in gc.get_objects()
            if isinstance(found, (dict, list, set, tuple)) and value in found
        ),
        default=0,
    )
