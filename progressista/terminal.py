"""``progressista watch``: a terminal mirror of a server's live bars, for people on SSH.

It follows a window of ``/ws`` sized to the terminal (the newest bars of each state and the
counts of all, never the whole board) and redraws at most ten times a second with tqdm's own
``format_meter``, so a bar looks here as it does in the worker's console. Reconnects with
backoff when the server goes away; Ctrl-C leaves the last frame on screen.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import warnings
from typing import IO, Any

import aiohttp
from tqdm import TqdmWarning, tqdm

from .connection import TIMEOUT, unreachable
from .shown import complete_partial, whole

__all__ = ["render", "watch"]

_ORDER = {"active": 0, "stale": 1, "failed": 2, "completed": 3}
_MARK = {"active": "▶", "stale": "…", "failed": "✗", "completed": "✓"}
#: Seconds between redraws, at most.
FRAME = 0.1


def _text(value: object) -> str:
    """``value`` as text a terminal only shows: control characters (C0, C1, DEL) and other
    non-printables (bidi overrides, line separators) dropped, other whitespace made a space.

    Whoever can post progress writes these fields; raw, an escape sequence in a description
    would reach the viewer's terminal (clipboard writes, the window title, a cleared screen).
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)


#: What tqdm raises on numbers it cannot format (an infinite ETA, an overflowing bar).
_UNFORMATTABLE = (ArithmeticError, TypeError, ValueError)


def _line(task: dict[str, Any], width: int, now: float) -> str:
    elapsed = task["elapsed"] if task["elapsed"] is not None else now - task["created_at"]
    desc = _text(task["desc"] or task["task_id"])

    def meter(rate: float | None, divisor: float) -> str:
        with warnings.catch_warnings():
            # A count a little past its total: tqdm warns (on stderr, across the screen) that
            # it clamps the bar; the bar is right as drawn.
            warnings.simplefilter("ignore", TqdmWarning)
            return meter_unwarned(rate, divisor)

    def meter_unwarned(rate: float | None, divisor: float) -> str:
        return str(
            tqdm.format_meter(
                n=task["n"],
                total=task["total"],
                elapsed=max(elapsed, 0.0),
                ncols=width - 2,
                prefix=desc,
                unit=_text(task["unit"]),
                unit_scale=task["unit_scale"],
                unit_divisor=divisor,
                rate=rate,
                postfix=_text(task["postfix"]) or None,
            )
        )

    if (task.get("meta") or {}).get("role") == "run":
        # progressista run's own task: a command, its time and its processes, not a meter.
        postfix = _text(task["postfix"])
        text = f"{desc} [{tqdm.format_interval(max(elapsed, 0.0))}]" + (
            f" {postfix}" if postfix else ""
        )
        return f"{_MARK.get(task['state'], '?')} {text}"[:width] + _error_line(task, width)
    try:
        text = meter(task["rate"], task["unit_divisor"])
    except _UNFORMATTABLE:
        # Values the server accepts but tqdm cannot format (a rate of 5e-324 makes an infinite
        # ETA): the meter without them, else the plain numbers.
        try:
            text = meter(None, 1000)
        except _UNFORMATTABLE:
            text = f"{desc}: {task['n']}/{task['total']}"
    return f"{_MARK.get(task['state'], '?')} {text}" + _error_line(task, width)


def _error_line(task: dict[str, Any], width: int) -> str:
    if task["state"] == "failed" and task.get("error"):
        return f"\n    {_text(str(task['error']).splitlines()[0])[: width - 6]}"
    return ""


