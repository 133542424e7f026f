"""The README's async crawler example, run as printed against a local site and server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from progressista.server import ServerSettings, create_app

from .conftest import NEVER, stored

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def crawler_example() -> str:
    match = re.search(r"<!-- crawler-example:[^>]*-->\n```python\n(.*?)```", README, re.S)
    assert match, "the README lost its crawler example"
    return match.group(1)


async def test_the_crawler_example_reports_its_progress(
    aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x" * int(request.match_info["n"]))

    site = web.Application()
    site.router.add_get("/page/{n}", page)
    site_server = await aiohttp_server(site)
    progressista = await aiohttp_server(create_app(ServerSettings(cleanup_interval=NEVER)))
    monkeypatch.setenv("PROGRESSISTA_URL", f"http://127.0.0.1:{progressista.port}")

    example: dict[str, Any] = {"__name__": "crawler"}
    exec(compile(crawler_example(), "README.md", "exec"), example)
    urls = [f"http://127.0.0.1:{site_server.port}/page/{n}" for n in range(120)]
    fetched = await example["crawl"](urls)

    assert fetched == sum(range(120))
    task = stored(progressista.app)["crawler"]
    assert (task["state"], task["n"], task["total"], task["desc"], task["unit"]) == (
        "completed",
        120,
        120,
        "Crawling",
        "page",
    )
    assert task["meta"]["site"] == "example.org"
