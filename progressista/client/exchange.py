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
from .outbox import FinalEvent, Outbox, Source
from .reachability import Reachability
from .tuning import REFUSED_BACKOFF_CAP, REQUEST_TIMEOUT
from .warning import warn

__all__ = [
    "Body",
    "apply_failure",
    "apply_reply",
    "build_body",
    "parse_retry_after",
    "report_dropped",
    "request_headers",
]

log = logging.getLogger("progressista.client")

#: How a refused connection is described (and told apart: it backs off less).
_REFUSED = "connection refused"


def request_headers(settings: ClientSettings) -> dict[str, str]:
    """What every POST /progress carries, from either transport."""
    headers = {"Content-Type": "application/json", "User-Agent": "progressista"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


class Body:
    """A batch as bytes, and the pending keys of its events in order (a 400 names indexes)."""

    __slots__ = ("data", "keys")

    def __init__(self, data: bytes, keys: list[str]) -> None:
        self.data = data
        self.keys = keys


def build_body(batch: dict[str, Source]) -> Body | None:
    """The JSON body for a batch, or None when no bar in it has anything to send.

    Each bar's event is read here, at send time, so it is the latest state. A bar that cannot
    produce or encode one (closed meanwhile, garbage-collected, holding an odd value) is left
    out: it must not keep the others from the server.
    """
    events: list[Event] = []
    keys: list[str] = []
    for key, source in batch.items():
        try:
            events.append(source.remote_event())
            keys.append(key)
        except LookupError:  # closed or collected since it was queued: its final state follows
            pass
        except Exception:
            log.debug("could not read a bar's state", exc_info=True)
    if not events:
        return None
    data, unencodable = encode_batch(events)
    if unencodable:
        keys = [key for index, key in enumerate(keys) if index not in set(unencodable)]
    return Body(data, keys)


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


def report_dropped(outbox: Outbox, url: str) -> None:
    """Say once that closed bars' final states had to be dropped while the server was away."""
    dropped = outbox.drop_news()
    if dropped:
        warn(
            f"{dropped} closed bars' final states were dropped while waiting for the server at "
            f"{url}: more than {outbox.max_finals} waited at once (the oldest go first)."
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
            return _REFUSED
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
    reason = describe_failure(error)
    # A refused connection is cheap to try again, and is how a restarting server looks.
    outbox.retry(batch, cap=REFUSED_BACKOFF_CAP if reason == _REFUSED else None)
    _say(reach.failed(reason))


def apply_reply(
    outbox: Outbox,
    reach: Reachability,
    batch: dict[str, Source],
    body: Body,
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
        outbox.delivered(_suggested_keepalive(reply))
        _resend_unknown(outbox, batch, reply)
    elif status == 413 and len(batch) > 1:
        outbox.shrink(batch)
    elif status == 400 and _drop_refused_events(outbox, batch, body, reply):
        pass
    elif outbox.refused(status):
        warn(_refusal(reach.url, status, reply))
    return True


def _resend_unknown(outbox: Outbox, batch: dict[str, Source], reply: bytes) -> None:
    """The server did not hold some bars it was sent an update for (discarded on the page,
    say): it stored what changed, the rest at its defaults. Send them whole, now: the outbox's
    generation moves on, as after a reconnect, so the next event of every bar carries every
    field, and these are queued again."""
    if b'"unknown"' not in reply:  # the common reply: no need to parse it
        return
    try:
        unknown = json.loads(reply)["unknown"]
    except (ValueError, KeyError, TypeError):
        return
    if not isinstance(unknown, list):
        return
    outbox.generation += 1
    for key in unknown:
        source = batch.get(key) if isinstance(key, str) else None
        if source is not None and not isinstance(source, FinalEvent):  # (finals are whole)
            outbox.put(key, source, urgent=True)


def _suggested_keepalive(reply: bytes) -> float | None:
    """The keepalive a 202 asks for, if any (a server with a short ``stale_after`` does)."""
    if b'"keepalive"' not in reply:  # the common reply: no need to parse it
        return None
    try:
        value = json.loads(reply)["keepalive"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _drop_refused_events(
    outbox: Outbox, batch: dict[str, Source], body: Body, reply: bytes
) -> bool:
    """A 400 that names the invalid events: drop those bars' states, send the others again.

    One bar the server will not take (an older server with a stricter rule, say) must not cost
    every other bar its update. False when the reply names no event (then the batch is dropped).
    """
    try:
        details = json.loads(reply)["details"]
        bad = {int(detail["index"]) for detail in details if detail.get("index") is not None}
        messages = [f"{detail.get('field')}: {detail.get('message')}" for detail in details]
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    refused = {body.keys[index] for index in bad if 0 <= index < len(body.keys)}
    if not refused:
        return False
    outbox.requeue({key: source for key, source in batch.items() if key not in refused})
    if outbox.refused(400):
        warn(
            f"the server refused the state of {len(refused)} bar"
            f"{'s' if len(refused) != 1 else ''} ({'; '.join(messages[:3])}); "
            "the other bars are sent as usual."
        )
    outbox.hurry()
    return True
