"""Make every tqdm bar remote without editing the code that creates it.

:func:`install` replaces tqdm's classes and ``trange`` functions where code finds them
(``tqdm.tqdm``, ``tqdm.std``, ``tqdm.auto``, ``tqdm.autonotebook``, ``tqdm.asyncio``, and any
already-imported ``tqdm.*`` module that holds one, such as ``tqdm.contrib.concurrent``) with
remote subclasses of the very same classes, so notebook and asyncio bars keep their front end.
:func:`uninstall` puts every original back. Code that ran ``from tqdm import tqdm`` before the
patch keeps its own reference: ``progressista run`` installs the patch before any user code runs.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import tqdm as tqdm_package
import tqdm.asyncio
import tqdm.auto
import tqdm.autonotebook
import tqdm.std

from .client.bar import RemoteTqdm

__all__ = ["install", "installed", "patched", "uninstall"]

#: (module, attribute) → the original object, while the patch is installed.
_originals: dict[tuple[str, str], Any] = {}
#: id(original) → (replacement, original), for every object the patch swapped.
_replacements: dict[int, tuple[Any, Any]] = {}
_defaults: dict[str, Any] = {}

_TARGETS = [
    (tqdm.std, "tqdm"),
    (tqdm.std, "trange"),
    (tqdm_package, "tqdm"),
    (tqdm_package, "trange"),
    (tqdm.asyncio, "tqdm"),
    (tqdm.asyncio, "tqdm_asyncio"),
    (tqdm.asyncio, "trange"),
    (tqdm.asyncio, "tarange"),
    (tqdm.autonotebook, "tqdm"),
    (tqdm.autonotebook, "trange"),
    (tqdm.auto, "tqdm"),
    (tqdm.auto, "trange"),
]


class _KeywordDefaults:
    """First in a patched class's bases: fills in the patch's current defaults.

    They are read when a bar is built, so installing again with other defaults changes no
    class: ``isinstance`` checks against a patched class keep holding.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for key, value in _defaults.items():
            kwargs.setdefault(key, value)
        super().__init__(*args, **kwargs)


def _remote_class(original: type) -> type:
    """A subclass of ``original`` that also streams, with the patch's defaults.

    Always the threaded RemoteTqdm, asyncio bars included: code that did not ask for
    AsyncRemoteTqdm may drive a bar synchronously on a busy event loop (a notebook cell does),
    where a sender on that loop could not run; and no process under ``progressista run`` should
    pay for importing aiohttp at start-up.
    """
    bases = (RemoteTqdm,) if original is tqdm.std.tqdm else (RemoteTqdm, original)
    return type(
        original.__name__,
        (_KeywordDefaults, *bases),
        {
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "__doc__": original.__doc__,
        },
    )


def _range_function(bar_class: type, name: str) -> Callable[..., Any]:
    def trange(*args: Any, **kwargs: Any) -> Any:
        return bar_class(range(*args), **kwargs)

    trange.__name__ = trange.__qualname__ = name
    trange.__doc__ = f"``{bar_class.__module__}.{bar_class.__name__}(range(*args), **kwargs)``"
    return trange


def installed() -> bool:
    """Whether tqdm is patched right now."""
    return bool(_originals)


def install(**defaults: Any) -> None:
    """Patch tqdm so that every bar created from now on is remote.

    ``defaults`` are RemoteTqdm keywords (``url``, ``token``, ``job``, ``meta``,
    ``push_every``…) for bars that do not give them. Idempotent: installing again only changes
    the defaults; :func:`uninstall` restores the originals either way.
    """
    _defaults.clear()
    _defaults.update(defaults)
    if installed():
        return
    for module, name in _TARGETS:
        original = getattr(module, name)
        _originals[(module.__name__, name)] = original
        if isinstance(original, type) and id(original) not in _replacements:
            _replacements[id(original)] = (_remote_class(original), original)
    for module, name in _TARGETS:
        original = _originals[(module.__name__, name)]
        if isinstance(original, type):
            setattr(module, name, _replacements[id(original)][0])
    # trange functions build the patched class of their own module.
    for module, name in _TARGETS:
        original = _originals[(module.__name__, name)]
        if not isinstance(original, type):
            replacement = _range_function(getattr(module, "tqdm"), name)  # noqa: B009
            _replacements[id(original)] = (replacement, original)
            setattr(module, name, replacement)
    _sweep_tqdm_modules(lambda value: _replacements.get(id(value), (None,))[0])


def _sweep_tqdm_modules(swap: Callable[[Any], Any]) -> None:
    """Apply ``swap`` to every attribute of tqdm's loaded modules (tqdm.contrib.* included).

    They hold references taken at their import: before the patch (install replaces them) or
    during it (uninstall restores them).
    """
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "tqdm" or module_name.startswith("tqdm.")):
            continue
        for name, value in list(vars(module).items()):
            if name.startswith("__"):
                continue
            replacement = swap(value)
            if replacement is not None and replacement is not value:
                setattr(module, name, replacement)


def uninstall() -> None:
    """Put back every tqdm class and function the patch replaced, wherever tqdm holds one."""
    if not installed():
        return
    for (module_name, name), original in _originals.items():
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, name, original)
    originals = {id(replacement): original for replacement, original in _replacements.values()}
    _sweep_tqdm_modules(lambda value: originals.get(id(value)))
    _originals.clear()
    _replacements.clear()
    _defaults.clear()


@contextlib.contextmanager
def patched(**defaults: Any) -> Iterator[None]:
    """``with patched(job="etl"):`` bars created inside are remote; before and after, as before."""
    previous = dict(_defaults) if installed() else None
    install(**defaults)
    try:
        yield
    finally:
        if previous is None:
            uninstall()
        else:
            install(**previous)
