"""How the client tells the user something: one ``ProgressistaWarning`` line, never an exception.

A monitoring problem (a refused token, an unreachable server, a bad setting) must be heard once
and must never stop the program it monitors, even where warnings are turned into errors.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["ProgressistaWarning", "warn"]

log = logging.getLogger("progressista.client")


class ProgressistaWarning(UserWarning):
    """Progress updates are not reaching the server, or a setting was unusable: said once."""


def warn(message: str) -> None:
    """Issue ``message`` as one line on stderr (through the warnings machinery, so it can be
    filtered), whatever thread this runs in; a filter that turns it into an error only logs it.
    """
    try:
        # An explicit location with no source line: the user sees one line, not the client's code.
        warnings.warn_explicit(message, ProgressistaWarning, "progressista", 0)
    except Exception:  # warnings turned into errors must not kill a sender or a bar
        log.warning(message)
