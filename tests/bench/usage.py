"""What a process uses, read from /proc: CPU seconds and resident memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["cpu_seconds", "rss_mib"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    """Resident set size now, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    if found is None:
        raise ProcessLookupError(f"process {pid} has no RSS (gone?)")
    return int(found.group(1)) / 1024
