"""Putting tasks on a server's board and reading things back over plain HTTP, cheaply.

Filling a million tasks through ``POST /progress`` takes a few seconds with msgspec and one
kept-alive connection; reading a big answer with a raw socket that throws the bytes away keeps the
reading side's CPU out of the measurement.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

__all__ = ["address", "bar_event", "drain", "fill", "job_of", "post"]


def address(url: str) -> tuple[str, int]:
    """(host, port) of a server URL such as ``http://127.0.0.1:8000/``."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r} names no host and port")
    return parts.hostname, parts.port


def job_of(index: int) -> str:
    """The ``job`` label of the ``index``-th stored task: one in a hundred is ``x``."""
    return "x" if index % 100 == 0 else f"job-{index % 97}"


def bar_event(task_id: str, n: int, *, status: str = "update", job: str = "etl") -> dict[str, Any]:
    """A typical bar's whole state, as RemoteTqdm sends it at start and close and at least every
    ``FULL_STATE_EVERY`` seconds (between those it sends only ``n``, ``elapsed``, ``rate``,
    ``timestamp`` and ``seq``, and what else changed), less ``seq`` (benchmarks replay the same
    bodies, which a ``seq`` would make the server ignore). Whole states are the dearer case for
    the server; the bare handler decodes the same bodies."""
    return {
        "task_id": task_id,
        "status": status,
        "n": n,
        "total": 100_000,
        "desc": "Downloading shards",
        "unit": "it",
        "unit_scale": False,
        "unit_divisor": 1000,
        "postfix": "loss=0.123",
        "elapsed": 12.5 + n / 100,
        "rate": 98.7,
        "timestamp": time.time(),
        "meta": {"host": "worker-7", "pid": 4242, "job": job},
    }


class _Poster:
    def __init__(self, url: str) -> None:
        host, port = address(url)
        self._connection = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, events: list[dict[str, Any]]) -> Any:
        self._connection.request(
            "POST",
            "/progress",
            msgspec.json.encode(events),
            {"Content-Type": "application/json"},
        )
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 202:
            raise RuntimeError(f"POST /progress answered {response.status}: {body[:300]!r}")
        return msgspec.json.decode(body)

    def close(self) -> None:
        self._connection.close()


def post(url: str, events: list[dict[str, Any]]) -> Any:
    """POST one batch; the decoded reply."""
    poster = _Poster(url)
    try:
        return poster.post(events)
    finally:
        poster.close()


def fill(
    url: str,
    ids: Iterable[int],
    make: Callable[[int], dict[str, Any]],
    batch: int = 1000,
) -> int:
    """POST ``make(i)`` for every ``i`` in ``ids``, ``batch`` events per request; how many."""
    poster = _Poster(url)
    sent = 0
    pending: list[dict[str, Any]] = []
    try:
        for index in ids:
            pending.append(make(index))
            if len(pending) == batch:
                poster.post(pending)
                sent += len(pending)
                pending = []
        if pending:
            poster.post(pending)
            sent += len(pending)
    finally:
        poster.close()
    return sent


def drain(url: str, path: str, method: str = "GET") -> tuple[int, int]:
    """Send one request and read the whole answer, throwing it away: (status, bytes read)."""
    parts = urlsplit(url)
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(address(url), timeout=120) as sock:
        sock.sendall(request)
        buffer = bytearray(1024 * 1024)
        first = b""
        total = 0
        while True:
            received = sock.recv_into(buffer)
            if not received:
                break
            if not first:
                first = bytes(buffer[:received])
            total += received
    status = int(first.split(b" ", 2)[1]) if first else 0
    return status, total
