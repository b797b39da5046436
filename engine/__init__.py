"""fxopt's public Python API.

``optimize`` runs a recipe end to end; ``Pass``/``PassConfig``/``PassResult`` and ``hookimpl``
are what a plugin author needs; ``ModelIR`` is the graph passes rewrite.

Names that need torch load on first use, so ``optimize`` can answer "up to date" (and
``--help``) without paying for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .analysis import ALL, Analysis
from .errors import FxoptError
from .hookspecs import hookimpl
from .pass_base import Pass, PassConfig, PassContext, PassResult

#: name -> the module that defines it; the run and its report live in their own packages
_LAZY = {
    "ModelIR": "fxopt.engine.ir",
    "optimize": "fxopt.run.driver",
    "Report": "fxopt.report",
    "RunOptions": "fxopt.run.options",
}

__all__ = [
    "ALL",
    "Analysis",
    "FxoptError",
    "ModelIR",
    "Pass",
    "PassConfig",
    "PassContext",
    "PassResult",
    "Report",
    "RunOptions",
    "hookimpl",
    "optimize",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
