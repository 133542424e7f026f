"""The baseline the targets are quoted against: an aiohttp handler that only parses the JSON.

Run as ``python -m tests.bench.bare PORT``; measured in the same run as our server so the ratio
means something on a noisy machine.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web


async def parse_only(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.json_response({"accepted": 1, "ignored": 0}, status=202)


def main() -> None:
    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/progress", parse_only)
    print(f"Progressista dashboard: http://127.0.0.1:{sys.argv[1]}/", flush=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
