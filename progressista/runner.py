"""``progressista run``: start a program with every tqdm bar in it, and in its children, remote.

The program runs as a child process whose ``PYTHONPATH`` starts with
``progressista/bootstrap``: every Python it starts, directly, through ``subprocess`` or as a
``multiprocessing`` child (fork or spawn), loads that ``sitecustomize`` and patches tqdm before any
user code. Every bar carries the run's ``job``, and the run itself is a task of its own, the
parent of the job's bars: completed when the program exits with 0, failed with the exit code (and
the uncaught exception, when Python reports one) otherwise. The exit code is passed through.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .client.bar import RemoteTqdm
from .client.lifecycle import flush, reachability_for, sender_for
from .client.outbox import FinalEvent
from .report import RunReport
from .schema import MAX_TASK_ID_CHARS, check_task_id
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
        """What ran, for the default job name: the script, also when a python runs it
        (``run python train.py`` is ``train.py``, as ``run train.py``)."""
        program = os.path.basename(self.target) or self.target
        if self.kind == "command" and program.startswith("python") and self.args:
            first = self.args[0]
            if first == "-m" and len(self.args) > 1:
                return self.args[1]
            if not first.startswith("-"):
                return os.path.basename(first) or first
        return program


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
    if check_task_id(job) is not None:  # the job names the run's own task
        raise SettingError(
            f"{source} {job!r}: a job name is 1 to {MAX_TASK_ID_CHARS} printable characters, "
            f"and not '.' or '..'{hint}"
        )
    if launch.kind == "script" and not Path(launch.target).is_file():
        raise SettingError(f"cannot run {launch.target!r}: no such file")
    argv = launch.argv()
    report_fd, report_path = tempfile.mkstemp(prefix="progressista-run-", suffix=".jsonl")
    os.close(report_fd)
    command = shlex.join(argv[1:] if launch.kind != "command" else argv)
    task = RunTask(settings, job, command, RunReport(report_path))
    try:
        # Without a controlling terminal, the program gets a process group of its own: a
        # signal sent to the runner's group (a CI job cancelled, a supervisor) then reaches it
        # once, passed on by the runner, not twice (from the group, then passed on): a second
        # KeyboardInterrupt broke the program's own clean-up. With one, it stays in the
        # runner's group, whatever stdin is: in a group of its own it could not read the
        # terminal (stopped by SIGTTIN), nor be stopped with Ctrl-Z.
        terminal = _controlling_terminal()
        own_group = terminal is None
        try:
            child = subprocess.Popen(
                argv,
                env=child_environment(environ, settings, job, report_path),
                **(_NEW_GROUP if own_group else {}),
            )
        except OSError as error:
            task.bar.fail(f"cannot start {argv[0]}: {error.strerror}")
            raise SettingError(f"cannot start {argv[0]!r}: {error.strerror}") from None
        task.started(child.pid)
        try:
            status = _wait_forwarding_signals(child, task.refresh, terminal)
        finally:
            if terminal is not None:
                os.close(terminal)
        task.finished(status, child.pid)
        return status
    finally:
        flush()
        task.bar.fp.close()
        os.unlink(report_path)


class RunTask:
    """The run as a task of its own, the parent of the job's bars: what it runs, for how long,
    how many processes and bars it has, and how it ended.

    On the wire (``task_id`` = the job): ``desc`` "run <command>"; ``n`` the bars finished so
    far and ``unit`` "bars" (``total`` null until the end, then every bar opened); ``postfix``
    the same counts in words; ``elapsed`` the run's time; ``meta`` ``role: "run"``, ``command``,
    ``program_pid``, ``processes``, ``bars``, ``bars_open``, and at the end ``exit_status`` (the
    exit code, or the negative signal number) with ``signal`` (its name) when one killed it.
    The last event is ``close`` for exit code 0, else ``error`` with what happened.
    """

    def __init__(self, settings: ClientSettings, job: str, command: str, report: RunReport):
        self.settings = settings
        self.report = report
        self.bar = RemoteTqdm(
            total=None,
            desc=f"run {command}"[:1000],
            unit="bars",
            task_id=job,
            job=job,
            url=settings.url,
            token=settings.token,
            meta={**settings.meta, "role": "run", "command": command[:500]},
            file=open(os.devnull, "w"),  # closed by run()
            mininterval=0,
        )
        self._shown: tuple[int, int, int] | None = None

    def started(self, pid: int) -> None:
        self.bar.remote_relabel(program_pid=pid)
        self.bar.refresh()

    def refresh(self) -> None:
        """Take in what the run's processes reported; show it if it changed."""
        self.report.read()
        if self.report.unresponsive == self.settings.url:
            # One budget for the whole run: a process already waited the flush timeout for
            # this server, so the runner's own exit must not wait again.
            server = reachability_for(self.settings)
            server.spent(self.settings.flush_timeout, delivered=False)
        if self.settings.url in self.report.warned:
            reachability_for(self.settings).told_elsewhere()
        counts = (len(self.report.processes), len(self.report.bars), len(self.report.closed))
        if counts == self._shown:
            return
        self._shown = counts
        processes, bars, closed = counts
        self.bar.remote_relabel(processes=processes, bars=bars, bars_open=bars - closed)
        self.bar.n = closed
        self.bar.set_postfix_str(
            f"{processes} process{'es' if processes != 1 else ''}, {bars} bar"
            f"{'s' if bars != 1 else ''}, {bars - closed} open"
        )

    def finished(self, status: int, pid: int) -> None:
        """The program ended with ``status``: fail what its dead processes left open, and end
        the run's own task."""
        self.refresh()
        signal_name = _signal_name(-status) if status < 0 else None
        failed = self._fail_orphans(pid, signal_name)
        closed = len(self.report.closed) + failed
        self.bar.n = closed
        bars = len(self.report.bars)
        labels: dict[str, str | int] = {"exit_status": status, "bars_open": bars - closed}
        if signal_name is not None:
            labels["signal"] = signal_name
        self.bar.remote_relabel(**labels)
        self.bar.total = bars
        if status == 0:
            self.bar.close()
            return
        reason = f"exit code {status}" if status > 0 else f"killed by {signal_name}"
        crash = self.report.crash
        self.bar.fail(f"{crash} ({reason})" if crash else reason)

    def _fail_orphans(self, pid: int, signal_name: str | None) -> int:
        """Bars left open by processes that died without their exit flush are failures now,
        rather than active until they go stale: the program itself, killed by a signal, or any
        other process of the run that is gone without a word (a worker killed for memory).
        Returns how many."""
        dead = self.report.died_abruptly()
        if signal_name is not None:
            dead.add(pid)
        outbox = sender_for(self.settings).outbox
        orphans = self.report.left_open_by(dead)
        for task_id in orphans:
            owner = self.report.bars[task_id]
            reason = (
                f"killed by {signal_name}"
                if owner == pid and signal_name is not None
                else f"cut short: its process ({owner}) ended without closing it"
            )
            event = {
                "task_id": task_id,
                "status": "error",
                "error": reason,
                # Microseconds since the epoch: above every seq the dead process gave this bar.
                "seq": time.time_ns() // 1000,
                "timestamp": time.time(),
            }
            outbox.put(task_id, FinalEvent(event), urgent=True)
        return len(orphans)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


