"""The ``progressista`` command: version, help, demo, and watch in a pseudo-terminal."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from progressista import __version__

from . import child
from .conftest import WAIT
from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

PROGRESSISTA = [sys.executable, "-m", "progressista.cli"]


def cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``progressista ARGS`` to its end, with the test's PROGRESSISTA_* settings left out and
    ``env`` added."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")
    }
    # The demo's last flush must not be cut short by a busy machine: delivery is what is tested.
    environment["PROGRESSISTA_FLUSH_TIMEOUT"] = str(WAIT)
    return child.run(
        [*PROGRESSISTA, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
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
    assert cli("serve", "--help").stdout.startswith(
        "usage: progressista serve [-h] [--SETTING VALUE ...]\n"
    )
    assert "(script.py | -m module | [--] command)" in cli("run", "--help").stdout
    assert "--seconds" in cli("demo", "--help").stdout
    assert "terminal" in cli("watch", "--help").stdout


def test_a_bad_command_is_one_clear_line() -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("progressista: error: argument COMMAND")


def announced_job(stderr: str) -> str:
    match = re.search(r"\(job (demo-[0-9]{6})\)", stderr)
    assert match, stderr
    return match.group(1)


def test_demo_sends_realistic_bars_some_failing_as_the_job_it_announces(
    server: ServerProcess,
) -> None:
    result = cli("demo", "--url", server.url.rstrip("/"), "--seconds", "1")
    assert result.returncode == 0, result.stderr
    job = announced_job(result.stderr)
    found = [task for task in server.tasks().values() if task["meta"].get("demo")]
    assert {task["meta"]["job"] for task in found} == {job}
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


def test_demo_fails_in_one_line_when_the_server_refuses_its_token() -> None:
    with running_server(
        ["--log-level", "warning"], env={"PROGRESSISTA_WRITE_TOKEN": "right"}
    ) as guarded:
        url = guarded.url.rstrip("/")
        advice = "give its write token with --token or PROGRESSISTA_TOKEN"
        without = cli("demo", "--url", url)
        assert (without.returncode, without.stderr) == (
            1,
            f"progressista: the server at {url} refused bars without a token (HTTP 401); "
            f"{advice}\n",
        )
        wrong = cli("demo", "--url", url, "--token", "wrong")
        assert (wrong.returncode, wrong.stderr) == (
            1,
            f"progressista: the server at {url} refused the token (HTTP 401); {advice}\n",
        )
        assert guarded.tasks() == {}
        # The token from the variable, as the help says.
        right = cli("demo", "--url", url, "--seconds", "0.1", env={"PROGRESSISTA_TOKEN": "right"})
        assert right.returncode == 0, right.stderr
        job = announced_job(right.stderr)
        assert {task["meta"]["job"] for task in guarded.tasks().values()} == {job}


@pytest.mark.parametrize("command", ["demo", "watch"])
def test_an_unreachable_server_is_named_as_such(command: str) -> None:
    url = nobody()
    args = ["demo", "--url", url] if command == "demo" else ["watch", url]
    result = cli(*args, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"progressista: cannot reach the server at {url} (")
    assert "Connection refused" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["demo", "watch"])
def test_a_host_name_that_does_not_resolve_is_named_as_such(command: str) -> None:
    url = "http://progressista.invalid:8000"  # .invalid never resolves (RFC 2606)
    # The name server's own delays must not read as a server that does not answer.
    args = ["demo", "--url", url] if command == "demo" else ["watch", url, "--timeout", str(WAIT)]
    result = cli(*args, timeout=WAIT * 2)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"progressista: cannot reach the server at {url} "
        "(the host name progressista.invalid does not resolve"
    )
    assert len(result.stderr.splitlines()) == 1


def test_watch_gives_up_on_a_server_that_accepts_and_never_answers() -> None:
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()  # connections complete in the kernel's backlog, and nothing answers
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        result = cli("watch", url, "--timeout", "0.5", timeout=WAIT)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"progressista: the server at {url} does not answer (no reply within 0.5 s; "
        "wait longer with --timeout)\n",
    )


def misuse(
    *args: str, error: str, usage: str | None = None, env: dict[str, str] | None = None
) -> Any:
    """A misuse of the command line and what it must print: the error line, after argparse's
    one-line usage when the mistake is argparse's to report."""
    return pytest.param(args, env or {}, usage, error, id=" ".join(args) or "(nothing)")


