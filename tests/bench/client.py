"""``make bench`` (client part): RemoteTqdm's cost to a worker, next to plain tqdm, in one run.

Loops are timed in a fresh subprocess per measurement so that one configuration's background
thread cannot slow another's, alternating plain and remote runs; figures are medians. The server
is a real process ("up"), a port nobody listens on ("down"), or a socket that accepts connections
and never answers ("hung"). Also: what an outage adds to whole programs, and a worker with ten
thousand bars (threads, and one asyncio loop): its loop speed next to plain tqdm's (wall clock,
and per CPU second of the worker, which a busy machine disturbs less) and how old each bar's
state on the server gets.

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


ASYNC_BLOCKS = """
import asyncio, io
from progressista.client import AsyncRemoteTqdm
async def main():
    for block in range(5):
        async with AsyncRemoteTqdm(total=1, file=io.StringIO(), task_id=f"block-{block}") as bar:
            bar.update(1)
asyncio.run(main())
"""

SHORT_SCRIPT = "import time\nfrom tqdm import tqdm\nfor _ in tqdm(range(5)):\n    time.sleep(0.1)\n"


def wall(argv: list[str], url: str) -> float:
    """Seconds a whole process takes, start to exit."""
    started = time.perf_counter()
    subprocess.run(
        argv,
        env={**os.environ, "PROGRESSISTA_URL": url, "PROGRESSISTA_FLUSH_TIMEOUT": "2"},
        capture_output=True,
        check=False,
        timeout=120,
    )
    return time.perf_counter() - started


def outage_costs(up: str, down: str, hung: str, repeats: int, scratch: str) -> dict[str, Any]:
    """What a server that refuses or never answers adds to whole programs, next to one that is
    up, measured alternately: five sequential ``async with`` blocks, and ``progressista run``
    of a 0.5 s script."""
    script = os.path.join(scratch, "short.py")
    with open(script, "w") as handle:
        handle.write(SHORT_SCRIPT)
    programs = {
        "async_blocks": [sys.executable, "-c", ASYNC_BLOCKS],
        "run_short": [sys.executable, "-m", "progressista.cli", "run", "--url", "{url}", script],
    }
    results: dict[str, Any] = {}
    for name, argv in programs.items():
        times: dict[str, list[float]] = {"up": [], "down": [], "hung": []}
        for _ in range(repeats):
            for state, url in (("up", up), ("down", down), ("hung", hung)):
                times[state].append(wall([arg.replace("{url}", url) for arg in argv], url))
        medians = {state: statistics.median(values) for state, values in times.items()}
        results[name] = {
            **medians,
            "down_extra": medians["down"] - medians["up"],
            "hung_extra": medians["hung"] - medians["up"],
        }
    return results


MANY_BARS = """
import asyncio, json, os, sys, time
BARS, SECONDS, JOB, KIND, REMOTE = {bars}, {seconds}, {job!r}, {kind!r}, {remote}
sink = open(os.devnull, "w")
if KIND == "thread":
    from progressista.client import RemoteTqdm
    from tqdm import tqdm
    Bar = RemoteTqdm if REMOTE else tqdm
else:
    from progressista.client import AsyncRemoteTqdm
    from tqdm.asyncio import tqdm_asyncio
    Bar = AsyncRemoteTqdm if REMOTE else tqdm_asyncio
def make():
    # position=0: tqdm would otherwise look for a free line among every bar, for every bar.
    # The same ids every run: each run's events outrank the last one's (seq is a clock).
    return [Bar(total=10**9, file=sink, position=0,
                **({{"job": JOB, "task_id": f"{{JOB}}-{{i}}"}} if REMOTE else {{}}))
            for i in range(BARS)]

def report(updates, elapsed):
    cpu = time.process_time() - cpu_started  # every thread of the worker, the sender's too
    print(json.dumps({{"updates_per_s": updates / elapsed, "updates_per_cpu_s": updates / cpu}}),
          flush=True)
    os._exit(0)  # no exit flush, no closing of ten thousand bars: only the loop is measured

if KIND == "thread":
    bars = make()
    print("go", flush=True)
    updates, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < SECONDS:
        for bar in bars:
            bar.update(1)
        updates += BARS
    report(updates, time.perf_counter() - started)
else:
    async def main():
        global cpu_started
        bars = make()
        print("go", flush=True)
        updates, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < SECONDS:
            for i, bar in enumerate(bars):
                bar.update(1)
                if i % 100 == 0:
                    await asyncio.sleep(0)  # an asyncio program awaits something, often
            updates += BARS
        report(updates, time.perf_counter() - started)
    asyncio.run(main())
