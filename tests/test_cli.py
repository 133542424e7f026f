"""The ``progressista`` command: version, help, demo, and watch in a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from progressista import __version__

from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

PROGRESSISTA = [sys.executable, "-m", "progressista.cli"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
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


def read_until(fd: int, wanted: list[str], timeout: float = 15.0) -> str:
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
    main, child = pty.openpty()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
    env.update(COLUMNS="120", LINES="40", TERM="xterm")
    watcher = subprocess.Popen(
        [*PROGRESSISTA, "watch", server.url.rstrip("/")],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    try:
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
    finally:
        watcher.send_signal(2)
        watcher.wait(10)
        os.close(main)
    assert watcher.returncode == 0


def test_watch_survives_what_writers_send_and_writes_none_of_their_escapes(
    server: ServerProcess,
) -> None:
    server.post(
        [
            {
                "task_id": "poison",
                "n": 0,
                "total": 1.5,
                "unit_scale": True,
                "unit_divisor": 5e-324,
                "rate": 5e-324,
            },
            {
                "task_id": "escapes",
                "desc": "Copying \x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x07\x1b[2J\x9b31m files",
                "n": 1,
                "total": 4,
            },
        ],
    )
    main, child = pty.openpty()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
    env.update(COLUMNS="120", LINES="40", TERM="xterm")
    watcher = subprocess.Popen(
        [*PROGRESSISTA, "watch", server.url.rstrip("/")],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    try:
        screen = read_until(main, ["[live]", "▶ poison", "]52;c;cm0gLXJmIH4K", "files:  25%"])
        server.post([{"task_id": "poison", "n": 1}])  # and it keeps drawing
        screen += read_until(main, ["1.00/1.50"])
        assert watcher.poll() is None, screen
    finally:
        watcher.send_signal(2)
        watcher.wait(10)
        os.close(main)
    assert watcher.returncode == 0
    own = screen.count("\x1b[H\x1b[J")  # watch's own: home, clear below
    assert screen.count("\x1b") == 2 * own, repr(screen)
    assert "\x07" not in screen and "\x9b" not in screen
