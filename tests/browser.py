"""Headless Chromium for dashboard tests and benchmarks, driven by Playwright.

Playwright's own browser download is not available here: tests use the system's Chromium
(Debian's ``chromium`` package, or ``PROGRESSISTA_CHROMIUM``). Without it the browser tests are
skipped, unless ``PROGRESSISTA_REQUIRE_BROWSER`` is set, as CI sets it: there a missing browser
is a failure, not a silent skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Flags for a headless Chromium in a sandboxless container with no network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-precise-memory-info",
]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def chromium_path() -> str:
    """The Chromium to drive, or a skip (a failure in CI) saying how to get one."""
    candidates = [
        os.environ.get("PROGRESSISTA_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    message = "the dashboard tests need Chromium: apt-get install chromium"
    if os.environ.get("PROGRESSISTA_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)
