"""fxopt's public Python API.

``optimize`` runs a recipe end to end; ``Pass``/``PassConfig``/``PassResult`` and ``hookimpl``
are what a plugin author needs; ``ModelIR`` is the graph passes rewrite.
"""

from .analysis import ALL, Analysis
from .errors import FxoptError
from .hookspecs import hookimpl
from .ir import ModelIR
from .pass_base import Pass, PassConfig, PassContext, PassResult
from .pipeline import RunOptions, optimize
from .report import Report

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
