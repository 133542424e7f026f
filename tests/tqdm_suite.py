"""``make tqdm-suite``: tqdm's own tests, with RemoteTqdm and AsyncRemoteTqdm in tqdm's place.

The proof that the client is a drop-in: ``tests_tqdm.py`` and ``tests_asyncio.py`` from the
source distribution of the installed tqdm (downloaded, not committed) run twice, once with a live
Progressista server and once with none listening, under tqdm's own pytest options (warnings are
errors, 30 s timeout). Only the imports are rewritten.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from .server_process import running_server

SUITES = ("tests_tqdm.py", "tests_asyncio.py")

#: (file, what tqdm's tests import, what they import instead)
REWRITES = [
    (
        "conftest.py",
        "from tqdm import tqdm\n",
        "from progressista.client import RemoteTqdm as tqdm\n",
    ),
    (
        "tests_tqdm.py",
        "from tqdm import TqdmDeprecationWarning, TqdmWarning, tqdm, trange\n",
        "from tqdm import TqdmDeprecationWarning, TqdmWarning\n"
        "from progressista.client import RemoteTqdm as tqdm, trange\n",
    ),
    (
        "tests_asyncio.py",
        "from tqdm.asyncio import tarange, tqdm_asyncio\n",
        "from progressista.client import AsyncRemoteTqdm as tqdm_asyncio\n"
        "def tarange(*args, **kwargs):\n"
        "    return tqdm_asyncio(range(*args), **kwargs)\n",
    ),
]

#: On top of tqdm's own pytest configuration (its pyproject.toml: warnings are errors, a 30 s
#: timeout, strict asyncio mode), which runs as shipped.
PYTEST_OPTIONS = ["-q", "-p", "no:cacheprovider", "-k", "not perf"]


def fetch_tests(work: Path) -> Path:
    """tqdm's tests folder for the installed version, with the imports swapped."""
    release = version("tqdm")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(work),
            f"tqdm=={release}",
        ],
        check=True,
    )
    (archive,) = work.glob("tqdm-*.tar.gz")
    with tarfile.open(archive) as tar:
        members = [
            m
            for m in tar.getmembers()
            if re.search(r"/tests/[^/]+\.py$", m.name) or m.name.endswith("/pyproject.toml")
        ]
        tar.extractall(work, members=members, filter="data")
    tests = work / f"tqdm-{release}" / "tests"
    for name, old, new in REWRITES:
        path = tests / name
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"{name} of tqdm {release} no longer imports {old.strip()!r}")
        path.write_text(text.replace(old, new))
    return tests


def run(tests: Path, url: str, label: str) -> int:
    print(f"\n== tqdm {version('tqdm')} test suite, RemoteTqdm substituted, {label} ==", flush=True)
    env = {**os.environ, "PROGRESSISTA_URL": url, "PROGRESSISTA_FLUSH_TIMEOUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", *PYTEST_OPTIONS, *(f"tests/{s}" for s in SUITES)],
        cwd=tests.parent,
        env=env,
    ).returncode


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tqdm-suite-") as scratch:
        tests = fetch_tests(Path(scratch))
        with running_server(["--log-level", "warning"]) as server:
            up = run(tests, server.url.rstrip("/"), "server up")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            nobody = f"http://127.0.0.1:{probe.getsockname()[1]}"
        down = run(tests, nobody, "server unreachable")
    print(
        f"\nserver up: {'passed' if up == 0 else 'FAILED'}; "
        f"server unreachable: {'passed' if down == 0 else 'FAILED'}"
    )
    return 1 if up or down else 0


if __name__ == "__main__":
    sys.exit(main())
