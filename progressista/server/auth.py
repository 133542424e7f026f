"""Who may do what: the optional write and read tokens, and the WebSocket origin check.

Tokens are compared in constant time and never logged. Programs send ``Authorization: Bearer
<token>``; browsers log in once through a form and then carry a cookie that holds a keyed hash
of the read token, not the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from aiohttp import web

from .errors import ApiError, Handler
from .keys import SETTINGS

__all__ = [
    "COOKIE_NAME",
    "bearer_matches",
    "cookie_value",
    "host_allowed",
    "host_guard",
    "is_loopback",
    "origin_allowed",
    "read_allowed",
    "token_matches",
]

COOKIE_NAME = "progressista_session"


def token_matches(supplied: str, expected: str) -> bool:
    """Constant-time comparison, so timing does not reveal how much of a guess was right.

    Headers arrive with undecodable bytes as surrogates: they are compared as the bytes they
    were, never raised about.
    """
    return hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected.encode())


def cookie_value(read_token: str) -> str:
    """What the login cookie holds: proof of the token that does not reveal it."""
    return hmac.new(
        read_token.encode(), b"progressista dashboard session", hashlib.sha256
    ).hexdigest()


def bearer_matches(request: web.BaseRequest, token: str | None) -> bool:
    """True when no token is configured or the request carries it as a bearer token."""
    if token is None:
        return True
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(supplied.strip(), token)


def read_allowed(request: web.BaseRequest, read_token: str | None) -> bool:
    """True when the request may read: open server, bearer token, or the login cookie."""
    if read_token is None or bearer_matches(request, read_token):
        return True
    cookie = request.cookies.get(COOKIE_NAME)
    return cookie is not None and token_matches(cookie, cookie_value(read_token))


def origin_allowed(request: web.BaseRequest, allowed: Collection[str]) -> bool:
    """Whether a browser page from the request's ``Origin`` may open the WebSocket.

    Programs send no Origin and are let through (tokens guard them). Pages must come from this
    server's own host (as the browser reached it, so TLS-terminating proxies keep working) or be
    listed in ``allowed_origins``.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address: all of 127.0.0.0/8, and ::1."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(request: web.BaseRequest, bound_to: str, allowed: Collection[str]) -> bool:
    """Whether the ``Host`` the request was sent to is one this server answers to.

    Against DNS rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1
    is, to the browser, the same origin as this server, so it could read every task and
    discard them. Its requests still say ``Host: evil.example``. A server bound to loopback
    therefore answers to loopback names only; listed names (``allowed_hosts``) are accepted
    wherever it is bound; a server bound elsewhere with no list answers to any name.
    """
    name = request.host.lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name in allowed or is_loopback(name):
        return True
    return not allowed and not is_loopback(bound_to)


@web.middleware
async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests sent to a host name this server does not answer to (DNS rebinding)."""
    settings = request.app[SETTINGS]
    if not host_allowed(request, settings.host, settings.allowed_hosts):
        raise ApiError(
            403,
            f"this server does not answer to the host name {request.host!r}; "
            "add it with --allowed-hosts",
        )
    return await handler(request)
