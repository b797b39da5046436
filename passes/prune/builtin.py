"""The built-in layer pruners, registered through the hook a third-party plugin uses."""

from __future__ import annotations

from fxopt.engine import hookimpl

from .rules_layers import LAYER_PRUNERS
from .rules_pointwise import POINTWISE_PRUNERS
from .rules_shape import SHAPE_PRUNERS

BUILTIN_PRUNERS = {**POINTWISE_PRUNERS, **SHAPE_PRUNERS, **LAYER_PRUNERS}


@hookimpl
def fxopt_register_layer_pruners(registry) -> None:
    for name, pruner in BUILTIN_PRUNERS.items():
        registry.register(name, pruner)


@hookimpl
def fxopt_add_hookspecs(host) -> None:
    """This package owns its extension point: its hooks, and the ``layer_pruners`` registry."""
    from . import hookspecs

    host.add_hookspecs(hookspecs)
    host.add_registry("layer_pruners", "layer pruner", "fxopt_register_layer_pruners")
