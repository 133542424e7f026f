"""``progressista demo``: a few realistic bars, some of them failing, sent to a server.

For trying the dashboard out. Every bar runs in its own thread, as workers would, and carries
the job the demo announces; the console shows them as tqdm does.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from .client import RemoteTqdm, flush
from .client.exchange import request_headers
from .connection import TIMEOUT, timed_out, unreachable
from .settings import ClientSettings

__all__ = ["demo", "refusal"]


def refusal(settings: ClientSettings) -> str | None:
    """None when the server takes progress from us; otherwise why not, in one line.

    An empty batch asks just that: the server checks the write token, stores nothing, and
    answers 202.
    """
    url = settings.url
    request = urllib.request.Request(
        f"{url}/progress", data=b"[]", headers=request_headers(settings), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
        return None
    except urllib.error.HTTPError as error:
        if error.code == 401:
            refused = "the token" if settings.token else "bars without a token"
            return (
                f"the server at {url} refused {refused} (HTTP 401); give its write token with "
                "--token or PROGRESSISTA_TOKEN"
            )
        return f"the server at {url} answered POST /progress with HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        if timed_out(error):
            return f"the server at {url} does not answer (no reply within {TIMEOUT:g} s)"
        problem = unreachable(url, error)
        if "Connection refused" in problem:
            problem += "; start one with: progressista serve"
        return problem


def demo(settings: ClientSettings, seconds: float = 20.0) -> int:
    """Send the demo's bars, as job ``demo-HHMMSS``; 1 when the server does not take them."""
    problem = refusal(settings)
    if problem is not None:
        print(f"progressista: {problem}", file=sys.stderr)
        return 1
    url = settings.url
    job = f"demo-{time.strftime('%H%M%S')}"
    print(f"Sending demo bars to {url}/ (job {job}); open it in a browser.", file=sys.stderr)
    pace = max(seconds, 0.5) / 20.0  # every scenario below is written for 20 seconds
    scenarios: list[Callable[[Bars, float, int], None]] = [
        _download,
        _training,
        _resize_images,
        _crawl,
        _export,
    ]
    bars = Bars(settings.url, settings.token, job)
    threads = [
        threading.Thread(target=scenario, args=(bars, pace, position), name=scenario.__name__)
        for position, scenario in enumerate(scenarios)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flush()
    return 0


@dataclass(frozen=True)
class Bars:
    """Where the demo's bars go, and the job they all carry."""

    url: str
    token: str | None
    job: str

    def __call__(self, position: int, **kwargs: object) -> RemoteTqdm:
        return RemoteTqdm(
            url=self.url,
            token=self.token,
            job=self.job,
            position=position,
            leave=True,
            meta={"demo": True},
            **kwargs,  # type: ignore[arg-type]  # tqdm's own keywords, each of its own type
        )


def _download(bars: Bars, pace: float, position: int) -> None:
    size = 1_300_000_000
    with bars(
        position,
        total=size,
        desc="Downloading dataset.tar",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        task_id=f"demo/download-{time.time_ns()}",
    ) as bar:
        for _ in range(100):
            time.sleep(0.14 * pace)
            bar.update(size // 100)


def _training(bars: Bars, pace: float, position: int) -> None:
    with bars(
        position, total=3, desc="Training (epochs)", task_id=f"demo/train-{time.time_ns()}"
    ) as epochs:
        for epoch in range(1, 4):
            loss = 2.0 / epoch
            for _ in range(40):
                time.sleep(0.15 * pace)
                loss *= 0.99
                epochs.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
            epochs.update(1)


def _resize_images(bars: Bars, pace: float, position: int) -> None:
    try:
        with bars(
            position,
            total=500,
            desc="Resizing images",
            unit="img",
            task_id=f"demo/resize-{time.time_ns()}",
        ) as bar:
            for index in range(500):
                time.sleep(0.02 * pace)
                if index == 312:
                    raise OSError(f"cannot identify image file 'img_{index:04d}.jpg'")
                bar.update(1)
    except OSError:
        pass  # the bar shows it as failed; the demo goes on


def _crawl(bars: Bars, pace: float, position: int) -> None:
    rng = random.Random(7)
    with bars(
        position,
        desc="Crawling example.org",
        unit="page",
        task_id=f"demo/crawl-{time.time_ns()}",
    ) as bar:
        for _ in range(240):
            time.sleep(rng.uniform(0.02, 0.1) * pace)
            bar.update(1)


def _export(bars: Bars, pace: float, position: int) -> None:
    try:
        with bars(
            position,
            total=1000,
            desc="Exporting to warehouse",
            unit="rows",
            unit_scale=True,
            task_id=f"demo/export-{time.time_ns()}",
        ) as bar:
            for batch in range(100):
                time.sleep(0.12 * pace)
                if batch == 80:
                    raise ConnectionError("warehouse closed the connection")
                bar.update(10)
    except ConnectionError:
        pass
