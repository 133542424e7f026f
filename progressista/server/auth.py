"""Who may do what: the read and write tokens and their roles, the Origin and Host checks.

Two roles, each unlocked by its token when one is configured: *read* (the dashboard, ``/tasks``,
``/ws``, ``/metrics``) and *write* (``POST /progress``, and discarding tasks), which can read
too. Programs send ``Authorization: Bearer <token>``; people sign in once through a form that
takes either token and then carry a cookie that names the role and holds a keyed hash of that
role's token, not the token. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Collection
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from ..settings import ServerSettings
from .errors import ApiError, Handler
from .keys import PROXIES, SETTINGS, THROTTLE

__all__ = [
    "COOKIE_NAME",
    "READ",
    "WRITE",
    "Role",
    "cookie_value",
    "discard_role",
    "host_allowed",
    "is_loopback",
    "matching_role",
    "may",
    "origin_allowed",
    "proven_role",
    "require",
    "site_guard",
    "throttled",
    "token_matches",
]

COOKIE_NAME = "progressista_session"

Role = Literal["read", "write"]
READ: Role = "read"
WRITE: Role = "write"


def token_matches(supplied: str, expected: str) -> bool:
    """Constant-time comparison, so timing does not reveal how much of a guess was right.

    Headers arrive with undecodable bytes as surrogates: they are compared as the bytes they
    were, never raised about.
    """
    return hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected.encode())


def _token(settings: ServerSettings, role: Role) -> str | None:
    return settings.write_token if role == WRITE else settings.read_token


def matching_role(supplied: str, settings: ServerSettings) -> Role | None:
    """The role whose token ``supplied`` is, if any; both are compared, whichever matches."""
    write = settings.write_token is not None and token_matches(supplied, settings.write_token)
    read = settings.read_token is not None and token_matches(supplied, settings.read_token)
    return WRITE if write else READ if read else None


def cookie_value(role: Role, token: str) -> str:
    """What the login cookie holds: the role, and proof of its token that does not reveal it
    (so a changed token ends the sessions signed in with the old one)."""
    proof = hmac.new(
        token.encode(), b"progressista dashboard session: " + role.encode(), hashlib.sha256
    ).hexdigest()
    return f"{role}.{proof}"


def _cookie_role(cookie: str, settings: ServerSettings) -> Role | None:
    for role in (READ, WRITE):
        if cookie.startswith(f"{role}."):
            token = _token(settings, role)
            valid = token is not None and token_matches(cookie, cookie_value(role, token))
            return role if valid else None
    return None


def throttled(request: web.Request) -> tuple[str, int | None]:
    """The client's address, and how many seconds it must wait before its next token (None:
    it may try now)."""
    client = request.app[PROXIES].client(request)
    return client, request.app[THROTTLE].retry_after(client)


def proven_role(request: web.Request) -> Role | None:
    """The role the request's credentials prove: its bearer token, else its session cookie;
    None for none, or a wrong one.

    A bearer token is a guess like any other: a client that sent too many wrong ones gets 429
    (:mod:`.throttle`) before its token is even compared. A cookie is not: it is a keyed hash
    nobody can guess, and signed-in sessions keep working whoever shares their address.
    """
    settings = request.app[SETTINGS]
    header = request.headers.get("Authorization")
    if header is not None:
        client, wait = throttled(request)
        if wait is not None:
            raise ApiError(
                429,
                f"too many wrong tokens from {client}; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        scheme, _, supplied = header.partition(" ")
        role = matching_role(supplied.strip(), settings) if scheme.lower() == "bearer" else None
        if role is None:
            request.app[THROTTLE].failed(client)
        return role
    cookie = request.cookies.get(COOKIE_NAME)
    return None if cookie is None else _cookie_role(cookie, settings)


def discard_role(settings: ServerSettings) -> Role:
    """What discarding tasks takes: the write token; with none configured, anyone may write, so
    discarding takes what reading takes."""
    return WRITE if settings.write_token is not None else READ


def may(request: web.Request, role: Role) -> bool:
    """Whether the request may ``role``: no token configured for it, or it proves it."""
    if _token(request.app[SETTINGS], role) is None:
        return True
    proven = proven_role(request)
    return proven == WRITE or proven == role


def require(request: web.Request, role: Role, action: str) -> None:
    """Refuse the request unless it may ``role`` (``action`` says what for, in the refusal):
    401 without the token, 403 signed in with the read token where the write one is needed."""
    if _token(request.app[SETTINGS], role) is None:
        return
    proven = proven_role(request)
    if proven == WRITE or proven == role:
        return
    if proven is None:
        raise ApiError(
            401,
            f"missing or wrong token: send 'Authorization: Bearer <{role} token>'",
            headers={"WWW-Authenticate": 'Bearer realm="progressista"'},
        )
    raise ApiError(
        403,
        f"the read token may only read: {action} takes the write token, sent as "
        "'Authorization: Bearer <write token>' or signed in with at /login",
    )


def origin_allowed(request: web.BaseRequest, allowed: Collection[str]) -> bool:
    """Whether a browser page from the request's ``Origin`` may open the WebSocket or send
    POST and DELETE requests.

    Programs send no Origin and are let through (tokens guard them). Pages must come from this
    server's own host (as the browser reached it, so TLS-terminating proxies keep working) or be
    listed in ``allowed_origins``.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    try:
        host = urlsplit(origin).netloc
    except ValueError:  # "http://[::1": no page's origin, so not this server's
        return False
    return host.lower() == request.host.lower()


#: The names nearly every request to a loopback server carries: answered without parsing.
_LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))


@functools.lru_cache(maxsize=256)
def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address: all of 127.0.0.0/8, and ::1.

    Asked for every request's Host: the few names a server sees are remembered, since parsing
    an address costs more than the rest of the check.
    """
    if name in _LOOPBACK_NAMES:
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


#: Methods that change something: a page on another site must not make a browser send them
#: with its cookie.
UNSAFE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def _from_another_site(request: web.BaseRequest, allowed: Collection[str]) -> bool:
    """Whether a page from another origin, not listed in ``allowed``, sent this request.

    Browsers say where a request comes from in ``Sec-Fetch-Site``, which no page can forge;
    ``Origin`` alone would not do, since under ``Referrer-Policy: no-referrer`` a browser sends
    ``Origin: null`` even for the page's own requests. Without that header (programs, old
    browsers), ``Origin`` decides. The rules are those of Go's ``http.CrossOriginProtection``.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is None:
        return not origin_allowed(request, allowed)
    if site in ("same-origin", "none"):  # the page itself, or the person (a bookmark)
        return False
    return request.headers.get("Origin") not in allowed


@web.middleware
async def site_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what a page on another site could make a browser send.

    Requests sent to a host name this server does not answer to (DNS rebinding), and requests
    that change something sent by a page from another origin (CSRF): SameSite=Strict keeps the
    session cookie off those in today's browsers; this relies neither on that nor on the CORS
    preflight. One middleware for both: each costs every request, ingest included.
    """
    settings = request.app[SETTINGS]
    if not host_allowed(request, settings.host, settings.allowed_hosts):
        raise ApiError(
            403,
            f"this server does not answer to the host name {request.host!r}; "
            "add it with --allowed-hosts",
        )
    if request.method in UNSAFE_METHODS and _from_another_site(request, settings.allowed_origins):
        raise ApiError(
            403,
            f"a page from {request.headers.get('Origin')!r} may not send {request.method} "
            "requests here; add its origin with --allowed-origins if it is yours",
        )
    return await handler(request)
