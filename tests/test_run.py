"""``progressista run`` with real processes: unaware programs, pools, exit codes, Ctrl-C."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import child
from .conftest import WAIT
from .server_process import ServerProcess

pytestmark = pytest.mark.slow

PROGRAMS = Path(__file__).resolve().parent / "programs"
PROGRESSISTA = [sys.executable, "-m", "progressista.cli"]


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without its PROGRESSISTA_* settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROGRESSISTA")}
    # What the tests check is what arrived: a busy machine must not cut the exit flush short.
    env["PROGRESSISTA_FLUSH_TIMEOUT"] = str(WAIT)
    return {**env, **extra}


def run(
    server_process: ServerProcess, *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``progressista run`` to its end, with no terminal; nothing it started outlives the test.

    No time limit of its own: a program's run may take a while on a busy machine, and a hang
    ends at the test's timeout, after which its session is killed all the same.
    """
    return child.run(
        [*PROGRESSISTA, "run", "--url", server_process.url.rstrip("/"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env or environment(),
        **kwargs,
    )


def tasks(server_process: ServerProcess, job: str) -> dict[str, dict[str, Any]]:
    return server_process.tasks(f"?job={job}")


def bars(server_process: ServerProcess, job: str) -> dict[str, dict[str, Any]]:
    """The job's bars by description, without the run's own task."""
    return {
        t["desc"]: t for t in tasks(server_process, job).values() if t["meta"].get("role") != "run"
    }


def test_a_plain_tqdm_script_shows_its_bars_under_its_job(server_process: ServerProcess) -> None:
    result = run(
        server_process, "--job", "plain", "--meta", "team=data", str(PROGRAMS / "plain_tqdm.py")
    )
    assert result.returncode == 0, result.stderr
    assert "plain loop: 100%" in result.stderr  # the console output is tqdm's own
    found = bars(server_process, "plain")
    assert {desc: (t["state"], t["n"]) for desc, t in found.items()} == {
        "plain loop": ("completed", 50),
        "auto range": ("completed", 20),
    }
    for task in found.values():
        assert (task["meta"]["parent"], task["meta"]["team"]) == ("plain", "data")
    the_run = tasks(server_process, "plain")["plain"]
    assert (the_run["state"], the_run["meta"]["role"]) == ("completed", "run")
    assert the_run["desc"].startswith("run ") and "plain_tqdm.py" in the_run["desc"]


def test_an_exit_code_fails_the_run_and_passes_through(server_process: ServerProcess) -> None:
    result = run(server_process, "--job", "three", str(PROGRAMS / "plain_tqdm.py"), "3")
    assert result.returncode == 3
    the_run = tasks(server_process, "three")["three"]
    assert (the_run["state"], the_run["error"]) == ("failed", "exit code 3")
    assert {t["state"] for t in bars(server_process, "three").values()} == {"completed"}


def test_an_uncaught_exception_fails_the_run_and_its_bar(server_process: ServerProcess) -> None:
    result = run(server_process, "--job", "crash", str(PROGRAMS / "plain_tqdm.py"), "crash")
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith("RuntimeError: disk full")
    the_run = tasks(server_process, "crash")["crash"]
    assert (the_run["state"], the_run["error"]) == (
        "failed",
        "RuntimeError: disk full (exit code 1)",
    )
    crashed = bars(server_process, "crash")["crashing loop"]
    assert (crashed["state"], crashed["n"], crashed["error"]) == (
        "failed",
        4,
        "RuntimeError: disk full",
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_every_multiprocessing_worker_is_patched(
    server_process: ServerProcess, method: str
) -> None:
    result = run(server_process, "--job", f"pool-{method}", str(PROGRAMS / "pool_tqdm.py"), method)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 1, 2, 3]"
    found = bars(server_process, f"pool-{method}")
    assert {desc: (t["state"], t["n"]) for desc, t in found.items()} == {
        f"worker {i}": ("completed", 30) for i in range(4)
    }
    assert {t["meta"]["parent"] for t in found.values()} == {f"pool-{method}"}


def test_module_mode_and_python_subprocesses(server_process: ServerProcess) -> None:
    result = run(
        server_process,
        "--job",
        "module",
        "-m",
        "tests.programs.spawn_child",
        cwd=PROGRAMS.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert set(bars(server_process, "module")) == {"parent", "plain loop", "auto range"}


def test_any_command_that_starts_python_is_patched(server_process: ServerProcess) -> None:
    result = run(
        server_process,
        "--job",
        "shell",
        "--",
        "sh",
        "-c",
        f'"{sys.executable}" "{PROGRAMS / "plain_tqdm.py"}" 5',
    )
    assert result.returncode == 5
    assert set(bars(server_process, "shell")) == {"plain loop", "auto range"}
    assert tasks(server_process, "shell")["shell"]["error"] == "exit code 5"


def test_python_and_its_script_run_as_one_would_type_them(server_process: ServerProcess) -> None:
    """``run python train.py``, as after ``time`` or ``nohup``, and a virtualenv's python by
    its path: "no such file", and a SyntaxError from running the interpreter as a script."""
    python = Path(sys.executable)  # (the virtualenv's: found by its place, not resolved)
    env = environment(PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}")
    for job, name in (("by-name", python.name), ("by-path", str(python))):
        result = run(
            server_process, "--job", job, name, str(PROGRAMS / "plain_tqdm.py"), "0", env=env
        )
        assert result.returncode == 0, result.stderr
        assert set(bars(server_process, job)) == {"plain loop", "auto range"}


@contextlib.contextmanager
def sleepy_run(
    server_process: ServerProcess,
    job: str,
    *,
    terminal: bool,
    program: Path = PROGRAMS / "sleepy_tqdm.py",
) -> Iterator[subprocess.Popen[str]]:
    """``progressista run`` of a slow loop (``program``, which prints "ready" once it is
    under way) in a session of its own, once the loop is going.

    With ``terminal``, the session gets a pseudo-terminal as its controlling terminal and the
    run is its foreground job, as when a person types the command; without, it has none. Either
    way SIGINT has its default disposition, as a shell that does not ignore it would leave it.
    """
    main, tty = pty.openpty() if terminal else (None, None)

    def take_terminal() -> None:  # in the child, after setsid(): fd 0 is the pty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        with child.started(
            [
                *PROGRESSISTA,
                "run",
                "--url",
                server_process.url.rstrip("/"),
                "--job",
                job,
                str(program),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            stdin=tty if terminal else subprocess.DEVNULL,
            preexec_fn=take_terminal if terminal else None,
        ) as runner:
            if tty is not None:
                os.close(tty)
                tty = None
            assert runner.stdout is not None
            assert runner.stdout.readline().strip() == "ready"
            yield runner
    finally:
        # Closing the terminal hangs up its session: only once the run has been ended.
        for fd in (tty, main):
            if fd is not None:
                os.close(fd)


def test_ctrl_c_reaches_the_program_and_the_run_dies_by_it(server_process: ServerProcess) -> None:
    with sleepy_run(server_process, "ctrl-c", terminal=True) as runner:
        os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C does: the whole group gets it
        _, err = runner.communicate(timeout=WAIT)
    assert runner.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in err
    the_run = tasks(server_process, "ctrl-c")["ctrl-c"]
    assert the_run["state"] == "failed"
    assert the_run["error"].startswith("KeyboardInterrupt")
    assert bars(server_process, "ctrl-c")["sleepy"]["state"] == "failed"


def test_usage_errors_are_one_line(server_process: ServerProcess) -> None:
    for args, message in [
        ([], "progressista: run: what should I run? (see progressista run --help)\n"),
        (["missing.py"], "progressista: cannot run 'missing.py': no such file\n"),
        (["--meta", "novalue", "x.py"], "progressista: --meta takes key=value, not 'novalue'\n"),
        (
            ["--frobnicate"],
            "progressista: run: unknown option '--frobnicate' (see progressista run --help)\n",
        ),
    ]:
        result = run(server_process, *args)
        assert (result.returncode, result.stderr) == (2, message), args


def test_death_by_sigkill_passes_through(server_process: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "oom.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = run(server_process, "--job", "killed", str(script))
    assert result.returncode == -signal.SIGKILL
    assert "Traceback" not in result.stderr
    assert tasks(server_process, "killed")["killed"]["error"] == "killed by SIGKILL"


def test_sigint_sent_to_the_runner_alone_reaches_the_program(server_process: ServerProcess) -> None:
    with sleepy_run(
        server_process, "int-runner", terminal=False
    ) as runner:  # SIGINT for the runner
        runner.send_signal(signal.SIGINT)  # the runner only, not its process group
        runner.communicate(timeout=WAIT)
    assert runner.returncode == -signal.SIGINT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_runner_killed_with_sigkill_takes_its_program_with_it(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """SIGKILL cannot be passed on: the program ran on as an orphan that stopping the run did
    not stop. It is now sent SIGTERM when the runner dies."""
    script = tmp_path / "forever.py"
    script.write_text(
        "import itertools, time\nfrom tqdm import tqdm\nfor i in tqdm(itertools.count()):\n"
        "    if i == 1:\n        print('ready', flush=True)\n    time.sleep(0.01)\n"
    )
    with sleepy_run(server_process, "orphan", terminal=False, program=script) as runner:
        deadline = time.monotonic() + WAIT
        while "program_pid" not in (meta := _run_meta(server_process, "orphan")):
            assert time.monotonic() < deadline, meta
            time.sleep(0.05)
        program = meta["program_pid"]
        runner.kill()
        runner.wait(timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while _alive(program) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(program)


def _run_meta(server_process: ServerProcess, job: str) -> dict[str, Any]:
    the_run = tasks(server_process, job).get(job)
    return {} if the_run is None else the_run["meta"]


def _alive(pid: int) -> bool:
    """Running (not gone, and not a zombie waiting for whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigint_to_the_runners_group_without_a_terminal_reaches_the_program_once(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """A CI job cancelled, or a supervisor, signals the whole group with no terminal: the
    program got SIGINT from the group, then again from the runner, and the second
    KeyboardInterrupt cut its own clean-up short (or closed its bar as completed)."""
    script = tmp_path / "careful.py"
    script.write_text(
        "import time\nfrom tqdm import tqdm\ntry:\n"
        "    for i in tqdm(range(100000), desc='careful'):\n"
        "        if i == 1:\n            print('ready', flush=True)\n"
        "        time.sleep(0.01)\n"
        "except KeyboardInterrupt:\n"
        "    time.sleep(0.5)  # saving a checkpoint\n"
        "    print('saved', flush=True)\n"
    )
    with sleepy_run(server_process, "careful", terminal=False, program=script) as runner:
        os.killpg(runner.pid, signal.SIGINT)
        out, _ = runner.communicate(timeout=WAIT)
    assert (runner.returncode, out.strip()) == (0, "saved")
    assert bars(server_process, "careful")["careful"]["state"] == "failed"


def test_a_program_run_from_a_terminal_reads_it_whatever_its_stdin(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """``progressista run … < /dev/null`` typed in a terminal: put in a process group of its
    own for want of a terminal on stdin, the program was stopped (SIGTTIN) the moment it read
    the terminal (getpass does)."""
    script = tmp_path / "asks.py"
    script.write_text("with open('/dev/tty') as t:\n    print('read', t.readline().strip())\n")
    main, opened = pty.openpty()
    tty: int | None = opened

    def take_terminal_then_give_up_stdin() -> None:  # in the child, after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)

    try:
        argv = [*PROGRESSISTA, "run", "--url", server_process.url.rstrip("/"), str(script)]
        with child.started(
            argv,
            stdin=opened,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            preexec_fn=take_terminal_then_give_up_stdin,
        ) as runner:
            os.close(opened)
            tty = None
            os.write(main, b"hello\n")
            out, err = runner.communicate(timeout=WAIT)
        assert (runner.returncode, out.strip()) == (0, "read hello"), err
    finally:
        for fd in (tty, main):
            if fd is not None:
                os.close(fd)


def test_a_server_that_cannot_be_reached_is_said_once_for_the_whole_run(refused_url: str) -> None:
    """The program said its bars could not be delivered, and then the runner said the same of
    its own task: two lines for one fact."""
    result = child.run(
        [*PROGRESSISTA, "run", "--url", refused_url, str(PROGRAMS / "plain_tqdm.py")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("could not be delivered") == 1, result.stderr


def test_a_bad_job_name_is_one_line(server_process: ServerProcess) -> None:
    result = run(server_process, "--job", "..", str(PROGRAMS / "plain_tqdm.py"))
    assert result.returncode == 2
    assert result.stderr == (
        "progressista: --job '..': a job name is 1 to 200 printable characters, "
        "and not '.' or '..'\n"
    )


def test_a_failing_sitecustomize_it_shadows_is_reported(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text("import no_such_module_here\n")
    env = environment(PYTHONPATH=str(tmp_path))
    result = run(server_process, "--job", "chained", str(PROGRAMS / "plain_tqdm.py"), env=env)
    assert result.returncode == 0
    assert "Error in sitecustomize" in result.stderr
    assert "No module named 'no_such_module_here'" in result.stderr


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_shards_that_raised_or_were_terminated_are_failures(
    server_process: ServerProcess, method: str
) -> None:
    job = f"shards-{method}"
    result = run(server_process, "--job", job, str(PROGRAMS / "shards.py"), method)
    assert result.returncode == 0, result.stderr
    assert "shard 0 failed: bad row 120" in result.stdout
    found = bars(server_process, job)
    raised, terminated = found["shard 0"], found["shard 1"]
    assert (raised["state"], raised["n"]) == ("failed", 120)
    assert raised["error"] in (
        "ValueError: bad row 120",  # CPython 3.12+ names the exception the pool caught
        "an exception left the loop at shards.py:14",
    )
    assert (terminated["state"], terminated["n"], terminated["error"]) == (
        "failed",
        100,
        "cut short: the process was terminated (SIGTERM) at 100/200",
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_killed_with_its_bar_open_fails_the_bar(
    server_process: ServerProcess, method: str
) -> None:
    """The OOM killer takes a multiprocessing worker. A forked one wrote no start of its own,
    so its bar stayed active (then stale) and the job read completed."""
    job = f"killed-{method}"
    result = run(server_process, "--job", job, str(PROGRAMS / "killed_worker.py"), method)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "-9"
    doomed = bars(server_process, job)["doomed worker"]
    assert (doomed["state"], doomed["n"]) == ("failed", 25)
    assert doomed["error"].startswith("cut short: its process (")
    assert doomed["error"].endswith(") ended without closing it")
    # The run's own task counts it closed, as it does the others.
    the_run = tasks(server_process, job)[job]
    assert (the_run["n"], the_run["meta"]["bars_open"]) == (the_run["meta"]["bars"], 0)


def test_a_bar_the_exit_ended_counts_as_closed_for_the_run(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    """A bar left open when the program ends is failed by its exit flush ("cut short: the
    process exited with the bar open"); the run's task still counted it open."""
    script = tmp_path / "unclosed.py"
    script.write_text(
        "from tqdm import tqdm\nbar = tqdm(total=5)\nbar.update(2)\n"
        "for _ in tqdm(range(3)):\n    pass\n"
    )
    result = run(server_process, "--job", "unclosed", str(script))
    assert result.returncode == 0, result.stderr
    the_run = tasks(server_process, "unclosed")["unclosed"]
    assert (the_run["n"], the_run["meta"]["bars"], the_run["meta"]["bars_open"]) == (2, 2, 0)


def test_the_run_task_says_what_ran_and_how_it_went(server_process: ServerProcess) -> None:
    result = run(server_process, "--job", "described", str(PROGRAMS / "plain_tqdm.py"))
    assert result.returncode == 0, result.stderr
    the_run = tasks(server_process, "described")["described"]
    assert (the_run["state"], the_run["n"], the_run["total"], the_run["unit"]) == (
        "completed",
        2,
        2,
        "bars",
    )
    assert the_run["postfix"] == "1 process, 2 bars, 0 open"
    meta = the_run["meta"]
    assert (meta["role"], meta["processes"], meta["bars"], meta["bars_open"]) == ("run", 1, 2, 0)
    assert meta["exit_status"] == 0 and "signal" not in meta
    assert meta["command"].endswith("plain_tqdm.py") and meta["program_pid"] > 0


def test_bars_of_a_program_killed_by_a_signal_fail_at_once(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    script = tmp_path / "oom.py"
    script.write_text(
        "import os, signal, time\n"
        "from tqdm import tqdm\n"
        "bar = tqdm(total=100, desc='loading', mininterval=0)\n"
        "bar.update(40)\n"
        "from progressista.client import flush\n"
        "flush()  # the server_process has the bar at 40 before the kill\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = run(server_process, "--job", "oom", str(script))
    assert result.returncode == -signal.SIGKILL
    loading = bars(server_process, "oom")["loading"]
    assert (loading["state"], loading["n"], loading["error"]) == (
        "failed",
        40,
        "killed by SIGKILL",
    )
    the_run = tasks(server_process, "oom")["oom"]
    assert (the_run["error"], the_run["meta"]["signal"], the_run["meta"]["exit_status"]) == (
        "killed by SIGKILL",
        "SIGKILL",
        -9,
    )
