"""``python -m progressista.server`` as a real process: settings, the banner, Ctrl-C."""

from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest
from aiohttp import WSMsgType

from .server_process import running_server

pytestmark = pytest.mark.slow


async def test_serves_the_api_and_page_and_stops_cleanly_on_ctrl_c() -> None:
    with running_server(env={"PROGRESSISTA_STALE_AFTER": "5m"}) as server:
        assert server.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(server.url) as http:
            response = await http.post("/progress", json={"task_id": "real", "n": 1})
            assert (response.status, await response.json()) == (202, {"accepted": 1, "ignored": 0})
            await http.get("/tasks?token=s3cret-by-mistake")
            page = await (await http.get("/")).text()
            assert 'data-task-id="real"' in page
            assert (await http.get("/static/dashboard.js")).status == 200
            viewer = await http.ws_connect("/ws")
            assert (await viewer.receive_json(timeout=5))["type"] == "snapshot"
            assert server.stop() == 0
            message = await viewer.receive(timeout=5)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
            await viewer.close()
        log = "".join(server.log)
        assert "'stale_after': 300.0" in log
        assert "POST /progress" not in log  # accepted posts stay out of the access log
        assert "GET / HTTP/1.1" in log
        assert "GET /tasks?token=*** HTTP/1.1" in log
        assert "s3cret-by-mistake" not in log


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
