"""The built wheel works outside the checkout: templates and static files ship inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from . import child
from .conftest import WAIT
from .server_process import running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_serves_its_page_and_static_files(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # build, venv and pip start programs of their own: child.run ends those too on a failure.
    child.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("progressista-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "progressista/templates/index.html",
        "progressista/templates/card.html",
        "progressista/static/dashboard.js",
        "progressista/static/dashboard.css",
        "progressista/static/favicon.svg",
        "progressista/bootstrap/sitecustomize.py",
        "progressista/py.typed",
    } <= names

    venv = tmp_path / "venv"
    child.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # runs pip
    python = str(venv / "bin" / "python")
    child.run(
        [python, "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    where = subprocess.run(
        [
            python,
            "-c",
            "from progressista.server.asset import asset_dir; print(asset_dir('templates'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    ).stdout.strip()
    assert where.startswith(str(venv)), where

    with running_server(python=python, cwd=tmp_path) as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            assert "<h1>Progressista</h1>" in response.read().decode()
        with urllib.request.urlopen(server.url + "static/dashboard.css", timeout=10) as response:
            assert response.status == 200
            assert b"--bg" in response.read()
        # The console script, and `run` finding its bootstrap inside the installed package.
        script = tmp_path / "bars.py"
        script.write_text(
            "from tqdm import tqdm\nfor _ in tqdm(range(3), desc='wheel'):\n    pass\n"
        )
        result = child.run(
            [
                str(venv / "bin" / "progressista"),
                "run",
                "--url",
                server.url.rstrip("/"),
                "--job",
                "from-wheel",
                str(script),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            # The bar's arrival is checked: a busy machine must not cut the exit flush short.
            env={**os.environ, "PROGRESSISTA_FLUSH_TIMEOUT": str(WAIT)},
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        with urllib.request.urlopen(server.url + "tasks?job=from-wheel", timeout=10) as response:
            found = json.load(response)["tasks"]
        assert {task["desc"] for task in found.values()} >= {"wheel"}
