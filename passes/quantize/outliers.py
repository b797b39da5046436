"""Outlier-channel split: the few input channels with huge values bypass int8.

BERT-family activations carry a handful of channels whose magnitude is tens of times the
rest (the FFN intermediate's input channel, after the attention LayerNorm, in every layer of
MiniLM); a per-tensor int8 scale sized for them leaves the other channels a few levels.
Like LLM.int8(), a selected linear ``y = x W^T + b`` becomes::

    y = linear(x * mask, W, b)                       # int8: the outlier channels zeroed
      + matmul(index_select(x, -1, O), W[:, O]^T)    # float32, k = |O| columns (k <= 4)

The mask multiply fuses into the activation quantize kernel; the side product is a
``[tokens, k] x [k, out]`` matmul. Side-path nodes carry :data:`FLOAT_META` so the quantizer
leaves them in float.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .graph_edit import FLOAT_META, add_constant, attr_tensor, copy_meta

aten = torch.ops.aten


def pick_outliers(absmax: torch.Tensor, threshold: float, max_channels: int) -> list[int]:
    """Channels whose ``max |x|`` exceeds ``threshold`` x the median channel's, largest
    first, at most ``max_channels``; returned sorted."""
    median = absmax.median().clamp(min=1e-12)
    index = torch.nonzero(absmax > threshold * median).flatten()
    if index.numel() > max_channels:
        index = index[absmax[index].argsort(descending=True)[:max_channels]]
    return sorted(int(i) for i in index)


def split_outliers(gm: GraphModule, channels: dict[str, list[int]]) -> None:
    """Rewrite each ``aten.linear`` node named in ``channels`` as described above."""
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    for name, index in channels.items():
        if not index:
            continue
        node = nodes[name]
        x, weight_node = node.args[0], node.args[1]
        weight = attr_tensor(gm, weight_node).detach()
        mask = torch.ones(weight.shape[1], dtype=weight.dtype)
        mask[index] = 0.0
        picked = torch.tensor(index, dtype=torch.long)
        mask_name = add_constant(gm, f"_fxopt_outlier_mask_{name}", mask)
        index_name = add_constant(gm, f"_fxopt_outlier_index_{name}", picked)
        side_name = add_constant(gm, f"_fxopt_outlier_weight_{name}", weight[:, picked].t())
        with graph.inserting_before(node):
            masked = graph.call_function(aten.mul.Tensor, (x, graph.get_attr(mask_name)))
            chosen = graph.call_function(
                aten.index_select.default, (x, -1, graph.get_attr(index_name))
            )
            side = graph.call_function(aten.matmul.default, (chosen, graph.get_attr(side_name)))
        for new in (masked, chosen, side):
            copy_meta(new, node)
        chosen.meta[FLOAT_META] = side.meta[FLOAT_META] = True
        node.replace_input_with(x, masked)
        with graph.inserting_after(node):
            total = graph.call_function(aten.add.Tensor, (node, side))
        copy_meta(total, node)
        node.replace_all_uses_with(total, delete_user_cb=lambda user, keep=total: user is not keep)
    graph.lint()
    gm.recompile()


def outlier_candidates(nodes: list[Node]) -> list[Node]:
    """The linears the split can apply to (2-D weight read from a parameter)."""
    return [
        n
        for n in nodes
        if n.target == aten.linear.default
        and isinstance(n.args[1], Node)
        and n.args[1].op == "get_attr"
    ]
