"""The server as shipped, but keeping no progress history: the reference for what histories cost.

``python -m tests.bench.without_history [server flags]`` runs ``python -m progressista.server``
with the samples spaced infinitely apart: each task keeps the one sample it starts with, so the
check that decides runs as often, and no sample, fit or ETA from the trend follows.
"""

from __future__ import annotations

import math
import sys

from progressista.server import task
from progressista.server.__main__ import main

if __name__ == "__main__":
    task.SAMPLE_SPACING = math.inf
    sys.exit(main(sys.argv[1:]))
