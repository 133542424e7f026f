"""``progressista demo``: a few realistic bars, some of them failing, sent to a server.

For trying the dashboard out. Every bar runs in its own thread, as workers would; the console
shows them as tqdm does.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from .client import RemoteTqdm, flush
from .connection import TIMEOUT, timed_out, unreachable

__all__ = ["demo", "reachable"]


def reachable(url: str) -> str | None:
    """None when the server answers ``/healthz``; otherwise why not, in one line."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=TIMEOUT) as response:
            response.read()
        return None
    except urllib.error.HTTPError as error:
        return f"the server at {url} answered /healthz with HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        if timed_out(error):
            return f"the server at {url} does not answer (no reply within {TIMEOUT:g} s)"
        problem = unreachable(url, error)
        if "Connection refused" in problem:
            problem += "; start one with: progressista serve"
        return problem


def demo(url: str, seconds: float = 20.0) -> int:
    problem = reachable(url)
    if problem is not None:
        print(f"progressista: {problem}", file=sys.stderr)
        return 1
    job = f"demo-{time.strftime('%H%M%S')}"
    print(f"Sending demo bars to {url}/ (job {job}); open it in a browser.", file=sys.stderr)
    pace = max(seconds, 0.5) / 20.0  # every scenario below is written for 20 seconds
    scenarios: list[Callable[[str, float, int], None]] = [
        _download,
        _training,
        _resize_images,
        _crawl,
        _export,
    ]
    threads = [
        threading.Thread(target=scenario, args=(url, pace, position), name=scenario.__name__)
        for position, scenario in enumerate(scenarios)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flush()
    return 0


def _bar(url: str, position: int, **kwargs: object) -> RemoteTqdm:
    return RemoteTqdm(url=url, position=position, leave=True, meta={"demo": True}, **kwargs)  # type: ignore[arg-type]


def _download(url: str, pace: float, position: int) -> None:
    size = 1_300_000_000
    with _bar(
        url,
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


def _training(url: str, pace: float, position: int) -> None:
    with _bar(
        url, position, total=3, desc="Training (epochs)", task_id=f"demo/train-{time.time_ns()}"
    ) as epochs:
        for epoch in range(1, 4):
            loss = 2.0 / epoch
            for _ in range(40):
                time.sleep(0.15 * pace)
                loss *= 0.99
                epochs.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
            epochs.update(1)


def _resize_images(url: str, pace: float, position: int) -> None:
    try:
        with _bar(
            url,
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


def _crawl(url: str, pace: float, position: int) -> None:
    rng = random.Random(7)
    with _bar(
        url,
        position,
        desc="Crawling example.org",
        unit="page",
        task_id=f"demo/crawl-{time.time_ns()}",
    ) as bar:
        for _ in range(240):
            time.sleep(rng.uniform(0.02, 0.1) * pace)
            bar.update(1)


def _export(url: str, pace: float, position: int) -> None:
    try:
        with _bar(
            url,
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
