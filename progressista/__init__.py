"""Progressista: remote tqdm progress bars on one live web page.

Importing this package imports nothing else, so the client stays as light as tqdm itself; the
server lives in :mod:`progressista.server`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
