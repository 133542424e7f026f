"""How the client tells the user something: one ``ProgressistaWarning`` line, never an exception.

A monitoring problem (a refused token, an unreachable server, a bad setting) must be heard once
and must never stop the program it monitors, even where warnings are turned into errors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

__all__ = ["ProgressistaWarning", "warn"]

log = logging.getLogger("progressista.client")


class ProgressistaWarning(UserWarning):
    """Progress updates are not reaching the server, or a setting was unusable: said once."""


def warn(message: str) -> None:
    """Issue ``message`` as one line on stderr (through the warnings machinery, so it can be
    filtered), whatever thread this runs in; a filter that turns it into an error only logs it.
    """
    try:
        with _bars_cleared():
            # An explicit location with no source line: one line, not the client's code.
            warnings.warn_explicit(message, ProgressistaWarning, "progressista", 0)
    except Exception:  # warnings turned into errors must not kill a sender or a bar
        log.warning(message)


@contextlib.contextmanager
def _bars_cleared() -> Iterator[None]:
    """The terminal's bars cleared while the warning is written, then drawn again, as
    ``tqdm.write`` does: else it is glued to the end of a bar's line. Without tqdm's lock:
    the sender thread must never wait on what the caller's thread holds (a garbled line at
    worst, and anything that goes wrong here only costs the clearing)."""
    try:
        from tqdm import tqdm

        clearing = tqdm.external_write_mode(file=sys.stderr, nolock=True)
        clearing.__enter__()
    except Exception:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            clearing.__exit__(None, None, None)
