"""``make bench`` (client part): RemoteTqdm's cost to a worker, next to plain tqdm, in one run.

Loops are timed in a fresh subprocess per measurement so that one configuration's background
thread cannot slow another's, alternating plain and remote runs; figures are medians. The server
is a real process ("up"), a port nobody listens on ("down"), or a socket that accepts connections
and never answers ("hung").

Run ``python -m tests.bench.client --quick`` for a short smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..server_process import running_server

# One process per measurement; inside it the best of LOOPS runs, which removes the noise of
# one run (the other core's load) but keeps what differs between the two classes.
LOOP = """
import io, json, os, sys, time
from {module} import {name} as Bar
N = {n}
sink = open(os.devnull, "w")
kind = "{kind}"
best = float("inf")
for _ in range({loops}):
    if kind == "iter":
        started = time.perf_counter()
        for _ in Bar(range(N), file=sink):
            pass
        elapsed = time.perf_counter() - started
    else:
        bar = Bar(total=N, file=sink)
        started = time.perf_counter()
        for _ in range(N):
            bar.update(1)
        elapsed = time.perf_counter() - started
        closing = time.perf_counter()
        bar.close()
        print(json.dumps({{"close_ms": (time.perf_counter() - closing) * 1000}}), file=sys.stderr)
    best = min(best, elapsed)
print(json.dumps({{"ns_per_iteration": best / N * 1e9}}))
"""
LOOPS = 5


def time_loop(remote: bool, kind: str, n: int, url: str) -> tuple[float, float | None]:
    module, name = ("progressista.client", "RemoteTqdm") if remote else ("tqdm", "tqdm")
    result = subprocess.run(
        [sys.executable, "-c", LOOP.format(module=module, name=name, n=n, kind=kind, loops=LOOPS)],
        env={**os.environ, "PROGRESSISTA_URL": url, "PROGRESSISTA_FLUSH_TIMEOUT": "2"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    close_ms = None
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            close_ms = max(close_ms or 0.0, json.loads(line)["close_ms"])
    return json.loads(result.stdout)["ns_per_iteration"], close_ms


@contextmanager
def hung_server() -> Iterator[str]:
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1000)
        yield f"http://127.0.0.1:{hung.getsockname()[1]}"


def nobody() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def overhead(url: str, repeats: int, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {"close_ms": []}
    for kind in ("iter", "update"):
        ratios = []
        for _ in range(repeats):
            plain, _ = time_loop(False, kind, n, url)
            remote, close_ms = time_loop(True, kind, n, url)
            ratios.append(remote / plain)
            if close_ms is not None:
                result["close_ms"].append(close_ms)
        result[kind] = statistics.median(ratios)
    return result


DELIVERY = """
import io, json, time
from progressista.client import RemoteTqdm
bar = RemoteTqdm(total=100, file=io.StringIO(), task_id="{task_id}")
bar.update(100)
closed = time.time()
bar.close()
print(json.dumps({{"closed": closed}}))
"""


def delivery(server_url: str, runs: int) -> dict[str, Any]:
    """A short script, run ``runs`` times: does the final state arrive, and how soon?"""
    latencies = []
    delivered = 0
    for run in range(runs):
        task_id = f"delivery-{run}-{time.time_ns()}"
        output = subprocess.run(
            [sys.executable, "-c", DELIVERY.format(task_id=task_id)],
            env={**os.environ, "PROGRESSISTA_URL": server_url},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        closed = json.loads(output)["closed"]
        with urllib.request.urlopen(f"{server_url}/tasks/{task_id}", timeout=10) as response:
            task = json.load(response)
        if task["state"] == "completed" and task["n"] == 100:
            delivered += 1
            latencies.append((task["updated_at"] - closed) * 1000)
    return {
        "delivered": delivered,
        "runs": runs,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "max_ms": max(latencies) if latencies else float("nan"),
    }


HUNG_EXIT = """
import io, time
from progressista.client import RemoteTqdm
bar = RemoteTqdm(total=1000, file=io.StringIO(), mininterval=0)
for _ in range(1000):
    bar.update(1)
