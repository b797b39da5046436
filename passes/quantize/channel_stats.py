"""Per-channel ``max |x|`` of op inputs over calibration data (SmoothQuant, outlier split).

Recorder modules are spliced into the graph in front of the chosen ops, the graph runs at
full speed on the batches, and the recorders are removed again: much faster than an
``fx.Interpreter`` walk, which pays Python per node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.fx import GraphModule, Node


class _AbsMaxRecorder(torch.nn.Module):
    """Keeps the running per-channel (last axis) maximum of ``|x|``."""

    def __init__(self) -> None:
        super().__init__()
        self.absmax: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
        self.absmax = current if self.absmax is None else torch.maximum(self.absmax, current)
        return x


def channel_absmax(
    gm: GraphModule,
    nodes: Sequence[Node],
    inputs: Sequence[tuple[torch.Tensor, ...]],
    advance: Callable[[int], None] = lambda n: None,
) -> dict[str, torch.Tensor]:
    """``{node name: max |input channel|}`` for the first argument of each of ``nodes``."""
    recorders: dict[str, tuple[str, Node]] = {}
    for index, node in enumerate(nodes):
        target = f"_fxopt_absmax_{index}"
        gm.add_submodule(target, _AbsMaxRecorder())
        with gm.graph.inserting_before(node):
            recorder = gm.graph.call_module(target, (node.args[0],))
        recorders[node.name] = (target, recorder)
    gm.recompile()
    try:
        with torch.no_grad():
            for args in inputs:
                gm(*args)
                advance(1)
        return {
            name: gm.get_submodule(target).absmax
            for name, (target, _) in recorders.items()
            if gm.get_submodule(target).absmax is not None
        }
    finally:
        for target, recorder in recorders.values():
            gm.graph.erase_node(recorder)
            gm.delete_submodule(target)
        gm.recompile()
