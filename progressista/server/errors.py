"""The one edge where refusals become HTTP: the API's error type, its JSON shape, and the
middleware that turns every error (ours and aiohttp's own) into that shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from ..schema import FieldError

__all__ = [
    "ApiError",
    "error_response",
    "json_errors",
    "json_response",
    "one_line",
    "unreadable_body",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the API refuses; :func:`json_errors` turns it into the response."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.details, self.headers)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` fit for a one-sentence error: its first line, at most ``limit`` characters."""
    lines = text.strip().splitlines()
    first = lines[0].strip().rstrip(":") if lines else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def unreadable_body(request: web.BaseRequest, error: Exception, what: str = "the body") -> ApiError:
    """The 400 for a body aiohttp could not read: a corrupt gzip or deflate stream, a broken
    chunk, a form part in a charset or transfer encoding nobody knows.

    aiohttp raises these while the handler reads (as ``RequestPayloadError`` caused by the
    parser's own error, or as the codec's ``LookupError``/``ValueError``); they are the
    client's doing, never a 500.
    """
    cause = error.__cause__ if isinstance(error.__cause__, HttpProcessingError) else error
    encoding = request.headers.get("Content-Encoding", "")
    if isinstance(cause, ContentEncodingError) and encoding:
        return ApiError(400, f"{what} is not valid {encoding} (Content-Encoding: {encoding})")
    reason = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    return ApiError(400, f"{what} cannot be read: {one_line(reason)}")


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    details: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": message, "details": [detail.as_json() for detail in details]}
    return json_response(body, status, headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """:class:`ApiError` and aiohttp's own errors (unknown route, wrong method) both leave as
    the API's JSON error shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        headers = {name: value for name, value in error.headers.items() if name in ("Allow",)}
        return error_response(
            error.status, f"{error.reason}: {request.method} {request.path}", headers=headers
        )