SERVE_USAGE = "usage: progressista serve [-h] [--SETTING VALUE ...]"
TOP_USAGE = "usage: progressista [-h] [--version] COMMAND ..."
WATCH_USAGE = "usage: progressista watch [-h] [--token TOKEN] [--timeout SECONDS] [URL]"
DEMO_USAGE = "usage: progressista demo [-h] [--url URL] [--token TOKEN] [--seconds SECONDS]"
NOT_A_URL = "must start with http:// or https://, not 'ftp://x'"


@pytest.mark.parametrize(
    ("args", "env", "usage", "error"),
    [
        misuse(
            "serve",
            "--bogus",
            usage=SERVE_USAGE,
            error="progressista serve: error: unrecognized arguments: --bogus",
        ),
        misuse("serve", "--port", "abc", error="progressista: --port: 'abc' is not a whole number"),
        misuse(
            "serve",
            "--port",
            "70000",
            error="progressista: --port: must be 0 to 65535, not '70000'",
        ),
        misuse(
            "serve",
            "--log-level",
            "loud",
            error="progressista: --log-level: must be debug, info, warning or error, not 'loud'",
        ),
        misuse(
            "serve",
            env={"PROGRESSISTA_LOG_LEVEL": "loud"},
            error="progressista: PROGRESSISTA_LOG_LEVEL: must be debug, info, warning or error, "
            "not 'loud'",
        ),
        misuse(
            "serve",
            "--stale-after",
            "0",
            error="progressista: --stale-after: must be more than 0, not '0'",
        ),
        misuse(
            "serve",
            env={"PROGRESSISTA_STALE_AFTER": "0"},
            error="progressista: PROGRESSISTA_STALE_AFTER: must be more than 0, not '0'",
        ),
        misuse(
            "serve",
            "--store",
            "nowhere",
            error="progressista: --store: must be 'memory' or a Redis URL (redis://host:6379/0), "
            "not 'nowhere'",
        ),
        misuse(
            "--bogus", usage=TOP_USAGE, error="progressista: error: unrecognized arguments: --bogus"
        ),
        misuse(
            usage=TOP_USAGE,
            error="progressista: error: give a command: serve, run, demo, watch or notify-test "
            "(see progressista --help)",
        ),
        misuse(
            "watch",
            "--bogus",
            usage=WATCH_USAGE,
            error="progressista watch: error: unrecognized arguments: --bogus",
        ),
        misuse(
            "watch",
            "--timeout",
            "0",
            usage=WATCH_USAGE,
            error="progressista watch: error: argument --timeout: must be more than 0, not '0'",
        ),
        misuse(
            "watch",
            "--token",
            "",
            usage=WATCH_USAGE,
            error="progressista watch: error: argument --token: is empty; leave it out to use "
            "$PROGRESSISTA_READ_TOKEN",
        ),
        misuse(
            "watch",
            "ftp://x",
            usage=WATCH_USAGE,
            error=f"progressista watch: error: argument URL: {NOT_A_URL}",
        ),
        misuse(
            "demo",
            "--bogus",
            usage=DEMO_USAGE,
            error="progressista demo: error: unrecognized arguments: --bogus",
        ),
        misuse(
            "demo",
            "--token",
            "",
            usage=DEMO_USAGE,
            error="progressista demo: error: argument --token: is empty; leave it out to use "
            "$PROGRESSISTA_TOKEN",
        ),
        misuse(
            "demo",
            "--seconds",
            "0",
            usage=DEMO_USAGE,
            error="progressista demo: error: argument --seconds: must be more than 0, not '0'",
        ),
        misuse(
            "demo",
            "--url",
            "http://",
            usage=DEMO_USAGE,
            error="progressista demo: error: argument --url: must name a host, like "
            "http://127.0.0.1:8000, not 'http://'",
        ),
        misuse(
            "demo",
            env={"PROGRESSISTA_URL": "ftp://x"},
            error=f"progressista: PROGRESSISTA_URL: {NOT_A_URL}",
        ),
        misuse(
            "run",
            "--job",
            "",
            "x.py",
            error="progressista: --job is empty; leave it out to use $PROGRESSISTA_JOB, or the "
            "program and the time",
        ),
        misuse(
            "run",
            "--token=",
            "x.py",
            error="progressista: --token is empty; leave it out to use $PROGRESSISTA_TOKEN",
        ),
        misuse("run", "--url", "ftp://x", "x.py", error=f"progressista: --url: {NOT_A_URL}"),
        misuse(
            "run",
            "x.py",
            env={"PROGRESSISTA_JOB": ".."},
            error="progressista: PROGRESSISTA_JOB '..': a job name is 1 to 200 printable "
            "characters, and not '.' or '..'",
        ),
        misuse(
            "notify-test",
            usage="usage: progressista notify-test [-h] URL",
            error="progressista notify-test: error: the following arguments are required: URL",
        ),
    ],
)
def test_a_misuse_is_at_most_two_lines_and_exit_status_2(
    args: tuple[str, ...], env: dict[str, str], usage: str | None, error: str
) -> None:
    result = cli(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ([] if usage is None else [usage]) + [error]


def test_the_server_module_names_itself_in_its_usage() -> None:
    result = child.run(
        [sys.executable, "-m", "progressista.server", "--bogus"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [
            "usage: python -m progressista.server [-h] [--SETTING VALUE ...]",
            "python -m progressista.server: error: unrecognized arguments: --bogus",
        ],
    )


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


@contextlib.contextmanager
def watching(server: ServerProcess) -> Iterator[tuple[subprocess.Popen[Any], int]]:
    """``progressista watch`` of ``server`` on a terminal of 120 by 40 (a pty), started as a
    terminal starts it (:func:`child.started`: the default SIGINT, which a shell running the
    tests may ignore); yields the process and the terminal's reading end."""
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
            yield watcher, main
    finally:
        os.close(main)


def test_watch_mirrors_the_live_bars_in_a_terminal(server: ServerProcess) -> None:
    server.post(
        [
            {
                "task_id": "watched-1",
                "desc": "Copying files",
                "n": 30,
                "total": 120,
                "unit": "file",
                "meta": {"job": "backup"},
            }
        ],
    )
    with watching(server) as (watcher, main):
        screen = read_until(
            main, ["[live]", "job backup: 0 of 1 done", "Copying files:  25%", "30/120"]
        )
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
        assert server.metric("progressista_viewers_deflate") == 1  # it offered deflate
        watcher.send_signal(signal.SIGINT)  # Ctrl-C ends watching, and that is success
        assert watcher.wait(WAIT) == 0
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
    with watching(server) as (watcher, main):
        screen = read_until(main, ["[live]", "▶ poison", "]52;c;cm0gLXJmIH4K", "files:  25%"])
        server.post([{"task_id": "poison", "n": 1}])  # and it keeps drawing
        screen += read_until(main, ["1.00/1.50"])
        assert watcher.poll() is None, screen
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(WAIT) == 0
    own = screen.count("\x1b[H\x1b[J")  # watch's own: home, clear below
    assert screen.count("\x1b") == 2 * own, repr(screen)
    assert "\x07" not in screen and "\x9b" not in screen


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


def test_make_help_shows_where_make_run_serves_and_how_to_change_it() -> None:
    root = Path(__file__).resolve().parent.parent
    # An outer make's flags and a HOST or PORT in the environment change nothing.
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {key: value for key, value in os.environ.items() if key not in outer}
    env.update(HOST="example.org", PORT="1")

    def make_help(*args: str) -> str:
        result = child.run(
            ["make", "-s", "help", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        output: str = result.stdout
        return output

    default = make_help()
    assert "on 127.0.0.1:8000 (change: make run PORT=9000 HOST=0.0.0.0)" in default
    assert "$(" not in default
    assert "on 127.0.0.1:9000 " in make_help("PORT=9000")


def test_watch_shows_the_run_task_as_a_command() -> None:
    from progressista.terminal import render

    run = {
        "task_id": "etl",
        "desc": "run etl.py",
        "state": "failed",
        "error": "exit code 3",
        "n": 2,
        "total": 3,
        "unit": "bars",
        "unit_scale": False,
        "unit_divisor": 1000,
        "rate": 0.04,
        "elapsed": 50.0,
        "postfix": "1 process, 3 bars, 0 open",
        "created_at": 0.0,
        "meta": {"role": "run", "job": "etl"},
    }
    lines = render({"etl": run}, "http://x", "live", 80, 20, now=50.0).splitlines()
    assert lines[1:3] == ["✗ run etl.py [00:50] 1 process, 3 bars, 0 open", "    exit code 3"]