bar.close()
print(time.monotonic(), flush=True)  # the last statement: what follows is the exit flush
"""

#: The exit flush's bound in hung_exit, seconds.
HUNG_FLUSH_TIMEOUT = 1.0


def hung_exit(url: str, runs: int) -> dict[str, float]:
    """How long a worker whose server never answers takes to exit after its last statement.

    The functional tests only check that it exits; this is how soon, against the bound that
    PROGRESSISTA_FLUSH_TIMEOUT promises. CLOCK_MONOTONIC is shared by the two processes.
    """
    waits = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", HUNG_EXIT],
            env={
                **os.environ,
                "PROGRESSISTA_URL": url,
                "PROGRESSISTA_FLUSH_TIMEOUT": str(HUNG_FLUSH_TIMEOUT),
            },
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        waits.append(time.monotonic() - float(result.stdout))
    return {"p50": statistics.median(waits), "max": max(waits)}


MEMORY = """
import io, json, os, re
from progressista.client import RemoteTqdm
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
import time
bar = RemoteTqdm(total=None, file=open(os.devnull, "w"), mininterval={mininterval})
for _ in range(100_000):  # warm up: allocations that happen once
    bar.update(1)
time.sleep(1.0)  # and the sender's first attempt, which imports http.client in its thread
before = rss()
for _ in range({n}):
    bar.update(1)
after = rss()
print(json.dumps({{"growth": after - before}}))
os._exit(0)  # the server is hung: do not wait for the exit flush
"""


def memory_growth(url: str, n: int, mininterval: float) -> float:
    output = subprocess.run(
        [sys.executable, "-c", MEMORY.format(n=n, mininterval=mininterval)],
        env={**os.environ, "PROGRESSISTA_URL": url},
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    return float(json.loads(output)["growth"]) / 1024**2


def import_ratio(repeats: int) -> dict[str, float]:
    # As installed from a wheel: bytecode compiled (this machine sets PYTHONDONTWRITEBYTECODE).
    import compileall

    import progressista

    compileall.compile_dir(os.path.dirname(progressista.__file__), quiet=1)

    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    bare = best("pass")
    tqdm_cost = best("import tqdm") - bare
    client_cost = best("import progressista.client") - bare
    return {
        "tqdm_ms": tqdm_cost * 1000,
        "client_ms": client_cost * 1000,
        "ratio": client_cost / tqdm_cost,
    }


ASYNC_BARS = """
import asyncio, io, json, os, time
from progressista.client import AsyncRemoteTqdm
async def main():
    bars = [AsyncRemoteTqdm(total=10**9, file=io.StringIO(), task_id=f"async-{{i}}",
                            push_every=0.5) for i in range(1000)]
    started = time.monotonic()
    while time.monotonic() - started < {seconds}:
        for bar in bars:
            bar.update(1)
        await asyncio.sleep(0.01)
    for bar in bars:
        bar.close()
    print(json.dumps({{"seconds": time.monotonic() - started}}))
