"""One ``POST /progress`` exchange, for either transport: what goes out, what the reply means.

The thread sender (``http.client``) and the event-loop sender (aiohttp) differ only in how bytes
travel; the request they build and what they make of the server's answer are decided here, and
reported to the outbox.
"""

from __future__ import annotations

import json
import logging
import math

from ..schema import Event
from ..settings import ClientSettings
from .event import encode_batch
from .outbox import Outbox, Source
from .reachability import Reachability
from .tuning import REQUEST_TIMEOUT
from .warning import warn

__all__ = [
    "apply_failure",
    "apply_reply",
    "build_body",
    "parse_retry_after",
    "request_headers",
]

log = logging.getLogger("progressista.client")


def request_headers(settings: ClientSettings) -> dict[str, str]:
    """What every POST /progress carries, from either transport."""
    headers = {"Content-Type": "application/json", "User-Agent": "progressista"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


def build_body(batch: dict[str, Source]) -> bytes | None:
    """The JSON body for a batch, or None when no bar in it has anything to send.

    Each bar's event is read here, at send time, so it is the latest state. A bar that cannot
    produce or encode one (closed meanwhile, garbage-collected, holding an odd value) is left
    out: it must not keep the others from the server.
    """
    events: list[Event] = []
    for source in batch.values():
        try:
            events.append(source.remote_event())
        except LookupError:  # closed or collected since it was queued: its final state follows
            pass
        except Exception:
            log.debug("could not read a bar's state", exc_info=True)
    if not events:
        return None
    body, _ = encode_batch(events)
    return body


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; None for one that is absent or unusable.

    Only a finite, non-negative number of seconds is used (``inf``, ``nan``, ``-5`` and
    ``soon`` are ignored: the computed backoff applies); the outbox caps it like its own backoff.
    An HTTP date is not worth its parsing here: the computed backoff serves as well.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _refusal(url: str, status: int, reply: bytes) -> str:
    try:
        reason = json.loads(reply)["error"]
    except (ValueError, KeyError, TypeError):
        reason = reply[:200].decode(errors="replace") or "no reason given"
    return (
        f"the server at {url} refused progress updates with HTTP {status}: "
        f"{reason}. Bars keep working; their remote state is dropped until this is fixed."
    )


def _say(message: str | None) -> None:
    if message is not None:
        warn(message)


def describe_failure(error: BaseException) -> str:
    """Why an attempt failed, in the words a user would search for.

    aiohttp wraps the operating system's error (``os_error``), http.client raises it as is.
    """
    cause: BaseException | None = error
    for _ in range(3):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError) or type(cause).__name__.endswith("TimeoutError"):
            return f"no reply within {REQUEST_TIMEOUT:g} s"
        if cause is None:
            break
        cause = getattr(cause, "os_error", None) or cause.__cause__
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def apply_failure(
    outbox: Outbox, reach: Reachability, batch: dict[str, Source], error: BaseException
) -> None:
    """The server could not be reached: keep the batch, back off, warn if it has lasted."""
    log.debug("cannot reach %s: %r", reach.url, error)
    outbox.retry(batch)
    _say(reach.failed(describe_failure(error)))


def apply_reply(
    outbox: Outbox,
    reach: Reachability,
    batch: dict[str, Source],
    status: int,
    retry_after: str | None,
    reply: bytes,
) -> bool:
    """Tell the outbox how the server answered; False when the batch must be retried."""
    if status == 429 or status >= 500:
        outbox.retry(batch, parse_retry_after(retry_after))
        _say(reach.failed(f"HTTP {status}"))
        return False
    _say(reach.succeeded())
    if status < 300:
        outbox.delivered()
    elif status == 413 and len(batch) > 1:
        outbox.shrink(batch)
    elif outbox.refused(status):
        warn(_refusal(reach.url, status, reply))
    return True
