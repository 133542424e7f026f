"""What client tests share: servers that are up, refused or hung, bars aimed at them, and the
tasks read back through ``GET /tasks`` as any reader would (never the store's internals).

Registered as a pytest plugin by ``conftest.py``: the fixtures are available to every test
module; the helpers are imported by name.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from progressista.client import AsyncRemoteTqdm, RemoteTqdm, flush
from progressista.server import ServerSettings, create_app

from .conftest import NEVER
from .server_process import ServerProcess, running_server

#: push_every for tests: the policy is the same, only quicker.
FAST = 0.05

Server = TestServer | str


@pytest.fixture
def fresh_client() -> None:
    """The test starts with no sender: the previous test's bars are closed and delivered."""
    flush(timeout=1.0, close_bars=True)


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> AsyncIterator[TestServer]:
    """The real application, in process, on the test's own event loop."""
    yield await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)))


@pytest.fixture
def refused_url() -> str:
    """A server that refuses connections: a port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1000)
        yield f"http://127.0.0.1:{hung.getsockname()[1]}"


@pytest.fixture(scope="module")
def server_process() -> Iterator[ServerProcess]:
    """``python -m progressista.server`` as a real process, shared by a module's tests."""
    with running_server(["--log-level", "warning"]) as process:
        yield process


def url_of(server: Server) -> str:
    return server if isinstance(server, str) else f"http://127.0.0.1:{server.port}"


def bar(server: Server, *args: Any, **kwargs: Any) -> RemoteTqdm:
    """A RemoteTqdm aimed at ``server`` (or a URL), drawing into a string, pushing quickly."""
    kwargs.setdefault("file", io.StringIO())
    return RemoteTqdm(*args, url=url_of(server), push_every=FAST, **kwargs)


def async_bar(server: Server, *args: Any, **kwargs: Any) -> AsyncRemoteTqdm:
    """An AsyncRemoteTqdm aimed at ``server`` (or a URL), like :func:`bar`."""
    kwargs.setdefault("file", io.StringIO())
    return AsyncRemoteTqdm(*args, url=url_of(server), push_every=FAST, **kwargs)


async def _get(server: TestServer, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url(path)) as response,
    ):
        if path.startswith("/metrics"):
            return await response.text()
        return await response.json()


async def tasks(server: TestServer) -> dict[str, dict[str, Any]]:
    """Every task the server holds, from ``GET /tasks``."""
    found: dict[str, dict[str, Any]] = (await _get(server, "/tasks"))["tasks"]
    return found


async def posts(server: TestServer) -> int:
    """How many ``POST /progress`` requests the server has taken (from ``/metrics``)."""
    for line in (await _get(server, "/metrics")).splitlines():
        if line.startswith("progressista_ingest_requests_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no ingest counter in /metrics")


async def task_with(
    server: TestServer,
    task_id: str,
    timeout: float = 20.0,
    check: Callable[[dict[str, Any]], bool] = lambda task: True,
    **fields: Any,
) -> dict[str, Any]:
    """The task ``task_id`` once it has every one of ``fields`` (and passes ``check``).

    Fails after ``timeout`` seconds, saying what the task looked like last.
    """
    deadline = time.monotonic() + timeout
    while True:
        task = (await tasks(server)).get(task_id)
        if task is not None and all(task.get(k) == v for k, v in fields.items()) and check(task):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"{task_id} never had {fields}; last seen: {task}")
        await asyncio.sleep(0.02)


async def flush_off_loop(timeout: float = 2.0) -> bool:
    """``flush()`` blocks; the test's server runs on this loop, so flush from a thread."""
    return await asyncio.get_running_loop().run_in_executor(None, flush, timeout)
