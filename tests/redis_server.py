"""Debian's ``redis-server`` as a real process for the Redis store's tests and benchmarks.

Each one listens on a free loopback port with a temporary directory of its own, never a
developer's Redis. Where ``redis-server`` is missing the tests are skipped with the reason, except
when ``PROGRESSISTA_REQUIRE_REDIS`` is set (CI sets it): then a missing Redis fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import free_port


def redis_server_path() -> str:
    """The redis-server to run, or a skip (a failure in CI) saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    message = "the Redis store's tests need redis-server: apt-get install redis-server"
    if os.environ.get("PROGRESSISTA_REQUIRE_REDIS"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class RedisProcess:
    """One redis-server; it can be stopped and started again on the same port and data."""

    directory: Path
    appendonly: bool
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_path(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always" if self.appendonly else "everysec",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start: {log}")
            time.sleep(0.02)

    def answers(self) -> bool:
        """Whether it answers PING (and has loaded its data: LOADING answers are not +PONG)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, as a service manager would: Redis writes what it holds, then exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running_redis(directory: Path, *, appendonly: bool = False) -> Iterator[RedisProcess]:
    redis = RedisProcess(directory, appendonly)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()
