"""``python -m progressista.server`` as a real process: settings, the banner, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import WSMsgType

from .conftest import WAIT
from .server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow


async def test_serves_the_api_and_page_and_stops_cleanly_on_ctrl_c() -> None:
    with running_server(env={"PROGRESSISTA_STALE_AFTER": "5m"}) as server:
        assert server.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(server.url) as http:
            start = {"task_id": "real", "status": "start", "n": 1}
            async with http.post("/progress", json=start) as response:
                assert (response.status, await response.json()) == (
                    202,
                    {"accepted": 1, "ignored": 0},
                )
            async with http.get("/tasks?token=s3cret-by-mistake") as response:
                await response.read()
            async with http.get("/") as response:
                assert 'data-task-id="real"' in await response.text()
            async with http.get("/static/dashboard.js") as response:
                assert response.status == 200
            viewer = await http.ws_connect("/ws")
            assert (await viewer.receive_json(timeout=WAIT))["type"] == "snapshot"
            assert (await viewer.receive_json(timeout=WAIT))["type"] == "jobs"  # none, whole
            assert server.stop() == 0
            message = await viewer.receive(timeout=WAIT)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
            await viewer.close()
        log = "".join(server.log)
        assert "'stale_after': 300.0" in log
        assert "POST /progress" not in log  # accepted posts stay out of the access log
        assert "GET / HTTP/1.1" in log
        assert "GET /tasks?token=*** HTTP/1.1" in log
        assert "s3cret-by-mistake" not in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_it_stops_cleanly_even_when_started_by_a_shell_that_ignores_ctrl_c(
    signum: signal.Signals,
) -> None:
    def ignore_ctrl_c() -> None:  # what nohup, a script's `&` job or a CI runner hands down
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with running_server(preexec_fn=ignore_ctrl_c) as server:
        assert server.stop(signum) == 0
    assert "shutting down" in "".join(server.log)


async def test_a_flag_wins_over_the_environment() -> None:
    with running_server(["--max-batch", "1"], env={"PROGRESSISTA_MAX_BATCH": "50"}) as server:
        async with aiohttp.ClientSession(server.url) as http:
            response = await http.post("/progress", json=[{"task_id": "a"}, {"task_id": "b"}])
            assert response.status == 413
            assert (await response.json())["error"] == "a batch may hold at most 1 events"


def test_a_bad_setting_is_one_clear_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "progressista.server"],
        env={"PROGRESSISTA_STALE_AFTER": "soon", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "progressista: PROGRESSISTA_STALE_AFTER: 'soon' is not a duration; "
        "use seconds or a unit: 90, 90s, 15m, 2h, 1d\n"
    )


def test_a_port_in_use_is_reported_not_a_traceback() -> None:
    with running_server() as server:
        result = subprocess.run(
            [sys.executable, "-m", "progressista.server", "--port", str(server.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"progressista: cannot listen on 127.0.0.1:{server.port}: "), (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_an_empty_write_token_is_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "progressista.server", "--write-token", ""],
        env={"PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "progressista: --write-token: must not be empty; give a token, or leave the setting "
        "out to run without one\n",
    )


def _few_file_descriptors() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_out_of_file_descriptors_is_one_log_line_not_a_flood_of_tracebacks() -> None:
    import socket
    import time
    import urllib.request

    args = ["--max-connections", "1000"]  # more than 64 descriptors allow: accept() fails
    with running_server(args, preexec_fn=_few_file_descriptors) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        deadline = time.monotonic() + 30
        while not any("cannot accept connections" in line for line in server.log):
            assert time.monotonic() < deadline, "".join(server.log)[-2000:]
            time.sleep(0.05)  # polling the log for a line, no synchronisation
        for connection in held:
            connection.close()
        # The server accepts again once descriptors are free (asyncio retries every second).
        with urllib.request.urlopen(f"{server.url}metrics", timeout=30) as response:
            metrics = response.read().decode()
    log = "".join(server.log)
    assert "--max-connections 1000 is more than this process may open (64 file descriptors)" in log
    failures = [line for line in server.log if "Too many open files" in line]
    assert len(failures) == 1, log
    assert (
        "cannot accept connections: Too many open files; raise the file-descriptor limit"
        in (failures[0])
    )
    assert "Traceback" not in log
    errors = next(
        line for line in metrics.splitlines() if line.startswith("progressista_accept_errors_total")
    )
    assert float(errors.split()[1]) >= 1, metrics


async def test_behind_a_trusted_proxy_the_access_log_names_the_client() -> None:
    forwarded = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    with running_server(["--trusted-proxies", "127.0.0.0/8"]) as behind_proxy:
        async with aiohttp.ClientSession(behind_proxy.url) as http:
            for marker, headers in (("proxy", forwarded), ("direct", {})):
                async with http.get(f"/healthz?via={marker}", headers=headers) as response:
                    assert response.status == 200
    with running_server() as trusting_nobody:  # the header is anyone's to write
        async with aiohttp.ClientSession(trusting_nobody.url) as http:
            async with http.get("/healthz?via=anyone", headers=forwarded) as response:
                assert response.status == 200

    def access_line(server: ServerProcess, marker: str) -> str:
        return next(line for line in server.log if f"GET /healthz?via={marker}" in line)

    assert " 203.0.113.7 [" in access_line(behind_proxy, "proxy")
    assert " 127.0.0.1 [" in access_line(behind_proxy, "direct")
    assert " 127.0.0.1 [" in access_line(trusting_nobody, "anyone")
