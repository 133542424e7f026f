"""The ``progressista`` command: version, help, demo, and watch in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from progressista import __version__

from . import child
from .conftest import WAIT
from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

PROGRESSISTA = [sys.executable, "-m", "progressista.cli"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
    # The demo's last flush must not be cut short by a busy machine: delivery is what is tested.
    env["PROGRESSISTA_FLUSH_TIMEOUT"] = str(WAIT)
    return subprocess.run(
        [*PROGRESSISTA, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(["--log-level", "warning"]) as process:
        yield process


def nobody() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_version_and_help() -> None:
    assert cli("--version").stdout == f"progressista {__version__}\n"
    top = cli("--help").stdout
    for command in ("serve", "run", "demo", "watch"):
        assert command in top
    assert "python -m progressista.server" in cli("serve", "--help").stdout
    assert "(script.py | -m module | -- command)" in cli("run", "--help").stdout
    assert "--seconds" in cli("demo", "--help").stdout
    assert "terminal" in cli("watch", "--help").stdout


def test_a_bad_command_is_one_clear_line() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("progressista: error: argument COMMAND")


def test_demo_sends_realistic_bars_some_failing(server: ServerProcess) -> None:
    result = cli("demo", "--url", server.url.rstrip("/"), "--seconds", "1")
    assert result.returncode == 0, result.stderr
    found = [task for task in server.tasks().values() if task["meta"].get("demo")]
    states = {t["desc"]: t["state"] for t in found}
    assert states == {
        "Downloading dataset.tar": "completed",
        "Training (epochs)": "completed",
        "Resizing images": "failed",
        "Crawling example.org": "completed",
        "Exporting to warehouse": "failed",
    }
    failed = {t["desc"]: t["error"] for t in found if t["state"] == "failed"}
    assert failed["Resizing images"] == "OSError: cannot identify image file 'img_0312.jpg'"


@pytest.mark.parametrize("command", ["demo", "watch"])
def test_an_unreachable_server_is_named_as_such(command: str) -> None:
    url = nobody()
    args = ["demo", "--url", url] if command == "demo" else ["watch", url]
    result = cli(*args, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"progressista: cannot reach the server at {url} (")
    assert "Connection refused" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def read_until(fd: int, wanted: list[str], timeout: float = WAIT) -> str:
    """Read a pseudo-terminal until every string in ``wanted`` has been seen."""
    seen = ""
    deadline = time.monotonic() + timeout
    while not all(text in seen for text in wanted):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"never saw {wanted!r} in:\n{seen[-3000:]}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                seen += os.read(fd, 65536).decode(errors="replace")
            except OSError:  # the process closed the terminal
                break
    return seen


def test_watch_mirrors_the_live_bars_in_a_terminal(server: ServerProcess) -> None:
    server.post(
        [{"task_id": "watched-1", "desc": "Copying files", "n": 30, "total": 120, "unit": "file"}],
    )
    main, terminal = pty.openpty()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
    env.update(COLUMNS="120", LINES="40", TERM="xterm")
    try:
        with child.started(
            [*PROGRESSISTA, "watch", server.url.rstrip("/")],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=env,
        ) as watcher:
            os.close(terminal)  # the watcher holds it now
            screen = read_until(main, ["[live]", "Copying files:  25%", "30/120"])
            assert "\x1b[H\x1b[J" in screen  # redrawn in place
            server.post(
                [
                    {"task_id": "watched-1", "n": 120, "status": "close"},
                    {
                        "task_id": "watched-2",
                        "desc": "Exploding",
                        "status": "error",
                        "error": "ValueError: no",
                    },
                ],
            )
            screen = read_until(main, ["Copying files: 100%", "120/120", "ValueError: no"])
            assert "✓ Copying files" in screen and "✗ Exploding" in screen
            watcher.send_signal(signal.SIGINT)  # Ctrl-C ends watching, and that is success
            assert watcher.wait(WAIT) == 0
    finally:
        os.close(main)


def test_watch_shows_a_line_per_job_above_the_bars() -> None:
    from progressista.terminal import render

    job = {
        "job": "nightly-etl",
        "run": 2,
        "state": "running",
        "tasks": {"active": 2, "stale": 0, "completed": 3, "failed": 1},
        "size": 10,
        "fraction": 0.56,
        "eta": 125.0,
        "finished_at": None,
        "updated_at": 5.0,
    }
    task = {
        "task_id": "shard-1",
        "desc": "Loading",
        "state": "active",
        "n": 5,
        "total": 10,
        "unit": "it",
        "unit_scale": False,
        "unit_divisor": 1000,
        "rate": 1.0,
        "elapsed": 5.0,
        "postfix": "",
        "created_at": 0.0,
    }
    screen = render({"shard-1": task}, "http://x", "live", 80, 20, now=5.0, jobs={"j": job})
    lines = screen.splitlines()
    assert lines[1] == "▶ job nightly-etl (run 2): 3 of 10 done, 1 failed  56% · ETA 02:05"
    assert lines[2].startswith("▶ Loading:  50%")
