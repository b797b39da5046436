"""The ``optimize`` command line: a click application over :mod:`fxopt.engine`.

``cli``, ``main`` and ``console`` (the program) load on first use, so that
``python -m fxopt.cli.app`` runs that module once: runpy would otherwise find it already
imported by this package and run a second copy, with a warning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cli", "console", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".app", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
