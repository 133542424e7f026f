"""progressista.patch: every tqdm entry point becomes remote, and comes back exactly."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import tqdm
import tqdm.asyncio
import tqdm.auto
import tqdm.autonotebook
import tqdm.contrib.concurrent
import tqdm.std

from progressista import patch
from progressista.client import AsyncRemoteTqdm, RemoteTqdm

NAMES = [
    (tqdm, "tqdm"),
    (tqdm, "trange"),
    (tqdm.std, "tqdm"),
    (tqdm.std, "trange"),
    (tqdm.auto, "tqdm"),
    (tqdm.auto, "trange"),
    (tqdm.autonotebook, "tqdm"),
    (tqdm.autonotebook, "trange"),
    (tqdm.asyncio, "tqdm"),
    (tqdm.asyncio, "tqdm_asyncio"),
    (tqdm.asyncio, "trange"),
    (tqdm.asyncio, "tarange"),
    (tqdm.contrib.concurrent, "tqdm_auto"),
]
NOWHERE = "http://127.0.0.1:9"


def labels(bar: object) -> dict[str, object]:
    assert isinstance(bar, RemoteTqdm)
    return bar.remote_meta


@pytest.fixture(autouse=True)
def unpatched() -> Iterator[None]:
    before = [getattr(module, name) for module, name in NAMES]
    yield
    patch.uninstall()
    assert [getattr(module, name) for module, name in NAMES] == before


def test_install_replaces_every_entry_point_and_uninstall_restores_them() -> None:
    originals = [getattr(module, name) for module, name in NAMES]
    patch.install(url=NOWHERE)
    assert patch.installed()
    assert all(getattr(m, n) is not o for (m, n), o in zip(NAMES, originals, strict=True))
    assert issubclass(tqdm.tqdm, RemoteTqdm) and issubclass(tqdm.tqdm, tqdm.std.tqdm)
    assert tqdm.tqdm is tqdm.std.tqdm and tqdm.auto.tqdm is tqdm.asyncio.tqdm
    # Threaded, not AsyncRemoteTqdm: patched code did not ask for a sender on its event loop.
    assert issubclass(tqdm.asyncio.tqdm, RemoteTqdm)
    assert issubclass(tqdm.asyncio.tqdm, originals[NAMES.index((tqdm.asyncio, "tqdm_asyncio"))])
    assert not issubclass(tqdm.asyncio.tqdm, AsyncRemoteTqdm)
    # tqdm.contrib.concurrent took its reference before the patch; it is swapped too.
    assert getattr(tqdm.contrib.concurrent, "tqdm_auto") is tqdm.auto.tqdm  # noqa: B009
    assert tqdm.tqdm.__name__ == "tqdm"
    patch.uninstall()
    assert not patch.installed()
    assert [getattr(module, name) for module, name in NAMES] == originals


def test_install_is_idempotent_and_only_updates_defaults() -> None:
    patch.install(url=NOWHERE, job="first")
    patch.install(url=NOWHERE, job="second")
    bar = tqdm.tqdm(total=1, file=io.StringIO())
    assert labels(bar)["job"] == "second"
    bar.close()
    patch.uninstall()
    patch.uninstall()
    assert not issubclass(tqdm.tqdm, RemoteTqdm)


def test_bars_made_by_every_entry_point_are_remote_with_the_defaults() -> None:
    patch.install(url=NOWHERE, job="nightly", meta={"team": "data"})
    sink = io.StringIO()
    bars = [
        tqdm.tqdm(total=1, file=sink),
        tqdm.trange(1, file=sink),
        tqdm.auto.trange(1, file=sink),
        tqdm.autonotebook.tqdm(total=1, file=sink),
        tqdm.asyncio.tarange(1, file=sink),
    ]
    for bar in bars:
        assert isinstance(bar, RemoteTqdm)
        assert (labels(bar)["job"], labels(bar)["team"]) == ("nightly", "data")
        bar.close()
    assert hasattr(bars[-1], "__anext__")  # still tqdm's asyncio bar


def test_a_keyword_given_by_the_caller_wins_over_the_default() -> None:
    patch.install(url=NOWHERE, job="default")
    bar = tqdm.tqdm(total=1, file=io.StringIO(), job="mine")
    assert labels(bar)["job"] == "mine"
    bar.close()


def test_code_that_subclasses_tqdm_after_the_patch_gets_remote_bars() -> None:
    patch.install(url=NOWHERE)

    class Mine(tqdm.tqdm):  # type: ignore[type-arg]  # tqdm is generic only in the stubs
        pass

    bar = Mine(total=1, file=io.StringIO())
    assert isinstance(bar, RemoteTqdm)
    bar.close()


def test_patched_restores_the_previous_state() -> None:
    with patch.patched(url=NOWHERE, job="outer"):
        with patch.patched(url=NOWHERE, job="inner"):
            bar = tqdm.tqdm(total=1, file=io.StringIO())
            assert labels(bar)["job"] == "inner"
            bar.close()
        bar = tqdm.tqdm(total=1, file=io.StringIO())
        assert labels(bar)["job"] == "outer"
        bar.close()
    assert not patch.installed()


def test_modules_imported_while_patched_are_restored_too() -> None:
    import importlib
    import sys

    sys.modules.pop("tqdm.contrib.logging", None)
    patch.install(url=NOWHERE)
    logging_module = importlib.import_module("tqdm.contrib.logging")
    assert issubclass(logging_module.std_tqdm, RemoteTqdm)
    patch.uninstall()
    assert logging_module.std_tqdm is tqdm.std.tqdm


def test_reinstalling_keeps_the_classes_so_isinstance_holds() -> None:
    patch.install(url=NOWHERE, job="a")
    patched_class = tqdm.tqdm
    bar = tqdm.tqdm(total=1, file=io.StringIO())
    with patch.patched(url=NOWHERE, job="b"):
        assert tqdm.tqdm is patched_class
        assert isinstance(bar, tqdm.tqdm)
    bar.close()


@pytest.mark.slow  # a fresh interpreter: only it can show what an import pulls in
def test_importing_the_patch_does_not_import_aiohttp() -> None:
    import subprocess
    import sys

    code = "import progressista.patch as p, sys; p.install(); print('aiohttp' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