asyncio.run(main())
"""


def async_posts(server_url: str, seconds: float) -> dict[str, float]:
    """POSTs per push interval while 1,000 bars on one loop keep changing (steady state)."""

    def posts() -> float:
        with urllib.request.urlopen(f"{server_url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("progressista_ingest_requests_total "):
                    return float(line.split()[1])
        raise AssertionError("no ingest counter in /metrics")

    worker = subprocess.Popen(
        [sys.executable, "-c", ASYNC_BARS.format(seconds=seconds)],
        env={**os.environ, "PROGRESSISTA_URL": server_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)  # past start-up and the bars' first batch
    window = seconds - 2.0
    before = posts()
    time.sleep(window)
    count = posts() - before
    worker.wait(120)
    return {"posts": count, "intervals": window / 0.5, "per_interval": count / (window / 0.5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    repeats = 3 if options.quick else 9
    n = 300_000 if options.quick else 1_000_000
    results: dict[str, Any] = {}
    with running_server(["--log-level", "warning"]) as server:
        url = server.url.rstrip("/")
        results["up"] = overhead(url, repeats, n)
        results["delivery"] = delivery(url, 20 if options.quick else 100)
        results["async"] = async_posts(url, 5 if options.quick else 10)
    results["down"] = overhead(nobody(), repeats, n)
    with hung_server() as hung:
        results["hung"] = overhead(hung, repeats, n)
        results["hung_exit"] = hung_exit(hung, 5 if options.quick else 20)
        results["memory_default"] = memory_growth(hung, 10**6 if options.quick else 10**7, 0.1)
        results["memory_every"] = memory_growth(hung, 10**5 if options.quick else 10**6, 0)
    results["import"] = import_ratio(11 if options.quick else 31)
    report(results, n)
    return 0


def report(results: dict[str, Any], n: int) -> None:
    rows = []
    for state in ("up", "down", "hung"):
        measured = results[state]
        rows.append(
            (
                f"`for _ in RemoteTqdm(range(N))` / tqdm, server {state}",
                f"{measured['iter']:.3f}",
                "≤ 1.05",
                measured["iter"] <= 1.05,
            )
        )
        rows.append(
            (
                f"`bar.update(1)` loop / tqdm, server {state}",
                f"{measured['update']:.3f}",
                "≤ 1.05",
                measured["update"] <= 1.05,
            )
        )
    close_ms = max(max(results[s]["close_ms"]) for s in ("up", "down", "hung"))
    rows.append(
        ("longest `close()`, any server state", f"{close_ms:.2f} ms", "≤ 50 ms", close_ms <= 50)
    )
    waited = results["hung_exit"]
    rows.append(
        (
            f"exit with the server hung, PROGRESSISTA_FLUSH_TIMEOUT={HUNG_FLUSH_TIMEOUT:g}",
            f"p50 {waited['p50']:.2f} s, max {waited['max']:.2f} s after the last statement",
            f"≤ {HUNG_FLUSH_TIMEOUT + 0.5:g} s",
            waited["max"] <= HUNG_FLUSH_TIMEOUT + 0.5,
        )
    )
    delivered = results["delivery"]
    rows.append(
        (
            "final state delivered by a short script",
            f"{delivered['delivered']}/{delivered['runs']} runs; close → server "
            f"p50 {delivered['p50_ms']:.0f} ms, max {delivered['max_ms']:.0f} ms",
            "every run",
            delivered["delivered"] == delivered["runs"],
        )
    )
    rows.append(
        (
            "memory growth, 10M updates, server hung",
            f"{results['memory_default']:.2f} MiB (and {results['memory_every']:.2f} MiB "
            "for 1M updates that each repaint)",
            "≤ 1 MiB",
            max(results["memory_default"], results["memory_every"]) <= 1,
        )
    )
    imported = results["import"]
    rows.append(
        (
            "`import progressista.client` / `import tqdm`",
            f"{imported['ratio']:.2f} ({imported['client_ms']:.0f} ms vs "
            f"{imported['tqdm_ms']:.0f} ms)",
            "≤ 1.5",
            imported["ratio"] <= 1.5,
        )
    )
    posts = results["async"]
    rows.append(
        (
            "1,000 async bars on one loop",
            f"{posts['per_interval']:.2f} POSTs per "
            f"push_every ({posts['posts']:.0f} in {posts['intervals']:.0f} intervals)",
            "≤ 1",
            posts["per_interval"] <= 1.0,
        )
    )
    print(f"| measure (N = {n:,}) | result | target | met |")
    print("| --- | --- | --- | --- |")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
