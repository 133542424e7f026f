"""HTTP load from ``wrk``: POST bodies from a file or generated with new task ids, and what it saw.

``wrk`` costs far less CPU per request than any Python client, so the server keeps its core. It
is a closed loop (each connection sends its next request when the last is answered), so the
latencies it reports include queueing behind the other connections' requests, and are not
corrected for coordinated omission: a stall delays the requests that would have been sent
during it, rather than counting them all as late.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .usage import cpu_seconds

__all__ = ["CHURN_SCRIPT", "FILE_SCRIPT", "WrkRun", "require_wrk", "run_wrk"]

#: Cycles through the bodies in a file, one per line (``args[1]``).
FILE_SCRIPT = """
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/progress", {["Content-Type"] = "application/json"}, bodies[i])
end
"""

#: Builds each body: ``updates`` events over a working set of ``working`` task ids, then
#: ``new`` events for ids never sent before (``tag`` keeps them apart between runs). The
#: templates file holds two lines, each an event with ``%s`` for the id and ``%d`` for n.
CHURN_SCRIPT = """
local update_template, new_template
local updates, new, working, tag
local k = 0
init = function(args)
  local lines = {}
  for line in io.lines(args[1]) do lines[#lines + 1] = line end
  update_template, new_template = lines[1], lines[2]
  updates, new, working, tag = tonumber(args[2]), tonumber(args[3]), tonumber(args[4]), args[5]
end
request = function()
  k = k + 1
  local parts = {}
  for j = 0, updates - 1 do
    local index = (k * updates + j) % working
    parts[#parts + 1] = string.format(update_template, "ws/" .. index, k)
  end
  for j = 0, new - 1 do
    parts[#parts + 1] = string.format(new_template, tag .. "/" .. (k * new + j), k)
  end
  local body = "[" .. table.concat(parts, ",") .. "]"
  return wrk.format("POST", "/progress", {["Content-Type"] = "application/json"}, body)
end
"""


@dataclass
class WrkRun:
    """One wrk run against one server."""

    requests_per_second: float
    events_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    #: Responses other than 2xx, and socket errors: any of these invalidates the run.
    non_2xx: int
    errors: int
    #: Server CPU (user + system) per event while wrk ran.
    cpu_us_per_event: float


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("the benchmarks need wrk: apt-get install wrk")


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"wrk printed a latency I cannot read: {text!r}")
    return float(found.group(1)) * _UNIT_MS[found.group(2)]


def run_wrk(
    url: str,
    pid: int,
    script: Path,
    args: list[str],
    events_per_request: int,
    *,
    connections: int = 4,
    seconds: float = 5,
    warm_up: float = 0,
) -> WrkRun:
    """Run wrk (one thread) against ``url`` for ``seconds``; ``pid`` is the server's process.

    ``warm_up`` seconds of the same load go first, unmeasured: every task of the bodies exists
    by the time the measured run begins.
    """
    if warm_up > 0:
        run_wrk(
            url, pid, script, args, events_per_request, connections=connections, seconds=warm_up
        )
    before = cpu_seconds(pid)
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    used = cpu_seconds(pid) - before

    def grab(pattern: str) -> str:
        found = re.search(pattern, output)
        if found is None:
            raise ValueError(f"wrk's output lacks {pattern!r}:\n{output}")
        return found.group(1)

    requests = int(grab(r"(\d+) requests in"))
    rate = float(grab(r"Requests/sec:\s+([\d.]+)"))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkRun(
        requests_per_second=rate,
        events_per_second=rate * events_per_request,
        p50_ms=_ms(grab(r"\n\s+50%\s+(\S+)")),
        p99_ms=_ms(grab(r"\n\s+99%\s+(\S+)")),
        max_ms=_ms(grab(r"Latency\s+\S+\s+\S+\s+(\S+)")),
        requests=requests,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        cpu_us_per_event=used / max(requests * events_per_request, 1) * 1e6,
    )
