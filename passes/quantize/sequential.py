"""Run a graph over every calibration batch at once, node by node, and change weights on the way.

GPTQ quantizes each layer on the inputs it will see at inference: the outputs of the layers
before it, *already quantized* (the paper's sequential order). :func:`run_sequential` walks
the graph once in topological order holding one value per calibration batch for every live
node (freed after its last reader); when it reaches a node ``visit`` selects, it hands over
that node's input activations of every batch, and ``visit`` returns the weight the node is
to be computed with from then on (the dequantized one). One forward pass in all, instead of
one per layer; the memory is the live activations of the whole calibration set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from .graph_edit import attr_tensor

#: (node, its input activation of every batch) -> the weight to compute it with, or None
Visit = Callable[[Node, list[torch.Tensor]], torch.Tensor | None]


def run_sequential(
    gm: GraphModule,
    inputs: Sequence[tuple[torch.Tensor, ...]],
    selected: set[Node],
    visit: Visit,
    *,
    weight_index: int = 1,
) -> None:
    """Run ``gm`` on every element of ``inputs``; ``visit`` each ``selected`` node (in graph
    order) before computing it, with ``node.args[0]``'s value in every batch. A weight it
    returns replaces ``node.args[weight_index]`` for this run (the module is not changed)."""
    nodes = list(gm.graph.nodes)
    last_reader: dict[Node, Node] = {}
    for node in reversed(nodes):
        for read in node.all_input_nodes:
            last_reader.setdefault(read, node)
    count = len(inputs)
    env: dict[Node, list] = {}
    placeholders = iter(range(len(inputs[0]) if inputs else 0))
    with torch.no_grad():
        for node in nodes:
            if node.op == "output":
                break
            if node.op == "placeholder":
                position = next(placeholders)
                env[node] = [args[position] for args in inputs]
            elif node.op == "get_attr":
                env[node] = [attr_tensor(gm, node)] * count
            else:
                weight = visit(node, env[node.args[0]]) if node in selected else None
                env[node] = [_call(gm, node, env, i, weight, weight_index) for i in range(count)]
            for read in node.all_input_nodes:
                if last_reader.get(read) is node:
                    del env[read]


def _call(
    gm: GraphModule,
    node: Node,
    env: dict[Node, list],
    i: int,
    weight: torch.Tensor | None,
    weight_index: int,
):
    args = map_arg(node.args, lambda n: env[n][i])
    kwargs = map_arg(node.kwargs, lambda n: env[n][i])
    if weight is not None:
        args = (*args[:weight_index], weight, *args[weight_index + 1 :])
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    raise ValueError(f"cannot run node {node.name} ({node.op})")
