"""What the processes of a run tell the runner, read back as the runner reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from progressista.client.lifecycle import reachability_for
from progressista.report import RunReport
from progressista.runner import RunTask
from progressista.settings import ClientSettings

pytestmark = pytest.mark.usefixtures("fresh_client")


def append(path: Path, *records: dict[str, object]) -> None:
    with path.open("a") as report:
        for record in records:
            report.write(json.dumps(record) + "\n")


def test_the_report_is_read_as_it_grows_even_mid_line(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    append(path, {"pid": 1, "start": True}, {"pid": 1, "open": "a"}, {"pid": 1, "open": "b"})
    with path.open("a") as report:
        report.write('{"pid": 1, "clo')  # a writer caught in the middle of a line
    report_ = RunReport(str(path))
    assert report_.read()
    assert (report_.processes, set(report_.bars), report_.closed) == ({1}, {"a", "b"}, set())
    with path.open("a") as report:
        report.write('sed": "a"}\n')
    append(path, {"pid": 2, "start": True}, {"pid": 2, "open": "c"}, {"pid": 2, "exit": True})
    assert report_.read() and not report_.read()
    assert report_.closed == {"a"} and report_.exited == {2} and report_.open_bars == 2
    assert report_.left_open_by({1}) == ["b"]


def test_a_process_that_is_gone_without_its_exit_flush_died_abruptly(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    append(path, {"pid": gone, "start": True}, {"pid": os.getpid(), "start": True})
    report = RunReport(str(path))
    report.read()
    assert report.died_abruptly() == {gone}  # this process is alive, the other is not


def test_a_process_that_waited_for_a_hung_server_spends_the_whole_runs_budget(
    tmp_path: Path, refused_url: str
) -> None:
    path = tmp_path / "report.jsonl"
    settings = ClientSettings(url=refused_url, flush_timeout=2.0)
    task = RunTask(settings, "budget", "sleep 1", RunReport(str(path)))
    assert reachability_for(settings).allowance(2.0) == 2.0 or reachability_for(settings).known_down
    append(path, {"pid": 1, "unresponsive": refused_url})
    task.refresh()
    assert reachability_for(settings).allowance(2.0, at_exit=True) == 0.0
    task.bar.close()
    task.bar.fp.close()


def test_the_default_job_is_named_after_the_script_whoever_runs_it() -> None:
    """``run python train.py`` named its job ``python-<time>``; ``run train.py`` names it
    ``train.py-<time>``: the same program, the same name."""
    from progressista.runner import Launch

    assert Launch("script", "jobs/train.py", ["--epochs", "3"]).name() == "train.py"
    assert Launch("command", "python3", ["jobs/train.py", "--epochs", "3"]).name() == "train.py"
    assert Launch("command", "/venv/bin/python", ["-m", "pkg.train"]).name() == "pkg.train"
    assert Launch("command", "python", ["-c", "print(1)"]).name() == "python"
    assert Launch("command", "make", ["all"]).name() == "make"
