"""Where the dashboard's templates and static files are, from a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["asset_dir"]

_PACKAGE = Path(__file__).resolve().parent.parent


def asset_dir(name: Literal["templates", "static"]) -> Path:
    """The folder holding ``name``.

    A wheel installs them inside the package (``progressista/templates``); a checkout, editable
    install included, keeps them at the top level next to ``progressista/``.
    """
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"cannot find the {name}/ folder next to {_PACKAGE}; reinstall progressista "
        "(pip install --force-reinstall progressista) or run from a full checkout"
    )