def render(
    tasks: dict[str, dict[str, Any]],
    url: str,
    status: str,
    width: int,
    height: int,
    now: float | None = None,
    counts: dict[str, int] | None = None,
    jobs: dict[str, dict[str, Any]] | None = None,
) -> str:
    """One screenful: a header with the counts, a line per job run, then the bars, active
    first, as many as fit."""
    now = time.time() if now is None else now
    if counts is None:
        counts = {state: 0 for state in _ORDER}
        for task in tasks.values():
            counts[task["state"]] = counts.get(task["state"], 0) + 1
    summary = ", ".join(f"{counts.get(state, 0)} {state}" for state in _ORDER)
    lines = [_text(f"Progressista {url} [{status}] {summary}")[:width]]
    for job in _ordered_jobs(jobs or {})[: max(0, height // 3)]:
        lines.append(_job_line(job, width))
    ordered = sorted(tasks.values(), key=lambda t: (_ORDER.get(t["state"], 9), -t["created_at"]))
    total = sum(counts.values())
    for task in ordered:
        lines.extend(_text(line) for line in _line(task, width, now).split("\n"))
        if len(lines) >= height - 1:
            lines = [*lines[: height - 2], f"… and more ({total} tasks in all)"]
            break
    return "\n".join(lines)


_JOB_MARK = {"running": "▶", "stalled": "…", "failed": "✗", "completed": "✓"}


def _ordered_jobs(jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Unfinished runs first, then finished ones; the most recently updated first in each."""
    return sorted(
        jobs.values(), key=lambda job: (job["finished_at"] is not None, -job["updated_at"])
    )


def _job_line(job: dict[str, Any], width: int) -> str:
    """``▶ job nightly-etl: 12 of 40 done, 1 failed  56% · ETA 00:07``."""
    counts = job["tasks"]
    bars = sum(counts.values())
    text = f"{counts['completed']} of {max(bars, job['size'] or 0)} done"
    if counts["failed"]:
        text += f", {counts['failed']} failed"
    details = []
    if job["fraction"] is not None:
        details.append(f"{job['fraction'] * 100:.0f}%")
    if job["eta"] is not None:
        details.append(f"ETA {tqdm.format_interval(max(job['eta'], 0))}")
    run = f" (run {job['run']})" if job["run"] > 1 else ""
    line = f"{_JOB_MARK.get(job['state'], '?')} job {job['job']}{run}: {text}"
    if details:
        line += "  " + " · ".join(details)
    return _text(line)[:width]  # a job's name is a writer's text


class _Window:
    """What the server shows this terminal: the tasks of its window and the counts of all."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] | None = None
        self.jobs: dict[str, dict[str, Any]] = {}

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "jobs":
            if message["whole"]:
                self.jobs = {}
            for key in message["removed"]:
                self.jobs.pop(key, None)
            for key, job in message["jobs"].items():
                self.jobs[key] = {**self.jobs.get(key, {}), **job}
            return
        if kind == "view":  # tasks as sent: see progressista.shown
            self.tasks = {
                task_id: whole(task_id, task) for task_id, task in message["tasks"].items()
            }
        elif kind == "patch":
            for task_id in message["removed"]:
                self.tasks.pop(task_id, None)
            for task_id, task in message.get("replace", {}).items():
                self.tasks[task_id] = whole(task_id, task)
            at = message.get("at")
            for task_id, fields in message["tasks"].items():
                held = self.tasks.get(task_id)
                if held is None:  # (a window's patches never bring a task it does not hold)
                    continue
                held.update(fields)
                complete_partial(held, fields, at)
        else:
            return
        if "counts" in message:
            self.counts = {state: all_ for state, (_, all_) in message["counts"].items()}


class _Screen:
    """Draws frames: in place on a terminal, one after another otherwise."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()

    def draw(self, frame: str) -> None:
        if self.tty:
            self.out.write("\x1b[H\x1b[J" + frame + "\n")
        else:
            self.out.write(frame + "\n\n")
        self.out.flush()


async def _follow(url: str, token: str | None, out: IO[str], timeout: float) -> int:
    screen = _Screen(out)
    board = _Window()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connected_once = False
    backoff = 0.5
    last_draw = 0.0

    def draw(status: str) -> None:
        nonlocal last_draw
        size = shutil.get_terminal_size((100, 40))
        screen.draw(
            render(
                board.tasks,
                url,
                status,
                size.columns,
                size.lines,
                counts=board.counts,
                jobs=board.jobs,
            )
        )
        last_draw = time.monotonic()

    # No timeouts of aiohttp's own: `timeout` below is the one deadline, and the heartbeat
    # notices a connection that dies later.
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout()) as session:
        while True:
            # Enough of each state to fill the screen, whichever states the bars are in.
            rows = max(1, shutil.get_terminal_size((100, 40)).lines)
            try:
                # The whole handshake, the name lookup included, has `timeout` seconds: a
                # server that accepts and never answers must not leave the terminal blank.
                socket = await asyncio.wait_for(
                    session.ws_connect(f"{url}/ws?limit={rows}", heartbeat=30, compress=15), timeout
                )
                async with socket:
                    connected_once, backoff = True, 0.5
                    pending = False
                    while True:
                        # A change arrived too soon after the last frame: draw when due.
                        due = last_draw + FRAME - time.monotonic()
                        wait = max(0.0, due) if pending else None
                        try:
                            message = await socket.receive(timeout=wait)
                        except asyncio.TimeoutError:
                            draw("live")
                            pending = False
                            continue
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        board.apply(json.loads(message.data))
                        if time.monotonic() - last_draw >= FRAME:
                            draw("live")
                            pending = False
                        else:
                            pending = True
            except aiohttp.WSServerHandshakeError as error:
                print(
                    f"progressista: the server at {url} refused the live feed: "
                    f"HTTP {error.status}"
                    + (" (wrong or missing read token)" if error.status == 401 else ""),
                    file=sys.stderr,
                )
                return 1
            except asyncio.TimeoutError:
                if not connected_once:
                    print(
                        f"progressista: the server at {url} does not answer (no reply within "
                        f"{timeout:g} s; wait longer with --timeout)",
                        file=sys.stderr,
                    )
                    return 1
            except (aiohttp.ClientError, OSError) as error:
                if not connected_once:
                    print(f"progressista: {unreachable(url, error)}", file=sys.stderr)
                    return 1
            draw("reconnecting")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def watch(
    url: str, token: str | None = None, out: IO[str] | None = None, timeout: float = TIMEOUT
) -> int:
    """Follow ``url``'s bars until Ctrl-C; 1 when the server cannot be reached at all, or does
    not answer within ``timeout`` seconds."""
    try:
        return asyncio.run(_follow(url, token, out or sys.stdout, timeout))
    except KeyboardInterrupt:
        (out or sys.stdout).write("\n")
        return 0