"""


def many_bars_once(
    server_url: str, kind: str, remote: bool, bars: int, seconds: float, job: str
) -> dict[str, Any]:
    """One worker with ``bars`` bars updated in a loop; for a remote one, how old each bar's
    state on the server gets, from ``GET /tasks`` (age: reply received minus the event's
    client timestamp, so the time /tasks itself takes counts against the client)."""
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            MANY_BARS.format(bars=bars, seconds=seconds, job=job, kind=kind, remote=remote),
        ],
        env={**os.environ, "PROGRESSISTA_URL": server_url},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "go"
    started = time.monotonic()
    ages: list[float] = []
    worst_per_poll: list[float] = []
    reads: list[float] = []  # how long each GET /tasks took: counted in the ages above
    if remote:
        time.sleep(2.0)  # the first round: every bar's start event
        while time.monotonic() - started < seconds - 1.0:
            asked = time.time()
            with urllib.request.urlopen(f"{server_url}/tasks?job={job}", timeout=30) as reply:
                found = json.load(reply)["tasks"]
            now = time.time()
            reads.append(now - asked)
            poll = [now - task["timestamp"] for task in found.values()]
            if len(poll) < bars:  # a bar the server does not have is as stale as can be
                poll.append(float("inf"))
            ages.extend(poll)
            worst_per_poll.append(max(poll))
            time.sleep(0.5)
    output, _ = worker.communicate(timeout=120)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    if remote:
        ages.sort()
        result["worst_age"] = max(worst_per_poll)
        result["median_worst_age"] = statistics.median(worst_per_poll)
        result["p99_age"] = ages[int(len(ages) * 0.99)]
        result["read_s"] = statistics.median(reads)
    return result


def many_bars(
    server_url: str, kind: str, repeats: int, bars: int, seconds: float
) -> dict[str, Any]:
    """Plain and remote workers alternated; loop-speed ratios and server-side ages."""
    ratios, cpu_ratios, worst, median_worst, p99, reads = [], [], [], [], [], []
    for _ in range(repeats):
        plain = many_bars_once(server_url, kind, False, bars, seconds, "")
        remote = many_bars_once(server_url, kind, True, bars, seconds, f"many-{kind}")
        ratios.append(remote["updates_per_s"] / plain["updates_per_s"])
        cpu_ratios.append(remote["updates_per_cpu_s"] / plain["updates_per_cpu_s"])
        worst.append(remote["worst_age"])
        median_worst.append(remote["median_worst_age"])
        p99.append(remote["p99_age"])
        reads.append(remote["read_s"])
        print(
            f"  {kind}: plain {plain['updates_per_s']:,.0f} updates/s, remote "
            f"{remote['updates_per_s']:,.0f}/s (per CPU second {cpu_ratios[-1]:.3f}); "
            f"oldest state {remote['worst_age']:.2f} s",
            file=sys.stderr,
        )
    return {
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios),
        "worst_age": max(worst),
        "median_worst_age": statistics.median(median_worst),
        "p99_age": statistics.median(p99),
        "read_s": statistics.median(reads),
    }


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
    for kind in ("thread", "async"):
        with running_server(["--log-level", "warning"]) as server:  # 10,000 tasks of its own
            results[f"many_{kind}"] = many_bars(
                server.url.rstrip("/"),
                kind,
                2 if options.quick else 5,
                10_000,
                6.0 if options.quick else 10.0,
            )
    results["down"] = overhead(nobody(), repeats, n)
    with running_server(["--log-level", "warning"]) as server, hung_server() as hung:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            results["outage"] = outage_costs(
                server.url.rstrip("/"), nobody(), hung, 3 if options.quick else 5, scratch
            )
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
    for name, label in (
        ("async_blocks", "five sequential `async with` blocks"),
        ("run_short", "`progressista run` of a 0.5 s script"),
    ):
        cost = results["outage"][name]
        rows.append(
            (
                f"{label}: time added by a server refusing / hung",
                f"{cost['down_extra']:+.2f} s / {cost['hung_extra']:+.2f} s "
                f"(up: {cost['up']:.2f} s in all)",
                "≤ 0.5 s / ≤ 2 s (flush timeout)",
                cost["down_extra"] <= 0.5 and cost["hung_extra"] <= 2.0 + 0.25,
            )
        )
    for kind, label in (("thread", "threads"), ("async", "one asyncio loop")):
        many = results[f"many_{kind}"]
        rows.append(
            (
                f"10,000 bars ({label}), tight loop: speed / tqdm",
                f"{many['ratio']:.3f} (per CPU second of the worker: {many['cpu_ratio']:.3f})",
                "≥ 0.95",
                many["ratio"] >= 0.95,
            )
        )
        rows.append(
            (
                f"10,000 bars ({label}): age of a bar's state on the server",
                f"worst {many['worst_age']:.2f} s, median of each poll's worst "
                f"{many['median_worst_age']:.2f} s, p99 {many['p99_age']:.2f} s (each "
                f"GET /tasks of 10,000 tasks, {many['read_s'] * 1000:.0f} ms, counted in)",
                "≤ 1 s",
                many["worst_age"] <= 1.0,
            )
        )
    print(f"| measure (N = {n:,}) | result | target | met |")
    print("| --- | --- | --- | --- |")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
