"""Run ``python -m progressista.server`` as a real process, for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BANNER = "Progressista dashboard: "

#: Seconds to wait for the server to start or to stop before giving up on it (and killing it).
#: Hang detectors, not speed limits: a busy machine can take several seconds for either.
PATIENCE = 30.0


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    #: stderr lines as they arrive (log output), for tests that check what was logged.
    log: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def post(self, events: list[dict[str, Any]]) -> Any:
        """POST events to /progress, as a worker would, and return the decoded reply."""
        return self.post_to(self.url, events)

    @staticmethod
    def post_to(url: str, events: list[dict[str, Any]]) -> Any:
        """POST events to the server at ``url`` (ending in /) and return the decoded reply."""
        request = urllib.request.Request(
            f"{url}progress",
            data=json.dumps(events).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def tasks(self, query: str = "") -> dict[str, dict[str, Any]]:
        """GET /tasks (``query`` like ``"?job=etl"``): every task by id."""
        with urllib.request.urlopen(f"{self.url}tasks{query}", timeout=30) as response:
            found: dict[str, dict[str, Any]] = json.load(response)["tasks"]
        return found

    def metric(self, name: str) -> float:
        """One sample of its ``GET /metrics`` (see :func:`metric`)."""
        return metric(self.url, name)

    def stop(self, signum: signal.Signals = signal.SIGINT) -> int:
        """Ctrl-C (or ``signum``), as a person would, and the exit code.

        The server handles SIGINT and SIGTERM on its event loop, which also overrides a
        disposition to ignore them inherited from the shell. Killed if it does not stop in time.
        """
        if not _stop(self.process, signum):
            raise RuntimeError(f"the server ignored {signum.name} and was killed")
        return self.process.returncode


def metric(url: str, name: str) -> float:
    """One sample of ``GET /metrics`` of the server at ``url`` (ending in /), such as
    ``progressista_viewers`` or ``progressista_tasks{state="stale"}``."""
    with urllib.request.urlopen(f"{url}metrics", timeout=60) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise LookupError(f"/metrics has no {name}")


def _stop(process: subprocess.Popen[str], signum: signal.Signals) -> bool:
    """Send ``signum`` unless it has exited and wait; kill it if it does not stop in time.

    True when it stopped by itself.
    """
    if process.poll() is not None:
        return True
    process.send_signal(signum)
    try:
        process.wait(PATIENCE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


@contextlib.contextmanager
def running_server(
    args: Sequence[str] = (),
    *,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
    startup_timeout: float = PATIENCE,
    module: str = "progressista.server",
) -> Iterator[ServerProcess]:
    """Start the server on a free port (unless ``args`` name one) and wait for its banner.

    Afterwards it is stopped as by :meth:`ServerProcess.stop`, and killed if it will not stop.
    ``module`` is what ``python -m`` runs: another entry point that serves the same way (the
    benchmarks' loop monitor) takes ``args`` as its own. ``preexec_fn`` runs in the child
    before the server starts (to set its resource limits).
    """
    if "--port" not in args:
        args = [*args, "--port", "0"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [python, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=cwd,
        preexec_fn=preexec_fn,
    )
    assert process.stdout is not None and process.stderr is not None
    log: list[str] = []
    log_reader = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)
    log_reader.start()
    found: list[str] = []
    ready = threading.Event()

    def read_banner() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(BANNER):
                found.append(line[len(BANNER) :].strip())
                ready.set()
        ready.set()

    banner_reader = threading.Thread(target=read_banner, daemon=True)
    banner_reader.start()
    try:
        if not ready.wait(startup_timeout) or not found:
            process.kill()
            process.wait()
            raise RuntimeError(f"the server did not start: {''.join(log)[-2000:]}")
        server = ServerProcess(process, found[0].replace("localhost", "127.0.0.1"), log)
        yield server
    finally:
        _stop(process, signal.SIGINT)
        # The readers end at EOF once the process is gone; then the pipes can be closed.
        log_reader.join(5)
        banner_reader.join(5)
        process.stdout.close()
        process.stderr.close()
