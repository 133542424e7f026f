"""The access log as shipped: one line a request, no secrets, and not the flood of progress posts.

A busy server takes thousands of ``POST /progress`` a second; a line for each would cost a third
of its throughput and bury the lines worth reading. Accepted posts are counted in ``/metrics``
instead; ``--access-log all`` brings their lines back.

A token belongs in the ``Authorization`` header, but people paste URLs such as
``/tasks?token=...``: the values of query parameters named like secrets are written as ``***``,
in the request line and in the ``Referer``. Behind a reverse proxy listed in
``--trusted-proxies``, the line names the client the proxy reports, not the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_log import AccessLogger

from .remote import TrustedProxies

__all__ = ["QuietAccessLogger", "SafeAccessLogger", "client_address", "redact"]

#: Query parameters whose names contain one of these hold secrets (token, access_token,
#: api_key, password, auth, session, sig...).
_SECRET_NAME = re.compile(r"token|secret|passw|pwd|auth|key|session|sig|credential", re.I)
#: ``name=value`` in a query string: after ``?``, ``&`` or ``;``, up to the next separator.
_PARAMETER = re.compile(r"(?<=[?&;])([^=&;#\s\"']+)=([^&;#\s\"']*)")


def _redacted(match: re.Match[str]) -> str:
    name = match.group(1)
    if _SECRET_NAME.search(unquote(name)):
        return f"{name}=***"
    return match.group(0)


def redact(text: str) -> str:
    """``text`` (a URL, a request line, a message quoting one) with secret query values hidden."""
    if "=" not in text:
        return text
    return _PARAMETER.sub(_redacted, text)


def client_address(request: web.BaseRequest) -> str:
    """The client, as told by a trusted proxy (``--trusted-proxies``) or seen directly."""
    proxies = getattr(request.protocol, "proxies", None)  # a Runner's protocol knows them
    if isinstance(proxies, TrustedProxies):
        return proxies.client(request)
    return request.remote or "-"


class SafeAccessLogger(AccessLogger):
    """aiohttp's access logger, with secrets in the request line and the Referer redacted, and
    the client named as a trusted proxy reports it."""

    def _format_line(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> Iterable[tuple[str | tuple[str, str], str]]:
        line = []
        for key, value in super()._format_line(request, response, time):
            if key == "remote_address":
                value = client_address(request)
            elif key in _URL_KEYS and isinstance(value, str):
                value = redact(value)
            line.append((key, value))
        return line


#: The access-log fields that carry URLs: ``%r`` and ``%{Referer}i``.
_URL_KEYS = frozenset(("first_request_line", ("request_header", "Referer")))


class QuietAccessLogger(SafeAccessLogger):
    """The safe access logger, silent for ``POST /progress`` answered with 202."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status == 202 and request.path == "/progress":
            return
        super().log(request, response, time)
