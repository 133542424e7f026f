"""The access log: secrets sent by mistake in a URL never reach it."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_log import AccessLogger

from progressista.server.accesslog import QuietAccessLogger, SafeAccessLogger, redact


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("/tasks?token=s3cret", "/tasks?token=***"),
        (
            "/tasks?state=active&access_token=s3cret&limit=5",
            "/tasks?state=active&access_token=***&limit=5",
        ),
        ("/?q=etl&API_KEY=s3cret", "/?q=etl&API_KEY=***"),
        (
            "/ws?limit=10&password=hunter2&auth=x;session=y",
            "/ws?limit=10&password=***&auth=***;session=***",
        ),
        ("/tasks?%74oken=s3cret", "/tasks?%74oken=***"),
        ("/tasks?q=token", "/tasks?q=token"),
        ("/tasks/token=abc", "/tasks/token=abc"),
        ("https://dash.example/?read_token=s3cret#x", "https://dash.example/?read_token=***#x"),
    ],
)
def test_token_like_query_values_are_redacted(text: str, logged: str) -> None:
    assert redact(text) == logged


@pytest.mark.parametrize("logger_class", [SafeAccessLogger, QuietAccessLogger])
def test_the_access_log_line_leaves_out_tokens_in_the_url_and_the_referer(
    logger_class: type[AccessLogger], caplog: pytest.LogCaptureFixture
) -> None:
    request = make_mocked_request(
        "GET",
        "/tasks?token=s3cret&state=active",
        headers={"Referer": "http://127.0.0.1:8000/?access_token=0ther", "User-Agent": "curl"},
    )
    access_log = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, "test.access"):
        logger_class(access_log, AccessLogger.LOG_FORMAT).log(
            request, web.Response(status=401), 0.1
        )
    (line,) = caplog.messages
    assert "s3cret" not in line and "0ther" not in line
    assert '"GET /tasks?token=***&state=active HTTP/1.1" 401' in line
    assert '"http://127.0.0.1:8000/?access_token=***" "curl"' in line
