"""``make bench`` (connections): ``/healthz`` while 3,000 slowloris connections are held open.

An attacker process holds ``--connections`` connections, opened over 10 s, each sending one
header byte every 10 s and never finishing its request; when the server closes one (408 at
``--read-timeout``, or to make room at ``--max-connections``), it opens another at once, so the
count stays up. A
separate prober process times ``GET /healthz`` on a fresh connection 20 times a second. The
figure is the prober's p99, next to the same prober against an idle server in the same run.

Run twice: against the server as shipped (the bench raises its own descriptor limit; the server
raises its soft limit to the hard one), and against a server held to 1,024 descriptors, where
3,000 connections cannot all be open and the connection limit has to make room.

Run ``python -m tests.bench.slowloris --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import re
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..server_process import running_server
from .report import percentile

#: A request that never ends: headers, one byte at a time, forever.
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
PROBE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
#: Seconds between two bytes of a slow connection's headers.
BYTE_EVERY = 10.0
#: Seconds a probe may take before it counts as failed (and as this long).
PROBE_TIMEOUT = 5.0


def raise_descriptor_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Attack:
    opened: int
    closed_by_server: int
    held_at_end: int


async def _attack(port: int, connections: int, byte_every: float, stop_at: float) -> Attack:
    opened = closed = 0
    held = 0

    async def hold(index: int) -> None:
        nonlocal opened, closed, held
        # Spread over one byte interval, as a slowloris tool opens them: each connection then
        # sends its bytes, and times out, at its own moment.
        await asyncio.sleep(index * byte_every / connections)
        while time.time() < stop_at:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            opened += 1
            held += 1
            try:
                writer.write(HEAD)
                while time.time() < stop_at:
                    try:
                        data = await asyncio.wait_for(reader.read(4096), byte_every)
                    except asyncio.TimeoutError:
                        writer.write(b"x")  # one more byte of a header that never ends
                        continue
                    if not data or data.startswith(b"HTTP/"):
                        closed += 1  # 408, or closed to make room: come back at once
                        break
            except OSError:
                closed += 1
            finally:
                held -= 1
                writer.close()

    tasks = [asyncio.create_task(hold(index)) for index in range(connections)]
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    held_at_end = held
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Attack(opened, closed, held_at_end)


def attack(port: int, connections: int, byte_every: float, stop_at: float) -> Attack:
    raise_descriptor_limit()
    return asyncio.run(_attack(port, connections, byte_every, stop_at))


def probe(port: int, start_at: float, seconds: float, per_second: float) -> list[float]:
    """Milliseconds per ``GET /healthz`` on a fresh connection, failures as PROBE_TIMEOUT."""
    time.sleep(max(0.0, start_at - time.time()))
    latencies = []
    next_at = time.perf_counter()
    stop = next_at + seconds
    while next_at < stop:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
                sock.sendall(PROBE)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            ok = answer.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        elapsed = time.perf_counter() - started
        latencies.append(elapsed * 1000 if ok else PROBE_TIMEOUT * 1000)
        next_at += 1 / per_second
    return latencies


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


@dataclass
class Run:
    idle_p50: float
    idle_p99: float
    p50: float
    p99: float
    failed: int
    probes: int
    held: int
    server_connections: float
    opened: int
    closed_by_server: int
    rss_mib: float


def run(
    connections: int, seconds: float, byte_every: float, preexec: Callable[[], None] | None
) -> Run:
    context = multiprocessing.get_context("spawn")
    with (
        running_server(["--log-level", "warning"], preexec_fn=preexec) as server,
        concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool,
    ):
        idle = pool.submit(probe, server.port, time.time(), min(seconds, 5.0), 20).result()
        ramp = byte_every + 3.0  # time to open every connection
        stop_at = time.time() + ramp + seconds + 2
        attacking = pool.submit(attack, server.port, connections, byte_every, stop_at)
        time.sleep(ramp)
        latencies = pool.submit(probe, server.port, time.time(), seconds, 20).result()
        held = server.metric("progressista_connections")  # the attack goes on 2 s more
        rss = rss_mib(server.process.pid)
        result = attacking.result(timeout=seconds + 120)
    return Run(
        idle_p50=percentile(idle, 0.5),
        idle_p99=percentile(idle, 0.99),
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        failed=sum(1 for latency in latencies if latency >= PROBE_TIMEOUT * 1000),
        probes=len(latencies),
        held=result.held_at_end,
        server_connections=held,
        opened=result.opened,
        closed_by_server=result.closed_by_server,
        rss_mib=rss,
    )


def _thousand_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--only-shipped", action="store_true", help="skip the 1,024-descriptor run")
    options = parser.parse_args()
    seconds = 10.0 if options.quick else 40.0
    raise_descriptor_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < options.connections + 200:
        print(f"needs {options.connections + 200} file descriptors, has {soft}", file=sys.stderr)
        return 2
    rows = []
    scenarios: list[tuple[str, Callable[[], None] | None]] = [("as shipped", None)]
    if not options.only_shipped:
        scenarios.append(("server held to 1,024 descriptors", _thousand_descriptors))
    for name, preexec in scenarios:
        result = run(options.connections, seconds, BYTE_EVERY, preexec)
        rows.append((name, result))
    print("| measure | result | context | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for name, result in rows:
        target = name == "as shipped"
        print(
            f"| `/healthz` with {options.connections:,} slow connections, {name} "
            f"| p50 {result.p50:.1f} ms, p99 {result.p99:.1f} ms, "
            f"{result.failed}/{result.probes} failed "
            f"| idle server p99 {result.idle_p99:.1f} ms; {result.server_connections:,.0f} "
            f"connections open on the server; {result.closed_by_server:,} closed by it "
            f"(408 or to make room); server RSS {result.rss_mib:.0f} MiB "
            f"| {'p99 ≤ 50 ms' if target else 'every probe answered'} "
            f"| {'yes' if (result.p99 <= 50 if target else result.failed == 0) else 'NO'} |"
        )
    print(
        f"\nmeasured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}; {seconds:.0f} s of probes at 20/s per run",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
