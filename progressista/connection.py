"""Why a server could not be reached, in one line a person can act on (``watch``, ``demo``).

aiohttp and urllib each wrap the operating system's error their own way, and its errno alone
misleads: a name that does not resolve carries a resolver code, which ``os.strerror`` reads as
"Unknown error -2". So the cause is unwrapped first and described by what it is.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

__all__ = ["TIMEOUT", "timed_out", "unreachable"]

#: Seconds a server has to answer a command's first request before the command gives up
#: (``watch --timeout`` changes it for watch).
TIMEOUT = 5.0

#: Resolver codes meaning "no such name", said plainly; any other is shown after it.
_NO_SUCH_NAME = {
    code for code in (getattr(socket, name, None) for name in ("EAI_NONAME", "EAI_NODATA")) if code
}


def _cause(error: BaseException) -> BaseException:
    """The operating system's error under aiohttp's (``os_error``) or urllib's (``reason``)."""
    for attribute in ("os_error", "reason"):
        inner = getattr(error, attribute, None)
        if isinstance(inner, BaseException):
            return _cause(inner)
    return error


def timed_out(error: BaseException) -> bool:
    """The server (or the name server) took longer than the caller would wait."""
    return isinstance(_cause(error), TimeoutError)


def unreachable(url: str, error: BaseException) -> str:
    """``cannot reach the server at URL (why)``: refused, a name that does not resolve…"""
    cause = _cause(error)
    number = getattr(cause, "errno", None)
    if isinstance(cause, socket.gaierror) or (isinstance(number, int) and number < 0):
        host = urlsplit(url).hostname or url
        strerror = getattr(cause, "strerror", None)
        detail = "" if number in _NO_SUCH_NAME or not strerror else f": {strerror}"
        reason = f"the host name {host} does not resolve{detail}"
    elif isinstance(number, int) and number > 0:
        reason = os.strerror(number)  # "Connection refused", not asyncio's "Connect call failed"
    else:
        reason = str(cause) or type(cause).__name__
    return f"cannot reach the server at {url} ({reason})"
