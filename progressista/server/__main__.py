"""``python -m progressista.server``: run the server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from aiohttp import web
from aiohttp.web_log import AccessLogger

from ..settings import DEFAULT_KEEPALIVE, ServerSettings, SettingError, parse_args
from .accesslog import QuietAccessLogger, SafeAccessLogger
from .alert import MissingApprise, UnknownDestination
from .api import suggested_keepalive
from .app import create_app
from .connections import Runner, descriptor_limit, raise_descriptor_limit
from .keys import CONNECTIONS
from .redis_store import BadRedisUrl, MissingRedis

log = logging.getLogger("progressista.server")

#: Seconds to let in-flight requests finish on shutdown before closing their connections.
SHUTDOWN_GRACE = 3.0


def dashboard_url(host: str, port: int) -> str:
    """A URL a person can open: wildcard binds are shown as this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


async def serve(settings: ServerSettings) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly (viewers get close code 1001)."""
    raise_descriptor_limit()
    app = create_app(settings)
    connections = app[CONNECTIONS]
    connections.report_accept_errors(asyncio.get_running_loop())
    descriptors = descriptor_limit()
    if descriptors is not None and connections.max_connections > descriptors:
        log.warning(
            "--max-connections %d is more than this process may open (%d file descriptors): "
            "past that, connections are refused; raise the limit (ulimit -n)",
            connections.max_connections,
            descriptors,
        )
    access_log_class: type[AccessLogger] = (
        QuietAccessLogger if settings.access_log == "quiet" else SafeAccessLogger
    )
    runner = Runner(
        app,
        access_log=None if settings.access_log == "off" else logging.getLogger("aiohttp.access"),
        access_log_class=access_log_class,
        shutdown_timeout=SHUTDOWN_GRACE,
        handle_signals=False,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        bound = runner.addresses[0]
        port = bound[1] if isinstance(bound, tuple) else settings.port
        print(f"Progressista dashboard: {dashboard_url(settings.host, port)}", flush=True)
        log.info("settings: %s", settings.describe())
        keepalive = suggested_keepalive(settings.stale_after)
        if keepalive is not None:
            log.warning(
                "--stale-after %g s is under four times the clients' keepalive (%g s): this "
                "server asks them to re-send unchanged bars every %g s instead, so that live bars "
                "do not flap to stale (clients older than this server keep %g s)",
                settings.stale_after,
                DEFAULT_KEEPALIVE,
                keepalive,
                DEFAULT_KEEPALIVE,
            )
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Serve; ``prog`` names the command in its usage (``progressista serve`` runs this too)."""
    if prog is None:  # as started: python -m progressista.server, or progressista-server
        name = os.path.basename(sys.argv[0]) if argv is None else "__main__.py"
        prog = "python -m progressista.server" if name == "__main__.py" else name
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv, os.environ, prog)
    except SettingError as error:
        print(f"progressista: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except (MissingRedis, BadRedisUrl, MissingApprise, UnknownDestination) as error:
        print(f"progressista: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"progressista: cannot listen on {settings.host}:{settings.port}: {error.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
