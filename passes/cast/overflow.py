"""Finding the ops whose half-precision output overflows (inf) or turns NaN.

fp16 tops out at 65504: a LayerNorm input, a large activation or an attention logit beyond it
becomes inf, and the NaNs that follow wreck every output. We run the cast graph on real
batches and record, for every node, whether its output is finite. The *origins* are the nodes
that produce a non-finite value from finite inputs; downstream nodes are only victims. A node
is blamed only if the float32 graph's same node stays finite (a mask filled with ``-inf`` is
meant to be).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

from .rewrite import CAST_KEY


class _FiniteWatch(fx.Interpreter):
    """Runs a graph and collects the names of nodes with a non-finite float output."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.nonfinite: set[str] = set()

    def run_node(self, node: fx.Node):
        out = super().run_node(node)
        values = out if isinstance(out, (tuple, list)) else (out,)
        for value in values:
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not torch.isfinite(value).all()
            ):
                self.nonfinite.add(node.name)
        return out


def nonfinite_nodes(
    module: fx.GraphModule, batches: Sequence[tuple[torch.Tensor, ...]]
) -> set[str]:
    """Names of the nodes whose output is non-finite on any batch."""
    watch = _FiniteWatch(module)
    with torch.no_grad():
        for args in batches:
            watch.run(*args)
    return watch.nonfinite


def overflow_origins(
    cast: fx.GraphModule, bad: set[str], *, expected: set[str], originals: set[str]
) -> list[str]:
    """Nodes of the original graph to move to float32 so the cast graph stays finite.

    ``bad`` are the cast graph's non-finite nodes (:func:`nonfinite_nodes`), ``expected``
    those non-finite in the float32 graph too, ``originals`` the original graph's node names.
    A cast or a parameter that overflows (a float32 value too large for fp16) blames its
    consumers; any other origin blames itself.
    """
    blamed: list[str] = []
    for node in cast.graph.nodes:
        if node.name not in bad or node.name in expected:
            continue
        if any(source.name in bad for source in node.all_input_nodes):
            continue  # a victim of an earlier overflow
        converted = CAST_KEY in node.meta or node.op == "get_attr"
        culprits = [u.name for u in node.users] if converted else [node.name]
        blamed += [name for name in culprits if name in originals and name not in blamed]
    return blamed
