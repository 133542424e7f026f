"""The client in real worker processes: exit flush, crashes, hung servers, asyncio.run, fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from . import child
from .conftest import WAIT
from .server_process import ServerProcess

pytestmark = pytest.mark.slow


def worker_env(url: str, **env: str) -> dict[str, str]:
    """A worker's environment. What the tests check is what arrived, so the exit flush gets
    as long as a busy machine may need, unless a test sets PROGRESSISTA_FLUSH_TIMEOUT."""
    return {**os.environ, "PROGRESSISTA_URL": url, "PROGRESSISTA_FLUSH_TIMEOUT": str(WAIT), **env}


def run_worker(code: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a worker to its end; a child it forks is killed with it if the test fails."""
    return child.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=worker_env(url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def task(server_process: ServerProcess, task_id: str) -> dict[str, Any]:
    return server_process.tasks()[task_id]


def test_the_final_state_is_delivered_at_exit(server_process: ServerProcess) -> None:
    for run in range(5):
        result = run_worker(
            f"""
            import io
            from progressista.client import RemoteTqdm
            with RemoteTqdm(total=1000, file=io.StringIO(), task_id="exit-{run}") as bar:
                for _ in range(1000):
                    bar.update(1)
            never_closed = RemoteTqdm(total=3, file=io.StringIO(), task_id="open-{run}")
            never_closed.update(3)
        """,
            server_process.url,
            PROGRESSISTA_JOB="nightly",
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert (
            task(server_process, f"exit-{run}")["state"],
            task(server_process, f"exit-{run}")["n"],
        ) == (
            "completed",
            1000,
        )
        assert task(server_process, f"exit-{run}")["meta"]["job"] == "nightly"
        assert (
            task(server_process, f"open-{run}")["state"],
            task(server_process, f"open-{run}")["n"],
        ) == (
            "completed",
            3,
        )


def test_a_bar_still_open_short_of_its_total_at_exit_was_cut_short(
    server_process: ServerProcess,
) -> None:
    result = run_worker(
        """
        import io, threading, time
        from progressista.client import RemoteTqdm
        short = RemoteTqdm(total=1000, file=io.StringIO(), task_id="cut-short")
        short.update(30)
        no_total = RemoteTqdm(file=io.StringIO(), task_id="no-total")
        no_total.update(7)
        started = threading.Event()
        def forever():
            bar = RemoteTqdm(total=200, file=io.StringIO(), task_id="daemon")
            bar.update(100)
            started.set()
            while True:
                time.sleep(1)
        threading.Thread(target=forever, daemon=True).start()
        started.wait()
        """,
        server_process.url,
    )
    assert result.returncode == 0, result.stderr
    found = server_process.tasks()
    assert {
        key: (found[key]["state"], found[key]["n"], found[key].get("error"))
        for key in (
            "cut-short",
            "no-total",
            "daemon",
        )
    } == {
        "cut-short": ("failed", 30, "cut short: the process exited with the bar open at 30/1000"),
        "no-total": ("completed", 7, None),
        "daemon": (
            "failed",
            100,
            "cut short: the process exited while its thread was still at 100/200",
        ),
    }


def test_sys_exit_fails_a_bar_unless_the_status_is_zero(server_process: ServerProcess) -> None:
    for code, state in ((3, "failed"), (0, "completed")):
        result = run_worker(
            f"""
            import io, sys
            from progressista.client import RemoteTqdm
            with RemoteTqdm(total=10, file=io.StringIO(), task_id="exit-with-{code}") as bar:
                bar.update(4)
                sys.exit({code})
            """,
            server_process.url,
        )
        assert result.returncode == code
        task = server_process.tasks()[f"exit-with-{code}"]
        assert (task["state"], task.get("error")) == (
            state,
            "SystemExit: 3" if code else None,
        )


def test_an_uncaught_exception_in_a_loop_fails_its_bar_and_keeps_the_traceback(
    server_process: ServerProcess,
) -> None:
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm
        for i in RemoteTqdm(range(3), file=io.StringIO(), task_id="fine"):
            pass
        for i in RemoteTqdm(range(10), file=io.StringIO(), task_id="left-early"):
            if i == 2:
                break
        for i in RemoteTqdm(range(10), file=io.StringIO(), task_id="crashing"):
            if i == 5:
                raise ZeroDivisionError("division by zero in row 5")
    """,
        server_process.url,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero in row 5")
    crashed = task(server_process, "crashing")
    assert (crashed["state"], crashed["n"], crashed["error"]) == (
        "failed",
        5,
        "ZeroDivisionError: division by zero in row 5",
    )
    assert task(server_process, "fine")["state"] == "completed"
    assert task(server_process, "left-early")["state"] == "completed"


def test_ctrl_c_in_a_loop_fails_the_bar(server_process: ServerProcess) -> None:
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm
        for i in RemoteTqdm(range(10), file=io.StringIO(), task_id="interrupted"):
            if i == 1:
                raise KeyboardInterrupt
    """,
        server_process.url,
    )
    assert result.returncode == -signal.SIGINT  # as Python without the client
    assert task(server_process, "interrupted")["error"] == "KeyboardInterrupt"


def test_an_exception_in_a_thread_fails_that_threads_bars(server_process: ServerProcess) -> None:
    result = run_worker(
        """
        import io, threading
        from progressista.client import RemoteTqdm
        def work():
            bar = RemoteTqdm(total=10, file=io.StringIO(), task_id="thread-bar")
            bar.update(4)
            raise LookupError("no such shard")
        main_bar = RemoteTqdm(total=1, file=io.StringIO(), task_id="main-bar")
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        main_bar.update(1)
        main_bar.close()
    """,
        server_process.url,
    )
    assert result.returncode == 0
    assert "LookupError: no such shard" in result.stderr
    assert (
        task(server_process, "thread-bar")["state"],
        task(server_process, "thread-bar")["error"],
    ) == (
        "failed",
        "LookupError: no such shard",
    )
    assert task(server_process, "main-bar")["state"] == "completed"


def test_a_hung_server_costs_one_flush_timeout_and_one_warning(hung_url: str) -> None:
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm
        bar = RemoteTqdm(total=10**5, file=io.StringIO(), mininterval=0, task_id="hung")
        for _ in range(10**5):
            bar.update(1)
        bar.close()
        """,
        hung_url,
        PROGRESSISTA_FLUSH_TIMEOUT="1",
    )
    assert result.returncode == 0, result.stderr
    lost = (
        "progressista:0: ProgressistaWarning: the final state of 1 bar could not be delivered "
        f"to the server at {hung_url}"
    )
    # Why depends on whether the first request had timed out before the exit: both say hung.
    assert result.stderr in (
        f"{lost} (it did not answer in time).\n",
        f"{lost} (no reply within 5 s).\n",
    )


def test_a_refused_connection_costs_no_wait_and_is_one_warning(refused_url: str) -> None:
    # The flush timeout is longer than the test's own timeout: waiting for a server known to
    # refuse would fail the test, not just slow it.
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm, flush
        for block in range(5):
            with RemoteTqdm(total=3, file=io.StringIO(), task_id=f"refused-{block}") as bar:
                bar.update(3)
            flush()
        """,
        refused_url,
        PROGRESSISTA_FLUSH_TIMEOUT="1000",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "progressista:0: ProgressistaWarning: the final state of 5 bars could not be delivered "
        f"to the server at {refused_url} (connection refused).\n"
    )


