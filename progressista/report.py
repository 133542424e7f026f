"""What the processes of a ``progressista run`` tell the runner, through one append-only file.

Every Python the run starts appends JSON lines: ``start`` when it begins, ``open`` and
``closed`` for each bar, ``exit`` once its exit flush is done (and ``unresponsive`` before it
when it waited its whole flush timeout for a server that never answered), and the main
program's uncaught exception as ``crash``. The runner reads them as they come: to show the run
as what it is (its processes and bars), and, when a process dies without its exit flush
(killed by a signal), to fail the bars it left open instead of leaving them active until they
go stale.

One ``os.write`` of a short line to a file opened with ``O_APPEND`` lands whole, whatever the
number of processes writing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

__all__ = ["RunReport", "start_reporting", "write_crash"]


def _appender(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _write(fd: int, record: dict[str, object]) -> None:
    os.write(fd, (json.dumps(record, ensure_ascii=True) + "\n").encode())


def start_reporting(path: str) -> None:
    """In a process of the run: say it started, and report its bars and its exit from now on."""
    from .client.lifecycle import set_reporter

    fd = _appender(path)
    _write(fd, {"pid": os.getpid(), "start": True})

    def reporter(what: str, task_id: str | None) -> None:
        record: dict[str, object] = {"pid": os.getpid(), what: task_id if task_id else True}
        _write(fd, record)

    set_reporter(reporter)


def write_crash(path: str, text: str) -> None:
    """The run's main program is dying of an uncaught exception: its one-line description."""
    fd = _appender(path)
    try:
        _write(fd, {"pid": os.getpid(), "crash": text})
    finally:
        os.close(fd)


@dataclass
class RunReport:
    """The runner's reading of the report file, brought up to date by :meth:`read`."""

    path: str
    processes: set[int] = field(default_factory=set)
    #: Every bar opened, with the process that opened it.
    bars: dict[str, int] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    exited: set[int] = field(default_factory=set)
    crash: str = ""
    #: A process spent its time waiting for a server that never answered (its URL).
    unresponsive: str = ""
    #: Servers a process has told the user it could not deliver to at its exit (their URLs).
    warned: set[str] = field(default_factory=set)
    _offset: int = 0
    _partial: bytes = b""

    def read(self) -> bool:
        """Take in what was appended since the last call; True if anything was."""
        try:
            with open(self.path, "rb") as report:
                report.seek(self._offset)
                data = report.read()
        except OSError:
            return False
        if not data:
            return False
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._take(line)
        return True

    def _take(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            pid = int(record["pid"])
        except (ValueError, KeyError, TypeError):
            return  # not ours, or cut short by a dying writer
        # Any record makes its writer a process of the run: a forked child (multiprocessing's
        # default on Linux) inherits the reporter without a start of its own, and a fork
        # killed with its bars open must be seen to die as a spawned one is.
        self.processes.add(pid)
        if isinstance(record.get("open"), str):
            self.bars[record["open"]] = pid
        if isinstance(record.get("closed"), str):
            self.closed.add(record["closed"])
        if "exit" in record:
            self.exited.add(pid)
        if isinstance(record.get("crash"), str):
            self.crash = record["crash"]
        if isinstance(record.get("unresponsive"), str):
            self.unresponsive = record["unresponsive"]
        if isinstance(record.get("warned"), str):
            self.warned.add(record["warned"])

    @property
    def open_bars(self) -> int:
        return len(set(self.bars) - self.closed)

    def left_open_by(self, pids: set[int]) -> list[str]:
        """Bars opened by those processes and never closed by them."""
        return [
            task_id
            for task_id, pid in self.bars.items()
            if pid in pids and task_id not in self.closed
        ]

    def died_abruptly(self) -> set[int]:
        """Processes that started and are gone without their exit flush (killed, os._exit)."""
        gone = set()
        for pid in self.processes - self.exited:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                gone.add(pid)
            except OSError:
                pass  # alive, someone else's now, or not ours to signal
        return gone
