"""``make bench`` (fan-out part): 1,000 feed viewers at 4,000 events/s over 1,000 tasks (issue 9,
target 5), next to 10 viewers of the same load, alternating, each run on a fresh server.

- Producers: 20 processes' worth of workers in one process (aiohttp), 50 bars each, 50 events a
  POST every 0.25 s: 4,000 events/s, each bar's ``n``, ``elapsed`` and ``rate`` moving with every
  event as a real bar's do. ``elapsed`` carries the send time (see ``load.py``).
- Viewers: raw-socket WebSocket viewers (``viewer.py``), spread over several processes. All
  connect to the empty board before the load starts. Every frame is kept by reference (identical
  frames shared) with its arrival time; nothing is parsed while the load runs, so the viewers'
  CPU stays small next to the server's. Afterwards each process decodes each distinct frame once,
  works out every (viewer, event) latency - event send time to the frame's arrival - and replays
  each viewer's frames through ``tests/feed_model.py``'s Board; the board must equal ``GET /tasks``
  (no update lost).
- Wire bytes are WebSocket frames (header and payload) per viewer, over the events sent in the
  same window; TCP/IP headers are not counted.

The machine has 2 cores for the server, the viewers and the producers: the table gives each
one's CPU and the viewer processes' own event-loop lag, so that what the viewers' CPU adds to the
latency is visible. ``python -m tests.bench.fanout --quick`` is a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..feed_model import Board, entries, without_unshown
from ..server_process import running_server
from .board import post
from .load import ProducerPlan, ProducerResult, run_producers, time_base
from .monitor import read_log
from .report import Row, median_spread, print_table
from .usage import cpu_seconds
from .viewer import ViewerProtocol, inflated, open_viewer

#: Latencies are counted in bins of this many seconds.
BIN = 0.0005
#: Events sent this long after the start are "settled": every bar has appeared (whole) by then,
#: and what they wait for is the steady flow, not a thousand new bars sent to every viewer.
SETTLED_AFTER = 1.0
SENTINEL_ID = "fanout/done"
SENTINEL = b'"fanout/done"'


@dataclass
class WatchPlan:
    url: str
    viewers: int
    start_at: float
    end_at: float
    #: Give up waiting for the sentinel at this time.
    deadline: float
    #: The viewers offer permessage-deflate, as browsers do.
    deflate: bool = False


@dataclass
class WatchResult:
    #: Latency bin → (viewer, event) pairs, for frames arriving in the window.
    latency: Counter[int] = field(default_factory=Counter)
    #: The same for the events sent ``SETTLED_AFTER`` the start or later.
    settled: Counter[int] = field(default_factory=Counter)
    #: Per distinct frame seen in the window: (its first arrival here, its events' send times).
    first: dict[bytes, tuple[float, list[float]]] = field(default_factory=dict)
    wire_bytes: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    #: Viewers whose replayed board equals GET /tasks at the end, and those whose does not.
    matched: int = 0
    mismatched: int = 0
    missing_sentinel: int = 0
    distinct_logs: int = 0
    example: str = ""
    cpu_seconds: float = 0.0
    #: This process's event-loop lag during the window (seconds), sampled every 5 ms.
    lag: list[float] = field(default_factory=list)
    connected_late: int = 0


class _Frames:
    """Every distinct frame once, found again by its length and start, confirmed by content."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.arrivals: list[list[float]] = []
        self._by_start: dict[tuple[int, bytes], list[int]] = {}

    def intern(self, payload: bytes) -> int:
        key = (len(payload), payload[:96])
        found = self._by_start.get(key)
        if found is None:
            found = self._by_start[key] = []
        else:
            for index in found:
                if self.payloads[index] == payload:
                    return index
        index = len(self.payloads)
        self.payloads.append(payload)
        self.arrivals.append([])
        found.append(index)
        return index


def _send_times(message: dict[str, Any], base: float) -> list[float]:
    return [
        base + task["elapsed"]
        for _, task in entries(message)
        if isinstance(task.get("elapsed"), int | float)
    ]


@dataclass
class _Received:
    """What one process's viewers got, as it came: kept raw until the load is over."""

    frames: _Frames
    #: Per viewer, the frames it got, in order (indexes into ``frames``).
    logs: list[list[int]]
    done: list[bool]


