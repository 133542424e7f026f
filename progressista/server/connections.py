"""The connections the server holds: how long a request may take to arrive, how many connections
may be open, and the API's JSON for what aiohttp's own HTTP parser refuses.

aiohttp closes a connection that sends nothing for ``keepalive_timeout``, but a client that
sends one header byte every few seconds (slowloris) keeps it for as long as it likes, and nothing
bounds how many such connections are open: at the file-descriptor limit, ``accept()`` fails and
every other client is locked out. So:

- a request must arrive within ``--read-timeout``: its headers from their first byte (here), its
  body from the end of its headers (in the handlers that read one). A late one gets a 408.
- at most ``--max-connections`` are open. Past that, the connection that has waited longest
  without a request under way (idle, or still sending its headers) is closed to make room, so
  slow clients cannot lock out quick ones; a request under way (a viewer's WebSocket included) is
  never cut.
- requests aiohttp's parser refuses (URL too long, too many headers, an unknown encoding, a bad
  Content-Length) get the API's JSON error and one log line, not text/plain and a traceback.

:class:`Runner` is the ``AppRunner`` that does all this for the application's settings;
``python -m progressista.server`` and the tests run the application with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from .accesslog import redact
from .errors import ApiError, error_response, one_line
from .keys import CONNECTIONS
from .metrics import ConnectionStats
from .remote import TrustedProxies

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]  # no descriptor limit to read or raise there

__all__ = [
    "Connections",
    "OncePer",
    "Runner",
    "descriptor_limit",
    "raise_descriptor_limit",
    "read_in_time",
]

log = logging.getLogger("progressista.server")
T = TypeVar("T")

#: Seconds between two log lines about the same kind of trouble (timeouts, a full server,
#: EMFILE): an attack or an outage is reported, never written out once per connection.
LOG_EVERY = 10.0
#: The automatic limit is this share of the file-descriptor limit. The rest is for what the
#: count does not see: asyncio accepts a backlog (128) of connections at a time before any of
#: them is counted, and a connection closed to make room keeps its descriptor until a later turn
#: of the loop, so under a flood of new connections hundreds are open beyond the count; then the
#: listening socket, the event loop, log files, Redis, static files on their way out.
DESCRIPTOR_SHARE = 0.5
#: The automatic limit, whatever the descriptors allow: an idle connection costs about 7 KiB.
MOST_CONNECTIONS = 20_000


class OncePer:
    """Log one kind of event at once, then at most once per ``interval``, with how many more
    happened since the last line."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        interval: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._next = -float("inf")
        self._unlogged = 0

    def __call__(self, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next:
            self._unlogged += 1
            return
        if self._unlogged:
            message += f" (and {self._unlogged:,} more like it in the last %.0f s)"
            args = (*args, self._interval)
        self._logger.log(self._level, message, *args)
        self._next = now + self._interval
        self._unlogged = 0


def descriptor_limit() -> int | None:
    """This process's soft limit on open file descriptors, or None when it has none."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_descriptor_limit() -> None:
    """Raise the soft file-descriptor limit to the hard one, as far as the system lets us: the
    soft default (often 1,024) is far below what a server holding many viewers needs."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # a hard limit above what the kernel allows (RLIM_INFINITY): keep the soft one


def automatic_connection_limit(limit: int | None = None) -> int:
    """Half the descriptor limit, at most :data:`MOST_CONNECTIONS`."""
    if limit is None:
        limit = descriptor_limit()
    if limit is None:
        return MOST_CONNECTIONS
    return max(1, min(MOST_CONNECTIONS, int(limit * DESCRIPTOR_SHARE)))


class Connections:
    """Every open connection, ordered by how long it has been without a request under way, and
    the limits on them. One per application; the :class:`Runner`'s protocols report to it."""

    def __init__(
        self,
        read_timeout: float,
        max_connections: int | None,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self.read_timeout = read_timeout
        #: Who may name the client behind them: the access log asks the protocol for it.
        self.proxies = proxies or TrustedProxies(())
        self.max_connections = max_connections or automatic_connection_limit()
        self.stats = ConnectionStats()
        #: Connections with no request under way, longest-waiting first: idle keep-alives and
        #: requests still arriving. The first is the one closed to make room.
        self._idle: dict[GuardedRequestHandler, None] = {}
        #: Connections whose request has started arriving, with the instant it must have
        #: arrived by; in order of those instants, since the timeout is the same for all.
        self._reading: dict[GuardedRequestHandler, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._log_timeouts = OncePer(log, logging.INFO)
        self._log_full = OncePer(log, logging.WARNING)

    def opened(self, connection: GuardedRequestHandler) -> None:
        self.stats.open += 1
        connection.tracked = True
        self._idle[connection] = None
        if self.stats.open <= self.max_connections:
            return
        victim = next(iter(self._idle))
        if victim is connection:  # every other connection has a request under way
            self.stats.refused += 1
            self._log_full(
                "refused a connection from %s: the server holds its maximum of %d connections, "
                "each with a request under way; raise --max-connections",
                connection.remote,
                self.max_connections,
            )
        else:
            self.stats.evicted += 1
            self._log_full(
                "closed a connection from %s that had no request under way, to make room: the "
                "server holds its maximum of %d connections (--max-connections)",
                victim.remote,
                self.max_connections,
            )
        self.forget(victim)
        victim.force_close()

    def forget(self, connection: GuardedRequestHandler) -> None:
        """Stop counting ``connection``: it closed, or is being closed."""
        if connection.tracked:
            connection.tracked = False
            self.stats.open -= 1
            self._idle.pop(connection, None)
            self._reading.pop(connection, None)

    def reading(self, connection: GuardedRequestHandler, now: float) -> None:
        """The first byte of a request arrived on an idle connection: start its clock."""
        deadline = now + self.read_timeout
        self._reading[connection] = deadline
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def busy(self, connection: GuardedRequestHandler) -> None:
        """A whole request arrived: its handler runs, nothing times it out here."""
        self._idle.pop(connection, None)
        self._reading.pop(connection, None)

    def idle(self, connection: GuardedRequestHandler) -> None:
        """A response went out: the connection waits for its next request, if any."""
        if connection.tracked:
            self._idle[connection] = None

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._reading:
            connection, deadline = next(iter(self._reading.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            self.stats.read_timeouts += 1
            self._log_timeouts(
                "closed a connection from %s: its request did not arrive within %g s "
                "(--read-timeout)",
                connection.remote,
                self.read_timeout,
            )
            self.forget(connection)
            connection.timed_out(self.read_timeout)
        self._timer = None

    def report_accept_errors(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop`` report a failing ``accept()`` (EMFILE: out of file descriptors) in one
        line per :data:`LOG_EVERY`, not in a traceback for every retry: asyncio retries the
        backlog's worth at once, and 22.8 MB of tracebacks in 25 s were seen. They are counted
        in ``stats.accept_errors``."""
        report = OncePer(log, logging.ERROR)

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            if context.get("message") != "socket.accept() out of system resource" or not (
                isinstance(error, OSError)
            ):
                loop.default_exception_handler(context)
                return
            self.stats.accept_errors += 1
            report(
                "cannot accept connections: %s; raise the file-descriptor limit (ulimit -n) "
                "or lower --max-connections",
                error.strerror or error,
            )

        loop.set_exception_handler(handler)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def read_in_time(request: web.BaseRequest, reading: Awaitable[T], seconds: float) -> Awaitable[T]:
    """``reading`` (of the body), or a 408 when the body does not arrive within ``seconds`` of
    the headers (``--read-timeout``): a client trickling its body must not hold a handler.

    A body that came with its headers (the usual case, and ingest's hot path) is read as it is,
    without a timer or another coroutine.
    """
    if request.content.is_eof():
        return reading
    return _read_or_408(request, reading, seconds)


async def _read_or_408(request: web.BaseRequest, reading: Awaitable[T], seconds: float) -> T:
    try:
        return await asyncio.wait_for(reading, seconds)
    except asyncio.TimeoutError:
        if isinstance(request.protocol, GuardedRequestHandler):
            request.protocol.abandon_body()
        raise ApiError(
            408,
            f"the body did not arrive within {seconds:g} s of the headers; send it whole, or "
            "ask the server's operator about --read-timeout",
        ) from None


def _malformed(error: BaseException | None, message: str | None) -> str:
    """One sentence on what was wrong with a request the parser refused."""
    if isinstance(error, LineTooLong):
        return f"a request line or header is longer than {error.args[1]} bytes"
    if isinstance(error, web.RequestPayloadError):
        cause = error.__cause__
        text = cause.message if isinstance(cause, HttpProcessingError) else str(error)
        return f"the body cannot be read: {one_line(redact(text))}"
    if isinstance(error, HttpProcessingError):
        return one_line(redact(error.message)) or "it is not HTTP"
    return one_line(redact(message or "")) or "it is not HTTP"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol, reporting to :class:`Connections` and answering in JSON."""

    __slots__ = ("_connections", "_counted_reading", "_refusal_logged", "_under_way", "tracked")

    def __init__(self, manager: web.Server, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._under_way = False
        self._counted_reading = False
        self._refusal_logged = False
        self.tracked = False

    @property
    def proxies(self) -> TrustedProxies:
        return self._connections.proxies

    @property
    def remote(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connections.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._under_way and not self._counted_reading and data and self.tracked:
            self._counted_reading = True
            self._connections.reading(self, self._loop.time())
        super().data_received(data)

    def request_started(self) -> None:
        """Called as each parsed request is handed to the application (or to the error path)."""
        self._under_way = True
        self._counted_reading = False
        self._connections.busy(self)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._under_way = False
            if self.transport is not None:
                self._connections.idle(self)

    def abandon_body(self) -> None:
        """Close as soon as the response is out, without draining the rest of a body that is
        too slow to wait for (aiohttp would read it for up to 10 s first)."""
        self._lingering_time = 0.0

    def timed_out(self, seconds: float) -> None:
        """Answer a request that did not arrive in time with a 408, and close."""
        body = msgspec.json.encode(
            {
                "error": f"the request did not arrive within {seconds:g} s; "
                "send it whole, or ask the server's operator about --read-timeout",
                "details": [],
            }
        )
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The response to a request the parser refused (400) or whose handler failed (500):
        the API's JSON shape. A refusal is one log line; a failure keeps its traceback."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started: no room for an error")
        if isinstance(exc, web.RequestPayloadError):
            # A handler let a broken body escape: still the client's doing. The request has
            # its access-log line, like any other 400.
            status = 400
            text = f"the request is malformed: {_malformed(exc, message)}"
        elif status < 500:
            self._connections.stats.malformed += 1
            reason = _malformed(exc, message)
            if self._request_count == 1 and isinstance(exc, BadHttpMethod):
                # TLS or other protocols sent to this port: scanners, not worth a line.
                log.debug("refused a request from %s: %s", self.remote, reason)
            else:
                log.info("refused a malformed request from %s: %s", self.remote, reason)
            # This line says more than the access log could ("UNKNOWN / HTTP/1.0" 400): it is
            # the request's one line.
            self._refusal_logged = True
            text = f"the request is malformed: {reason}"
        elif status == 504:
            text = "the server took too long to answer this request"
        else:
            self.log_exception("Error handling request from %s", self.remote, exc_info=exc)
            text = "the server failed to handle this request; its log says why"
        response = error_response(status, text)
        response.force_close()
        return response

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        if self._refusal_logged:
            self._refusal_logged = False
            return
        super().log_access(request, response, time)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, web.RequestPayloadError | ConnectionError):
            # aiohttp drains an unread body after the response; a broken one (corrupt gzip, a
            # client gone) ends the connection there. The request already has its response and
            # its access-log line: no traceback.
            log.debug("closed a connection from %s: %s", self.remote, _malformed(error, None))
            return
        super().log_exception(*args, **kwargs)


class GuardedServer(web.Server):
    """aiohttp's low-level server, making :class:`GuardedRequestHandler` protocols."""

    def __init__(self, plain: web.Server, connections: Connections) -> None:
        make_request = plain.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            if isinstance(protocol, GuardedRequestHandler):
                protocol.request_started()
            return make_request(message, payload, protocol, writer, task)

        super().__init__(
            plain.request_handler,
            request_factory=request_factory,
            handler_cancellation=plain.handler_cancellation,
            # What aiohttp's Server was built with (its protocol's settings), kept as it keeps them.
            loop=plain._loop,
            **plain._kwargs,
        )
        self.guard = connections

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, connections=self.guard, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` for a Progressista application: its connections are guarded as its
    settings say (read timeout, connection limit, JSON for parser errors)."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(plain, self.app[CONNECTIONS])

    async def _cleanup_server(self) -> None:
        self.app[CONNECTIONS].close()
        await super()._cleanup_server()
