"""The client in real worker processes: exit flush, crashes, hung servers, asyncio.run, fork."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from .server_process import ServerProcess

pytestmark = pytest.mark.slow


def run_worker(code: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PROGRESSISTA_URL": url, **env},
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
            never_closed.update(2)
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
            2,
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


def test_a_hung_server_never_holds_the_process_past_the_flush_timeout() -> None:
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(100)
        started = time.monotonic()
        result = run_worker(
            """
            import io
            from progressista.client import RemoteTqdm
            bar = RemoteTqdm(total=10**5, file=io.StringIO(), mininterval=0)
            for _ in range(10**5):
                bar.update(1)
            bar.close()
        """,
            f"http://127.0.0.1:{hung.getsockname()[1]}",
            PROGRESSISTA_FLUSH_TIMEOUT="1",
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert elapsed < 1 + 5, elapsed  # the flush bound, plus interpreter start and the loop


def test_a_refused_connection_is_silent_and_quick() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_worker(
        """
        import io
        from progressista.client import RemoteTqdm
        for _ in RemoteTqdm(range(1000), file=io.StringIO()):
            pass
    """,
        f"http://127.0.0.1:{port}",
    )
    assert (result.returncode, result.stderr) == (0, "")


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
        env={**os.environ, "PROGRESSISTA_URL": server_process.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert {task(server_process, f"loop-{i}")["state"] for i in range(20)} == {"completed"}
    assert task(server_process, "loop-open")["n"] == 1


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
