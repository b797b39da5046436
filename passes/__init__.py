"""Built-in passes, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from fxopt.engine import hookimpl

from .constant_fold import ConstantFold
from .dce import DeadCodeElimination
from .dropout import RemoveDropout

BUILTIN_PASSES = (DeadCodeElimination, ConstantFold, RemoveDropout)


@hookimpl
def fxopt_register_passes(registry) -> None:
    for pass_class in BUILTIN_PASSES:
        registry.register(pass_class.name, pass_class)