async def _receive(plan: WatchPlan, result: WatchResult) -> _Received:
    loop = asyncio.get_running_loop()
    frames = _Frames()
    count = plan.viewers
    logs: list[list[int]] = [[] for _ in range(count)]
    wire = [0] * count
    received = [0] * count
    done = [False] * count
    remaining = [count]
    finished = asyncio.Event()
    start_at, end_at = plan.start_at, plan.end_at
    result.wire_bytes, result.frames = wire, received

    def on_frame(viewer: int) -> Any:
        log = logs[viewer]

        def arrived_frame(payload: bytes, size: int, arrived: float) -> None:
            index = frames.intern(payload)
            log.append(index)
            if start_at <= arrived <= end_at:
                frames.arrivals[index].append(arrived)
                wire[viewer] += size
                received[viewer] += 1
            elif arrived > end_at and not done[viewer] and SENTINEL in inflated(payload):
                done[viewer] = True
                remaining[0] -= 1
                if not remaining[0]:
                    finished.set()

        return arrived_frame

    viewers: list[ViewerProtocol] = []
    for start in range(0, count, 50):  # a few at a time: the server accepts them one by one
        viewers += await asyncio.gather(
            *(
                open_viewer(plan.url, "/ws", on_frame(i), plan.deflate)
                for i in range(start, min(count, start + 50))
            )
        )
    result.connected_late = count if time.time() > start_at else 0

    async def sample_lag() -> None:
        period = 0.005
        while time.time() < end_at:
            expected = loop.time() + period
            await asyncio.sleep(period)
            if time.time() >= start_at:
                result.lag.append(loop.time() - expected)

    async def measure_cpu() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before = time.process_time()
        await asyncio.sleep(max(0.0, end_at - time.time()))
        result.cpu_seconds = time.process_time() - before

    lag = asyncio.create_task(sample_lag())
    cpu = asyncio.create_task(measure_cpu())
    try:
        await asyncio.wait_for(finished.wait(), timeout=max(1.0, plan.deadline - time.time()))
    except asyncio.TimeoutError:
        pass
    await lag
    await cpu
    for viewer in viewers:
        viewer.close()
    return _Received(frames, logs, done)


def _analyse(plan: WatchPlan, got: _Received, result: WatchResult) -> None:
    """The load is over: now the viewers' work can be done without touching the figures."""
    frames = got.frames
    result.missing_sentinel = got.done.count(False)
    base = time_base(plan.start_at)
    settled_from = plan.start_at + SETTLED_AFTER
    decoded: dict[int, dict[str, Any]] = {}

    def message(index: int) -> dict[str, Any]:
        if index not in decoded:
            decoded[index] = msgspec.json.decode(inflated(frames.payloads[index]))
        return decoded[index]

    for index, arrivals in enumerate(frames.arrivals):
        if not arrivals:
            continue
        sends = _send_times(message(index), base)
        if not sends:
            continue
        result.first[frames.payloads[index]] = (min(arrivals), sends)
        shifts = Counter(round(arrival / BIN) for arrival in arrivals)
        for sent, histogram in (
            (sends, result.latency),
            ([send for send in sends if send >= settled_from], result.settled),
        ):
            offsets = Counter(round(-send / BIN) for send in sent)
            for shift, times in shifts.items():
                for offset, events in offsets.items():
                    histogram[shift + offset] += times * events
    with urllib.request.urlopen(f"{plan.url}tasks", timeout=120) as response:
        expected = without_unshown(msgspec.json.decode(response.read())["tasks"])
    groups = Counter(tuple(log) for log in got.logs)
    result.distinct_logs = len(groups)
    for log, viewers_with_it in groups.items():
        board = Board()
        for index in log:
            board.apply(message(index))
        if board.shown() == expected:
            result.matched += viewers_with_it
        else:
            result.mismatched += viewers_with_it
            if not result.example:
                mine = board.shown()
                wrong = [t for t in expected if mine.get(t) != expected[t]]
                extra = [t for t in mine if t not in expected]
                result.example = (
                    f"{len(wrong)} tasks differ (e.g. {wrong[:1]}), {len(extra)} extra; "
                    f"{len(log)} frames"
                )


def watch(plan: WatchPlan) -> WatchResult:
    """One viewer process's part: receive during the load, then check and count."""
    result = WatchResult()
    got = asyncio.run(_receive(plan, result))
    _analyse(plan, got, result)
    return result


@dataclass
class FanoutRun:
    viewers: int
    events_per_second: float
    sent: int
    accepted: int
    failed_posts: int
    p50_ms: float
    p99_ms: float
    #: p99 of the events sent once every bar had appeared (``SETTLED_AFTER``).
    settled_p99_ms: float
    max_ms: float
    #: Latency to the first viewer to get each frame: the server's part, mostly.
    first_p99_ms: float
    bytes_per_event: float
    bytes_per_event_max: float
    server_cpu: float
    viewers_cpu: float
    producers_cpu: float
    machine_busy: float
    viewer_lag_p99_ms: float
    viewer_lag_max_ms: float
    matched: int
    mismatched: int
    missing_sentinel: int
    distinct_logs: int
    example: str


