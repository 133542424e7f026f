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
from typing import Any, ClassVar

import tqdm as tqdm_package
import tqdm.asyncio
import tqdm.auto
import tqdm.autonotebook
import tqdm.std

from .client.bar import RemoteTqdm

__all__ = ["install", "installed", "patched", "uninstall"]

#: (module, attribute) → the original object, while the patch is installed.
_originals: dict[tuple[str, str], Any] = {}
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
    """First in a patched class's bases: fills in the patch's defaults for missing keywords."""

    _progressista_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for key, value in self._progressista_defaults.items():
            kwargs.setdefault(key, value)
        super().__init__(*args, **kwargs)


def _remote_class(original: type, defaults: dict[str, Any]) -> type:
    """A subclass of ``original`` that is also remote, with ``defaults`` for its keywords."""
    if issubclass(original, tqdm.asyncio.tqdm_asyncio):
        from .client.aio import AsyncRemoteTqdm

        remote: type = AsyncRemoteTqdm
    else:
        remote = RemoteTqdm
    bases = (remote,) if original in remote.__mro__ else (remote, original)
    return type(
        original.__name__,
        (_KeywordDefaults, *bases),
        {
            "_progressista_defaults": dict(defaults),
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
    if installed():
        uninstall()
    _defaults.clear()
    _defaults.update(defaults)
    replacements: dict[int, Any] = {}  # id(original) → its replacement, shared by every alias
    for module, name in _TARGETS:
        original = getattr(module, name)
        if id(original) not in replacements:
            if isinstance(original, type):
                replacements[id(original)] = _remote_class(original, defaults)
        _originals[(module.__name__, name)] = original
    for module, name in _TARGETS:
        original = _originals[(module.__name__, name)]
        if isinstance(original, type):
            setattr(module, name, replacements[id(original)])
    # trange functions build the patched class of their own module.
    for module, name in _TARGETS:
        original = _originals[(module.__name__, name)]
        if not isinstance(original, type):
            bar_class = module.tqdm
            replacement = _range_function(bar_class, name)
            replacements[id(original)] = replacement
            setattr(module, name, replacement)
    # Modules of tqdm's that already took a reference (tqdm.contrib.*): swap theirs too.
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("tqdm.") or module is None:
            continue
        for name, value in list(vars(module).items()):
            key = (module_name, name)
            if key not in _originals and id(value) in replacements and not name.startswith("__"):
                _originals[key] = value
                setattr(module, name, replacements[id(value)])


def uninstall() -> None:
    """Put back every tqdm class and function the patch replaced."""
    for (module_name, name), original in _originals.items():
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, name, original)
    _originals.clear()
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
