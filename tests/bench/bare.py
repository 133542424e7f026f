"""The baseline the targets are quoted against: an aiohttp handler that only parses the JSON.

It decodes with the server's JSON library (msgspec, untyped: no validation, no store, no viewers)
and answers 202 with the server's reply shape, so the ratio measures what the server adds.
Run as ``python -m tests.bench.bare PORT``; measured in the same run as the server, alternating
with it, so that the ratio means something on a noisy machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
from aiohttp import web

from ..server_process import ServerProcess

_decode = msgspec.json.decode
_encode = msgspec.json.encode


async def parse_only(request: web.Request) -> web.Response:
    events = _decode(await request.read())
    accepted = len(events) if isinstance(events, list) else 1
    return web.Response(
        body=_encode({"accepted": accepted, "ignored": 0}),
        status=202,
        content_type="application/json",
    )


def main() -> None:
    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/progress", parse_only)
    print(f"Progressista dashboard: http://127.0.0.1:{sys.argv[1]}/", flush=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


@contextmanager
def running_bare() -> Iterator[ServerProcess]:
    """The bare handler as a process on a free port, started like the server is."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bare", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=1)
            except urllib.error.HTTPError:
                break  # 404 for GET /: it is up
            except OSError:
                time.sleep(0.05)
        yield ServerProcess(process, url)
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