def _from_bins(histogram: Counter[int], fraction: float) -> float:
    total = sum(histogram.values())
    seen = 0
    for bin_, count in sorted(histogram.items()):
        seen += count
        if seen >= fraction * total:
            return bin_ * BIN * 1000
    return float("nan")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_fanout(
    viewers: int,
    processes: int,
    seconds: float,
    nice: int = 0,
    monitor: Path | None = None,
    deflate: bool = False,
) -> FanoutRun:
    """One run on a fresh server. ``nice`` below 0 gives the server the cores before the viewers
    and producers (and anything else on the machine): what it does when nobody takes its CPU.
    ``monitor`` names a file for the loop monitor's log (the server then runs under
    ``tests/bench/monitor.py``)."""
    context = multiprocessing.get_context("spawn")
    with (
        running_server(
            [str(monitor)] if monitor else [],
            module="tests.bench.monitor" if monitor else "progressista.server",
        ) as server,
        concurrent.futures.ProcessPoolExecutor(processes + 1, mp_context=context) as pool,
    ):
        if nice:
            os.setpriority(os.PRIO_PROCESS, server.process.pid, nice)  # needs root for < 0
        start_at = time.time() + 4.0 + viewers * 0.006
        end_at = start_at + seconds
        shares = [viewers // processes + (i < viewers % processes) for i in range(processes)]
        plan = ProducerPlan(
            server.url,
            producers=20,
            tasks_per_producer=50,
            events_per_post=50,
            post_interval=0.25,
            start_at=start_at,
            duration=seconds,
        )
        watching = [
            pool.submit(watch, WatchPlan(server.url, share, start_at, end_at, end_at + 60, deflate))
            for share in shares
            if share
        ]
        producing = pool.submit(run_producers, plan)
        time.sleep(max(0.0, start_at - time.time()))
        server_before = cpu_seconds(server.process.pid)
        busy_before, total_before = _machine_busy()
        time.sleep(max(0.0, end_at - time.time()))
        server_used = cpu_seconds(server.process.pid) - server_before
        busy_after, total_after = _machine_busy()
        produced: ProducerResult = producing.result(timeout=120)
        post(server.url, [{"task_id": SENTINEL_ID, "status": "close"}])
        results: list[WatchResult] = [w.result(timeout=600) for w in watching]
    return _combine(
        viewers,
        seconds,
        produced,
        results,
        server_used,
        busy_after - busy_before,
        total_after - total_before,
    )


def _combine(
    viewers: int,
    seconds: float,
    produced: ProducerResult,
    results: list[WatchResult],
    server_used: float,
    busy: float,
    total: float,
) -> FanoutRun:
    latency: Counter[int] = Counter()
    settled: Counter[int] = Counter()
    first: dict[bytes, tuple[float, list[float]]] = {}
    for result in results:
        latency.update(result.latency)
        settled.update(result.settled)
        for payload, (arrived, sends) in result.first.items():
            if payload not in first or arrived < first[payload][0]:
                first[payload] = (arrived, sends)
    first_latencies = [arrived - send for arrived, sends in first.values() for send in sends]
    per_event = [size / max(produced.sent, 1) for result in results for size in result.wire_bytes]
    lags = sorted(lag for result in results for lag in result.lag)
    cores = total / seconds / 100 if total else 2  # jiffies: 100 per core-second
    return FanoutRun(
        viewers=viewers,
        events_per_second=produced.sent / seconds,
        sent=produced.sent,
        accepted=produced.accepted,
        failed_posts=produced.failed_posts,
        p50_ms=_from_bins(latency, 0.50),
        p99_ms=_from_bins(latency, 0.99),
        settled_p99_ms=_from_bins(settled, 0.99),
        max_ms=max(latency) * BIN * 1000 if latency else float("nan"),
        first_p99_ms=sorted(first_latencies)[int(0.99 * len(first_latencies))] * 1000
        if first_latencies
        else float("nan"),
        bytes_per_event=statistics.median(per_event),
        bytes_per_event_max=max(per_event),
        server_cpu=server_used / seconds,
        viewers_cpu=sum(r.cpu_seconds for r in results) / seconds,
        producers_cpu=produced.cpu_seconds / seconds,
        machine_busy=busy / total * cores if total else float("nan"),
        viewer_lag_p99_ms=lags[int(0.99 * len(lags))] * 1000 if lags else float("nan"),
        viewer_lag_max_ms=lags[-1] * 1000 if lags else float("nan"),
        matched=sum(r.matched for r in results),
        mismatched=sum(r.mismatched for r in results),
        missing_sentinel=sum(r.missing_sentinel for r in results),
        distinct_logs=sum(r.distinct_logs for r in results),
        example=next((r.example for r in results if r.example), ""),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="viewer processes for the many")
    parser.add_argument(
        "--monitor",
        type=Path,
        default=None,
        help="run the server under the loop monitor, leaving its logs in this folder",
    )
    options = parser.parse_args()
    repeats = 1 if options.quick else options.repeats
    seconds = 4.0 if options.quick else options.seconds
    many = options.viewers
    configs = [
        (10, 1, 0, False),
        (many, options.processes, 0, False),
        (many, options.processes, -10, False),
        (many, options.processes, 0, True),
    ]
    runs: dict[tuple[int, int, bool], list[FanoutRun]] = {
        (v, nice, deflate): [] for v, _, nice, deflate in configs
    }
    if options.monitor:
        options.monitor.mkdir(parents=True, exist_ok=True)
    for repeat in range(repeats):
        for viewers, processes, nice, deflate in configs if repeat % 2 == 0 else configs[::-1]:
            print(
                f"fan-out: round {repeat + 1}, {viewers} viewers"
                + (f", server at nice {nice}" if nice else "")
                + (", offering permessage-deflate" if deflate else ""),
                file=sys.stderr,
                flush=True,
            )
            log = (
                options.monitor
                / f"fanout-{viewers}-nice{nice}{'-deflate' if deflate else ''}-{repeat + 1}.log"
                if options.monitor
                else None
            )
            run = run_fanout(viewers, processes, seconds, nice, log, deflate)
            runs[(viewers, nice, deflate)].append(run)
            print(
                f"  p50 {run.p50_ms:.1f} p99 {run.p99_ms:.1f} (settled {run.settled_p99_ms:.1f}) "
                f"max {run.max_ms:.0f} ms, "
                f"first-viewer p99 {run.first_p99_ms:.1f} ms; "
                f"{run.bytes_per_event:.0f} B/event; CPU server "
                f"{run.server_cpu:.0%} viewers {run.viewers_cpu:.0%} producers "
                f"{run.producers_cpu:.0%} machine {run.machine_busy:.2f} cores; viewer lag p99 "
                f"{run.viewer_lag_p99_ms:.1f} ms; boards {run.matched} right "
                f"{run.mismatched} wrong {run.missing_sentinel} unfinished; "
                f"{run.distinct_logs} distinct logs {run.example}",
                file=sys.stderr,
                flush=True,
            )
            if log is not None:
                holds = sorted(read_log(log), key=lambda h: h.cpu_ms, reverse=True)
                print(
                    f"  loop monitor: {len(holds)} callbacks over 2 ms; longest by CPU: "
                    + "; ".join(f"{h.cpu_ms:.1f}/{h.wall_ms:.1f} ms {h.what}" for h in holds[:3]),
                    file=sys.stderr,
                    flush=True,
                )
    report(
        runs[(many, 0, False)],
        runs[(10, 0, False)],
        runs[(many, -10, False)],
        runs[(many, 0, True)],
        seconds,
    )
    return 0


def report(
    many: list[FanoutRun],
    few: list[FanoutRun],
    first: list[FanoutRun],
    deflating: list[FanoutRun],
    seconds: float,
) -> None:
    def values(runs: list[FanoutRun], name: str) -> list[float]:
        return [float(getattr(run, name)) for run in runs]

    def ms(runs: list[FanoutRun], name: str) -> str:
        return median_spread(values(runs, name), "{:.1f} ms".format)

    def share(runs: list[FanoutRun], name: str) -> str:
        return median_spread([100 * v for v in values(runs, name)], "{:.0f}%".format)

    viewers = many[0].viewers
    p99 = statistics.median(values(many, "p99_ms"))
    per_event = statistics.median(values(many, "bytes_per_event"))
    checked = many + deflating
    boards = sum(run.matched + run.mismatched + run.missing_sentinel for run in checked)
    right = sum(run.matched for run in checked)
    sent = sum(run.sent for run in checked)
    accepted = sum(run.accepted for run in checked)
    p99_deflating = statistics.median(values(deflating, "p99_ms"))
    rows = [
        Row(
            f"latency p99, event sent → patch arrived, {viewers:,} viewers",
            ms(many, "p99_ms"),
            f"10 viewers {ms(few, 'p99_ms')}",
            f"{p99 / statistics.median(values(few, 'p99_ms')):.1f}",
            "≤ 100 ms",
            p99 <= 100,
        ),
        Row(
            f"... {viewers:,} viewers that offer permessage-deflate (as browsers do)",
            ms(deflating, "p99_ms"),
            f"CPU server {share(deflating, 'server_cpu')}, viewers "
            f"{share(deflating, 'viewers_cpu')}; machine "
            f"{median_spread(values(deflating, 'machine_busy'), '{:.2f}'.format)} cores",
            "",
            "≤ 100 ms",
            p99_deflating <= 100,
        ),
        Row(
            f"latency p99 of the events sent {SETTLED_AFTER:.0f} s or more after the start, once "
            "every bar has appeared whole (extra)",
            f"{ms(many, 'settled_p99_ms')}; offering deflate {ms(deflating, 'settled_p99_ms')}",
            f"10 viewers {ms(few, 'settled_p99_ms')}",
        ),
        Row(
            "latency p50 / max (extra)",
            f"{ms(many, 'p50_ms')} / {ms(many, 'max_ms')}",
            f"10 viewers {ms(few, 'p50_ms')} / {ms(few, 'max_ms')}",
        ),
        Row(
            f"latency p99 with the server at nice -10 (it gets the cores first), {viewers:,} "
            "viewers (extra)",
            ms(first, "p99_ms"),
            f"first viewer {ms(first, 'first_p99_ms')}; CPU server {share(first, 'server_cpu')}"
            f", viewers {share(first, 'viewers_cpu')}; viewer lag p99 "
            f"{ms(first, 'viewer_lag_p99_ms')}; boards right {sum(r.matched for r in first)}",
        ),
        Row(
            "latency p99 to the first viewer to get each frame (server side, extra)",
            ms(many, "first_p99_ms"),
            f"10 viewers {ms(few, 'first_p99_ms')}",
        ),
        Row(
            "viewers' own event-loop lag, p99 / max (extra)",
            f"{ms(many, 'viewer_lag_p99_ms')} / {ms(many, 'viewer_lag_max_ms')}",
            f"10 viewers {ms(few, 'viewer_lag_p99_ms')} / {ms(few, 'viewer_lag_max_ms')}",
        ),
        Row(
            "no update lost: boards equal to GET /tasks at the end (plain and deflated)",
            f"{right:,} of {boards:,}",
            f"10 viewers {sum(r.matched for r in few)} of "
            f"{sum(r.matched + r.mismatched + r.missing_sentinel for r in few)}",
            "",
            "all",
            right == boards and accepted == sent,
        ),
        Row(
            "events accepted (extra)",
            f"{accepted:,} of {sent:,}",
            f"{median_spread(values(many, 'events_per_second'), '{:,.0f}/s'.format)}",
        ),
        Row(
            "WebSocket bytes per event per viewer (median viewer)",
            median_spread(values(many, "bytes_per_event"), "{:.0f} B".format),
            f"10 viewers {median_spread(values(few, 'bytes_per_event'), '{:.0f} B'.format)}; "
            f"worst viewer {max(values(many, 'bytes_per_event_max')):.0f} B",
            "",
            "≤ 100 B",
            per_event <= 100,
        ),
        Row(
            "... to viewers that offer permessage-deflate",
            median_spread(values(deflating, "bytes_per_event"), "{:.0f} B".format),
            f"worst viewer {max(values(deflating, 'bytes_per_event_max')):.0f} B",
            "",
            "≤ 100 B",
            statistics.median(values(deflating, "bytes_per_event")) <= 100,
        ),
        Row(
            "CPU: server / viewers / producers (of one core, extra)",
            f"{share(many, 'server_cpu')} / {share(many, 'viewers_cpu')} / "
            f"{share(many, 'producers_cpu')}",
            f"10 viewers {share(few, 'server_cpu')} / {share(few, 'viewers_cpu')} / "
            f"{share(few, 'producers_cpu')}",
        ),
        Row(
            "machine busy, all processes (cores of 2, extra)",
            median_spread(values(many, "machine_busy"), "{:.2f}".format),
            f"10 viewers {median_spread(values(few, 'machine_busy'), '{:.2f}'.format)}",
        ),
    ]
    print_table(
        f"Target 5: {viewers:,} feed viewers, 4,000 events/s over 1,000 tasks "
        f"({seconds:g} s runs, {len(many)} rounds, each on a fresh server, alternating with 10 "
        "viewers and with the server given priority)",
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
