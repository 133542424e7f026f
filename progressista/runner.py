"""``progressista run``: start a program with every tqdm bar in it, and in its children, remote.

The program runs as a child process whose ``PYTHONPATH`` starts with
``progressista/bootstrap``: every Python it starts, directly, through ``subprocess`` or as a
``multiprocessing`` child (fork or spawn), loads that ``sitecustomize`` and patches tqdm before any
user code. Every bar carries the run's ``job``, and the run itself is a task of its own, the
parent of the job's bars: completed when the program exits with 0, failed with the exit code (and
the uncaught exception, when Python reports one) otherwise. The exit code is passed through.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from .client.bar import RemoteTqdm, check_task_id
from .client.sender import flush
from .schema import MAX_TASK_ID_CHARS
from .settings import ClientSettings, SettingError, env_name

__all__ = ["Launch", "default_job", "run"]

BOOTSTRAP = Path(__file__).resolve().parent / "bootstrap"


@dataclass
class Launch:
    """What to start: a script, a module (``-m``), or any command (``--``), with arguments."""

    kind: str  # "script" | "module" | "command"
    target: str
    args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        if self.kind == "script":
            return [sys.executable, self.target, *self.args]
        if self.kind == "module":
            return [sys.executable, "-m", self.target, *self.args]
        return [self.target, *self.args]

    def name(self) -> str:
        return os.path.basename(self.target) or self.target


def default_job(launch: Launch) -> str:
    """A job name unique to this run and readable: what ran, and when."""
    return f"{launch.name()}-{time.strftime('%Y%m%d-%H%M%S')}"


def child_environment(
    environ: Mapping[str, str], settings: ClientSettings, job: str, report: str
) -> dict[str, str]:
    env = dict(environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(BOOTSTRAP) + (os.pathsep + path if path else "")
    env[env_name("url")] = settings.url
    if settings.token:
        env[env_name("token")] = settings.token
    env[env_name("job")] = job
    env[env_name("meta")] = json.dumps({**settings.meta, "parent": job})
    env["PROGRESSISTA_RUN_REPORT"] = report
    env["PROGRESSISTA_RUN_PID"] = str(os.getpid())
    return env


def run(
    launch: Launch,
    *,
    url: str | None = None,
    token: str | None = None,
    job: str | None = None,
    meta: Mapping[str, str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Run ``launch`` to completion and return its exit status (negative: killed by a signal)."""
    base = ClientSettings.from_env(environ, url=url, token=token)
    settings = ClientSettings.from_env(
        environ, url=url, token=token, meta={**base.meta, **(meta or {})}
    )
    if job is not None:
        source, hint = "--job", ""
    elif settings.job:
        job, source, hint = settings.job, env_name("job"), ""
    else:
        job, source, hint = default_job(launch), "the default job", "; give one with --job"
    try:
        check_task_id(job)  # the job names the run's own task
    except ValueError:
        raise SettingError(
            f"{source} {job!r}: a job name is 1 to {MAX_TASK_ID_CHARS} printable characters, "
            f"and not '.' or '..'{hint}"
        ) from None
    if launch.kind == "script" and not Path(launch.target).is_file():
        raise SettingError(f"cannot run {launch.target!r}: no such file")
    argv = launch.argv()
    report_fd, report = tempfile.mkstemp(prefix="progressista-run-", suffix=".txt")
    os.close(report_fd)
    command = shlex.join(argv[1:] if launch.kind != "command" else argv)
    bar = RemoteTqdm(
        total=None,
        desc=f"run {command}"[:1000],
        unit="s",
        task_id=job,
        job=job,
        url=settings.url,
        token=settings.token,
        meta={**settings.meta, "role": "run", "command": command[:500]},
        file=open(os.devnull, "w"),
    )
    try:
        try:
            child = subprocess.Popen(argv, env=child_environment(environ, settings, job, report))
        except OSError as error:
            bar.fail(f"cannot start {argv[0]}: {error.strerror}")
            raise SettingError(f"cannot start {argv[0]!r}: {error.strerror}") from None
        status = _wait_forwarding_signals(child)
        crash = Path(report).read_text(encoding="utf-8").strip()
        if status == 0:
            bar.close()
        else:
            reason = (
                f"exit code {status}" if status > 0 else f"killed by {signal.Signals(-status).name}"
            )
            bar.fail(f"{crash} ({reason})" if crash else reason)
        return status
    finally:
        flush()
        bar.fp.close()
        os.unlink(report)


def _wait_forwarding_signals(child: subprocess.Popen[bytes]) -> int:
    """Wait for the child; pass on termination requests, leave Ctrl-C to the terminal.

    Ctrl-C reaches the whole foreground process group, the child included, so the runner only
    has to survive it and report what the child did. A SIGINT that cannot have come from the
    terminal (the runner is not in its foreground group, or has none) was meant for the runner
    alone and is forwarded, as SIGTERM and SIGHUP always are.
    """

    def forward(signum: int, frame: FrameType | None) -> None:
        child.send_signal(signum)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        try:
            from_terminal = os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
        except (OSError, ValueError):
            from_terminal = False
        if not from_terminal:
            child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, interrupted),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_meta(pairs: Sequence[str]) -> dict[str, str]:
    """``["team=data", "tier=gold"]`` → a dict; raises SettingError naming a bad pair."""
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingError(f"--meta takes key=value, not {pair!r}")
        meta[key] = value
    return meta
