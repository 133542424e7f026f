"""How long the server's event loop is held: ``/healthz`` polled about every millisecond from
another process, each answer's latency kept with the time it was asked.

``/healthz`` does nothing but answer, so a request that takes 30 ms waited about 30 ms for the
loop; the worst latency during a step is the longest the loop was held while the step ran (plus
this machine's scheduling noise, which the idle windows measure in the same run).
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from urllib.parse import urlsplit

from .board import address

__all__ = ["LoopProbe", "Window"]

#: Seconds between one answer and the next request.
PAUSE = 0.001


def _poll(url: str, control: Connection) -> None:
    request = f"GET /healthz HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n\r\n".encode()
    sock = socket.create_connection(address(url))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples: list[tuple[float, float]] = []
    control.send("ready")
    while True:
        if control.poll():
            command = control.recv()
            control.send(samples)
            samples = []
            if command == "stop":
                return
        asked = time.monotonic()
        sock.sendall(request)
        response = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the probe's connection")
            response += chunk
            head, found, body = response.partition(b"\r\n\r\n")
            if found:
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                if len(body) >= length:
                    break
        samples.append((asked, time.monotonic() - asked))
        time.sleep(PAUSE)


@dataclass
class Window:
    """The probe's view of one step: its worst latency, and its 99th percentile."""

    label: str
    worst_ms: float
    p99_ms: float
    samples: int


class LoopProbe:
    """Polls ``/healthz`` on the server at ``url`` while in a ``with`` block.

    :meth:`window` tells the worst latency among requests that overlapped an interval of
    ``time.monotonic()`` (the same clock in every process on Linux).
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._samples: list[tuple[float, float]] = []
        self._control: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> LoopProbe:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._control = parent
        self._process = context.Process(target=_poll, args=(self._url, child), daemon=True)
        self._process.start()
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("the loop probe did not start")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._control is not None and self._process is not None:
            try:
                self._collect("stop")
            finally:
                self._process.join(5)
                if self._process.is_alive():
                    self._process.kill()

    def _collect(self, command: str = "take") -> None:
        assert self._control is not None
        self._control.send(command)
        self._samples += self._control.recv()

    def window(self, label: str, start: float, end: float) -> Window:
        """The requests that overlapped ``[start, end]``."""
        self._collect()
        latencies = sorted(
            latency for asked, latency in self._samples if asked <= end and asked + latency >= start
        )
        if not latencies:
            return Window(label, float("nan"), float("nan"), 0)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        return Window(label, latencies[-1] * 1000, p99 * 1000, len(latencies))