#: Popen's arguments for a child in a process group of its own (``process_group``: 3.11).
_NEW_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)


def _controlling_terminal() -> int | None:
    """A descriptor of this process's controlling terminal, or None when it has none."""
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None


def _wait_forwarding_signals(
    child: subprocess.Popen[bytes], tick: Callable[[], None], terminal: int | None
) -> int:
    """Wait for the child, calling ``tick`` every second; pass on termination requests, leave
    Ctrl-C to the terminal.

    Ctrl-C reaches the whole foreground process group, the child included, so the runner only
    has to survive it and report what the child did. A SIGINT that cannot have come from the
    terminal (the runner is not in its foreground group, or has none) was meant for the runner
    alone and is forwarded, as SIGTERM and SIGHUP always are. A child started without a
    ``terminal`` is in a group of its own, and gets them as a group, as it would have from a
    signal to the runner's group.
    """
    own_group = terminal is None

    def send(signum: int) -> None:
        if own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)
        else:
            child.send_signal(signum)

    def forward(signum: int, frame: FrameType | None) -> None:
        send(signum)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        if terminal is None:
            send(signum)
            return
        try:
            from_terminal = os.tcgetpgrp(terminal) == os.getpgrp()
        except OSError:
            from_terminal = False
        if not from_terminal:
            send(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, interrupted),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        while True:
            try:
                return child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                tick()
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
