"""The hooks ``prune.structured`` owns: how a plugin teaches it the axes of an op it does not know.

Added to the plugin host by :func:`fxopt.passes.prune.builtin.fxopt_add_hookspecs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxopt.engine.hookspecs import hookspec

if TYPE_CHECKING:
    from fxopt.engine.registry import Registrar

    from .pruners import LayerPruner


@hookspec
def fxopt_register_layer_pruners(registry: Registrar[LayerPruner]) -> None:
    """Register per-op layer pruners for ``prune.structured``, keyed by the op's name as the
    graph prints it (``aten.linear.default``) or its overload packet (``aten.add``).

    A :class:`~fxopt.passes.prune.LayerPruner` says how the op's axes are coupled; ops with
    none are left unpruned and listed in the report. Example::

        @hookimpl
        def fxopt_register_layer_pruners(registry):
            registry.register("mylib.gelu_linear.default", GeluLinearPruner())
    """
