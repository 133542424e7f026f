"""Connections: requests that never finish arriving, idle and surplus connections, requests the
HTTP parser refuses, and a server out of file descriptors."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from progressista.server.connections import Connections, OncePer

from .conftest import Client, MakeClient

#: How long a test waits for what it expects before calling it a hang (a busy machine is slow).
HANG = 20.0


class Raw:
    """One TCP connection to the test server, written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self) -> tuple[int, dict[str, str], Any]:
        """Everything the server sends until it closes: status, headers and decoded JSON body."""
        data = await asyncio.wait_for(self.reader.read(), HANG)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines)
        return int(status_line.split()[1]), headers, json.loads(body) if body else None

    async def closed(self) -> bool:
        """Whether the server closed the connection (without answering), waiting for it."""
        return await asyncio.wait_for(self.reader.read(), HANG) == b""


@asynccontextmanager
async def raw(client: Client) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        yield Raw(reader, writer)
    finally:
        writer.close()


async def metrics(client: Client) -> set[str]:
    return set((await (await client.get("/metrics")).text()).splitlines())


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "a request line or header is longer than 8190 bytes",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(200))
            + b"\r\n",
            "Too many headers received",
        ),
        (
            b"POST /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: nosuch\r\n\r\n",
            "Transfer-Encoding",
        ),
        (
            b"POST /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
            "Content-Length",
        ),
        (
            b"GET /tasks?token=s3cret HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad\x01: x\r\n\r\n",
            "",
        ),
    ],
)
async def test_requests_the_parser_refuses_get_a_json_400_and_one_log_line(
    client: Client, caplog: pytest.LogCaptureFixture, request_bytes: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO)  # the access log too
    async with raw(client) as connection:
        connection.send(request_bytes)
        status, headers, body = await connection.answer()
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert set(body) == {"error", "details"} and body["details"] == []
    assert body["error"].startswith("the request is malformed: ")
    assert reason in body["error"]
    assert "s3cret" not in body["error"]
    server_side = ("progressista.server", "aiohttp.server", "aiohttp.access")
    lines = [record for record in caplog.records if record.name in server_side]
    assert [record.getMessage() for record in lines] == [
        f"refused a malformed request from 127.0.0.1: {body['error'].split(': ', 1)[1]}"
    ]
    assert not [record for record in caplog.records if record.exc_info]
    assert "progressista_malformed_requests_total 1.0" in await metrics(client)


async def test_a_request_that_does_not_arrive_within_the_read_timeout_gets_408(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_timeout=0.2)
    async with raw(client) as connection:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        status, headers, body = await connection.answer()
    assert (status, headers["Connection"], body) == (
        408,
        "close",
        {
            "error": "the request did not arrive within 0.2 s; send it whole, or ask the "
            "server's operator about --read-timeout",
            "details": [],
        },
    )
    lines = await metrics(client)
    assert 'progressista_connections_closed_total{reason="read_timeout"} 1.0' in lines


async def test_a_request_trickling_in_byte_by_byte_is_cut_at_the_read_timeout(
    make_client: MakeClient,
) -> None:
    """Slowloris: every byte arrives before the connection would look idle, the request never."""
    client = await make_client(read_timeout=0.3)
    async with raw(client) as connection:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 10_000:
            connection.send(bytes([byte]))
            try:  # a byte every 20 ms, until the server answers
                data = await asyncio.wait_for(connection.reader.read(), 0.02)
            except asyncio.TimeoutError:
                continue
            break
        else:
            raise AssertionError("the server let the request trickle in for ever")
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_a_body_that_does_not_arrive_within_the_read_timeout_gets_408(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_timeout=0.2)
    async with raw(client) as connection:
        connection.send(
            b"POST /progress HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\nConnection: close\r\n\r\n[{"task_id": '
        )
        status, _, body = await connection.answer()
    assert (status, body) == (
        408,
        {
            "error": "the body did not arrive within 0.2 s of the headers; send it whole, or "
            "ask the server's operator about --read-timeout",
            "details": [],
        },
    )


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    make_client: MakeClient,
) -> None:
    client = await make_client(keepalive_timeout=0.2)
    async with raw(client) as connection:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await connection.reader.readline()).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(connection.reader.readuntil(b'"store":"ok"}'), HANG)
        assert await connection.closed()  # nothing more, and then the server hangs up


async def test_past_max_connections_the_longest_idle_one_makes_room(
    make_client: MakeClient,
) -> None:
    client = await make_client(max_connections=3)
    async with raw(client) as first, raw(client) as second, raw(client) as third:
        first.send(b"GET /heal")  # a slow request: as idle as a kept-alive connection
        second.send(b"GET /heal")
        third.send(b"GET /heal")
        # A fourth connection: the server is full of connections that are waiting, not working.
        response = await client.get("/healthz")
        assert response.status == 200
        assert await first.closed()
        second.send(b"thz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await second.answer())[0] == 200
        lines = await metrics(client)
    assert 'progressista_connections_closed_total{reason="evicted"} 1.0' in lines


async def test_a_request_under_way_is_never_cut_to_make_room(make_client: MakeClient) -> None:
    client = await make_client(max_connections=2)
    async with client.ws_connect("/ws") as one, client.ws_connect("/ws") as other:
        await one.receive_json(timeout=HANG)
        await other.receive_json(timeout=HANG)
        async with raw(client) as late:
            assert await late.closed()  # refused: both viewers are busy, and stay
        assert not one.closed and not other.closed
    lines = await metrics(client)
    assert 'progressista_connections_closed_total{reason="refused"} 1.0' in lines


def test_trouble_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    report = OncePer(logging.getLogger("test.once"), logging.WARNING, 10.0, lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.once"):
        for second in range(25):
            now[0] = float(second)
            for _ in range(100):
                report("out of %s", "descriptors")
    assert caplog.messages == [
        "out of descriptors",
        "out of descriptors (and 999 more like it in the last 10 s)",
        "out of descriptors (and 999 more like it in the last 10 s)",
    ]


async def test_accept_errors_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno
    import os

    loop = asyncio.get_running_loop()
    connections = Connections(read_timeout=1.0, max_connections=10)
    previous = loop.get_exception_handler()
    connections.report_accept_errors(loop)
    try:
        error = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        with caplog.at_level(logging.INFO):
            for _ in range(3000):  # what asyncio's retries wrote in a few seconds
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
    finally:
        loop.set_exception_handler(previous)
    assert connections.stats.accept_errors == 3000
    assert caplog.messages == [
        "cannot accept connections: Too many open files; raise the file-descriptor limit "
        "(ulimit -n) or lower --max-connections"
    ]
    assert not [record for record in caplog.records if record.exc_info]


def test_the_automatic_limit_leaves_descriptors_for_what_it_does_not_count() -> None:
    from progressista.server.connections import automatic_connection_limit

    # asyncio accepts 128 at a time before any is counted, and closed ones hold their
    # descriptor a little longer: at 3/4 of 1,024 a flood of reconnections hit EMFILE.
    assert automatic_connection_limit(1024) == 512
    assert automatic_connection_limit(1_048_576) == 20_000  # ~7 KiB each: 140 MiB at most
    assert automatic_connection_limit(3) == 1


async def test_a_server_bug_is_a_json_500_with_its_traceback_in_the_log(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from progressista.server.keys import STORE

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app[STORE], "apply", broken)
    response = await client.post("/progress", json={"task_id": "a"})
    assert (response.status, await response.json()) == (
        500,
        {"error": "the server failed to handle this request; its log says why", "details": []},
    )
    (record,) = [record for record in caplog.records if record.exc_info]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
