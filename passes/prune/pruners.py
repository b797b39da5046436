"""Layer pruners: the per-op dispatch table the dependency analysis consults.

A layer pruner knows one operator: given a node that calls it, it records on a
:class:`~.dims.DimRecorder` how the node's axes are coupled (``relate``). Parameter slicing
and shape-constant updates then follow generically from those relations, so a pruner for a
new op is usually a few lines. Pruners are registered under the op's name as the graph
prints it (``"aten.linear.default"``) or under its overload packet (``"aten.add"``, covering
``aten.add.Tensor`` and ``aten.add.Scalar``); the exact name wins.

Built-in pruners and a third party's come in through the same hook::

    from fxopt.engine import hookimpl
    from fxopt.passes.prune import LayerPruner

    class FusedGeluLinear(LayerPruner):
        def relate(self, node, dims):
            x, weight = node.args[:2]
            dims.same(dims.axis(x, -1), dims.axis(weight, 1))
            dims.same(dims.axis(node, -1), dims.axis(weight, 0))
            for a, b in zip(dims.axes(x)[:-1], dims.axes(node)[:-1]):
                dims.same(a, b)

    @hookimpl
    def fxopt_register_layer_pruners(registry):
        registry.register("mylib.gelu_linear.default", FusedGeluLinear())

An op with no pruner is not guessed at: every concrete axis it touches is marked unsafe, and
the groups through it are left alone and listed in the pass's report.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from torch import fx

from .dims import DimRecorder


class LayerPruner:
    """How one operator couples the axes of its inputs, parameters and outputs."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        raise NotImplementedError


def op_name(target: Any) -> str:
    """The name a pruner is registered under: ``aten.linear.default``, ``operator.getitem``."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    if module in ("_operator", "operator"):
        return f"operator.{target.__name__}"
    return str(target)


class PrunerTable:
    """Name → :class:`LayerPruner`, looked up by exact op name, then by overload packet."""

    def __init__(self, pruners: Mapping[str, LayerPruner]) -> None:
        self.pruners = dict(pruners)

    @classmethod
    def from_registry(cls, registry: Any) -> PrunerTable:
        """From a plugin host's ``layer_pruners`` registry."""
        return cls({entry.name: entry.obj for entry in registry})

    def lookup(self, target: Any) -> LayerPruner | None:
        name = op_name(target)
        if name in self.pruners:
            return self.pruners[name]
        packet = name.rpartition(".")[0]
        return self.pruners.get(packet) if packet.count(".") >= 1 else None

    def __contains__(self, name: str) -> bool:
        return name in self.pruners


@functools.cache
def installed_pruners() -> PrunerTable:
    """Every layer pruner the installed plugins register (the built-ins included)."""
    from fxopt.engine.plugin_host import load_plugins

    return PrunerTable.from_registry(load_plugins().layer_pruners)