def test_asyncio_run_leaves_no_unclosed_session_or_pending_task(
    server_process: ServerProcess,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-X",
            "dev",
            "-c",
            textwrap.dedent("""
            import asyncio, io
            from progressista.client import AsyncRemoteTqdm
            async def main():
                bars = [AsyncRemoteTqdm(total=2, file=io.StringIO(), task_id=f"loop-{i}")
                        for i in range(20)]
                for bar in bars:
                    bar.update(2)
                    bar.close()  # not awaited: the loop's sender delivers at shutdown
                open_bar = AsyncRemoteTqdm(total=5, file=io.StringIO(), task_id="loop-open")
                open_bar.update(1)
            asyncio.run(main())
        """),
        ],
        env=worker_env(server_process.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert {task(server_process, f"loop-{i}")["state"] for i in range(20)} == {"completed"}
    assert task(server_process, "loop-open")["n"] == 1


def test_a_fork_after_a_bar_does_not_wait_for_the_sender(server_process: ServerProcess) -> None:
    """Before a fork, the client waits for its sender thread to finish importing (a fork in
    the middle of an import leaves its lock held in the child). The wait's event was never
    set: every fork waited its full second, and ``Pool(4)`` took four seconds to start."""
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm, sender
        with RemoteTqdm(total=1, file=io.StringIO(), task_id="before-fork") as bar:
            bar.update(1)
        assert sender._prepared.wait(60), "every fork waits for a sender that never says ready"
        """,
        server_process.url,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_sends_its_own_bars(server_process: ServerProcess) -> None:
    result = run_worker(
        """
        import io, os
        from progressista.client import RemoteTqdm
        parent = RemoteTqdm(total=1, file=io.StringIO(), task_id="parent")
        pid = os.fork()
        if pid == 0:
            with RemoteTqdm(total=2, file=io.StringIO(), task_id="child") as bar:
                bar.update(2)
            from progressista.client import flush
            flush()
            os._exit(0)
        os.waitpid(pid, 0)
        parent.update(1)
        parent.close()
    """,
        server_process.url,
    )
    assert result.returncode == 0, result.stderr
    assert (task(server_process, "child")["state"], task(server_process, "child")["n"]) == (
        "completed",
        2,
    )
    assert task(server_process, "parent")["state"] == "completed"


def test_an_exception_unwinding_slowly_still_fails_the_loops_bar(
    server_process: ServerProcess,
) -> None:
    result = run_worker(
        """
        import io, time
        from progressista.client import RemoteTqdm
        try:
            for i in RemoteTqdm(range(10), file=io.StringIO(), task_id="slow-unwind"):
                if i == 3:
                    raise ValueError("late")
        finally:
            time.sleep(1)  # cleanup on the way out, longer than a push interval
        """,
        server_process.url,
    )
    assert result.returncode == 1
    assert task(server_process, "slow-unwind")["state"] == "failed"


def test_an_exception_in_an_async_for_body_fails_the_bar(server_process: ServerProcess) -> None:
    result = run_worker(
        """
        import asyncio, io
        from progressista.client import AsyncRemoteTqdm
        async def main():
            async for i in AsyncRemoteTqdm(range(10), file=io.StringIO(), task_id="async-crash"):
                await asyncio.sleep(0)
                if i == 4:
                    raise RuntimeError("fetch failed")
        asyncio.run(main())
        """,
        server_process.url,
    )
    assert result.returncode == 1
    crashed = task(server_process, "async-crash")
    assert (crashed["state"], crashed["error"]) == ("failed", "RuntimeError: fetch failed")


def test_a_loop_closed_without_cancelling_still_delivers(server_process: ServerProcess) -> None:
    result = run_worker(
        """
        import asyncio, io
        from progressista.client import AsyncRemoteTqdm
        async def main():
            bar = AsyncRemoteTqdm(total=3, file=io.StringIO(), task_id="ruc")
            bar.update(3)
            bar.close()
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        """,
        server_process.url,
    )
    assert result.returncode == 0, result.stderr
    assert (task(server_process, "ruc")["state"], task(server_process, "ruc")["n"]) == (
        "completed",
        3,
    )


def test_an_unhandled_ctrl_c_still_kills_the_worker_by_sigint(refused_url: str) -> None:
    # CPython exits by SIGINT only if no exec ran after the interrupt; the client's start-up
    # imports (in its thread) and its crash handler must not make it exit with status 1.
    for _ in range(5):
        result = run_worker(
            """
            import io
            from progressista.client import RemoteTqdm
            bar = RemoteTqdm(total=10, file=io.StringIO(), task_id="interrupted-early")
            raise KeyboardInterrupt
            """,
            refused_url,
        )
        assert result.returncode == -signal.SIGINT, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "PROGRESSISTA_URL",
            "not-a-url",
            "PROGRESSISTA_URL: must start with http:// or https://, not 'not-a-url'",
        ),
        (
            "PROGRESSISTA_PUSH_EVERY",
            "abc",
            "PROGRESSISTA_PUSH_EVERY: 'abc' is not a duration; use seconds or a unit: "
            "90, 90s, 15m, 2h, 1d",
        ),
        (
            "PROGRESSISTA_KEEPALIVE",
            "-5",
            "PROGRESSISTA_KEEPALIVE: '-5' is not a duration; use seconds or a unit: "
            "90, 90s, 15m, 2h, 1d",
        ),
    ],
)
def test_a_bad_setting_is_one_warning_and_the_bars_stay_local(
    variable: str, value: str, message: str, refused_url: str
) -> None:
    result = run_worker(
        """
        import sys
        from progressista.client import RemoteTqdm
        for name in ("a", "b", "c"):
            with RemoteTqdm(total=2, desc=name, file=sys.stdout, task_id=name) as bar:
                assert bar.remote_task_id is None
                bar.update(2)
        """,
        refused_url,
        **{variable: value},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"progressista:0: ProgressistaWarning: {message}. Bars are not sent to a server until "
        "this is fixed; tqdm still draws them.\n"
    )
    assert "c: 100%" in result.stdout  # tqdm's own bars, drawn as ever


def test_a_notebook_cell_ended_by_an_exception_fails_its_loops_bar(
    server_process: ServerProcess,
) -> None:
    # IPython's shell, reduced to what the client uses: its post_run_cell event.
    result = run_worker(
        '''
        import io, sys, types
        class Events:
            callbacks = []
            def register(self, name, callback):
                assert name == "post_run_cell"
                self.callbacks.append(callback)
        class Shell:
            events = Events()
        shell = Shell()
        sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
        from progressista.client import RemoteTqdm, flush
        kept = RemoteTqdm(total=5, file=io.StringIO(), task_id="kept-open")  # an earlier cell's
        cell = """
        for i in RemoteTqdm(range(20), file=io.StringIO(), task_id="cell", mininterval=0):
            if i == 10:
                raise ZeroDivisionError("in cell 3")
        """
        class Result:
            error_in_exec = None
        result = Result()
        try:  # what the kernel does with a cell: run it, show its exception, carry on
            exec(compile(cell, "<cell>", "exec"), globals())
        except Exception as error:
            result.error_in_exec = error
        for callback in shell.events.callbacks:
            callback(result)
        flush()
        print(kept.remote_task_id, flush=True)
        import os
        os._exit(0)  # a kernel lives on: no exit flush
        ''',
        server_process.url,
    )
    assert result.returncode == 0, result.stderr
    found = server_process.tasks()
    cell = found["cell"]
    assert (cell["state"], cell["n"], cell["error"]) == (
        "failed",
        10,
        "ZeroDivisionError: in cell 3",
    )
    assert found["kept-open"]["state"] == "active"


def test_a_loop_left_by_sys_exit_with_a_failure_status_is_failed(
    server_process: ServerProcess,
) -> None:
    result = run_worker(
        """
        import io, sys
        from progressista.client import RemoteTqdm
        for i in RemoteTqdm(range(1000), file=io.StringIO(), task_id="exit-loop", mininterval=0):
            if i == 30:
                sys.exit(3)
        """,
        server_process.url,
    )
    assert result.returncode == 3
    task = server_process.tasks()["exit-loop"]
    assert (task["state"], task["n"]) == ("failed", 30)
    assert task["error"] in ("SystemExit: 3", "an exception left the loop at <string>:6")
