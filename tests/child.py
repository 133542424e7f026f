"""Programs a test starts: with the SIGINT a terminal gives them, and never left running.

A shell that ignores SIGINT (``nohup``, a script's background job, many CI runners) hands that
disposition to everything it starts, through fork and exec, down to the programs a test starts:
``subprocess``'s ``restore_signals`` resets SIGPIPE, SIGXFZ and SIGXFSZ, not SIGINT. A program
that ignores SIGINT survives the Ctrl-C a test simulates, and outlives the test. So a test's
program gets the default disposition back, as when a person types the command, and runs in a
session of its own, so that it and whatever it started end with the test, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["default_sigint", "end", "run", "started"]


def default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal delivers it, whatever the parent ignores."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    *,
    preexec_fn: Callable[[], object] | None = None,
    **popen: Any,
) -> Iterator[subprocess.Popen[Any]]:
    """Start ``argv`` in a new session with the default SIGINT; on leaving, :func:`end` it.

    ``preexec_fn`` runs in the child after ``setsid()`` (to take a controlling terminal, say).
    """

    def prepare() -> None:
        default_sigint()
        if preexec_fn is not None:
            preexec_fn()

    process = subprocess.Popen(argv, start_new_session=True, preexec_fn=prepare, **popen)
    try:
        yield process
    finally:
        end(process)


def run(
    argv: Sequence[str],
    *,
    capture_output: bool = False,
    check: bool = False,
    timeout: float | None = None,
    **popen: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``, but what ``argv`` starts dies with it, on a timeout or any failure.

    ``subprocess.run`` kills only the program it started; a build's or a runner's own children
    would live on.
    """
    if capture_output:
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with started(argv, **popen) as process:
        out, err = process.communicate(timeout=timeout)
    result = subprocess.CompletedProcess(argv, process.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def end(process: subprocess.Popen[Any]) -> None:
    """Kill every process left in ``process``'s session, reap it, and close its pipes.

    The session's id is the leader's pid. While the leader is unreaped, or while anything it
    started is still in the group, that number cannot name another process group, so the kill
    reaches only what the test started.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
