"""Outlier channels: the few input channels with huge values, taken out of int8's way.

BERT-family activations carry a handful of channels whose magnitude is tens of times the
rest (the FFN intermediate's input channel, after the attention LayerNorm, in every layer of
MiniLM); a per-tensor int8 scale sized for them leaves the other channels a few levels. Two
rewrites of a selected linear ``y = x W^T + b``, both exact in float:

``float`` (like LLM.int8()): the outlier channels ``O`` bypass int8::

    y = linear(x * mask, W * mask, b)                # int8: the outlier channels zeroed
      + matmul(index_select(x, -1, O), W[:, O]^T)    # float32, k = |O| columns

The mask on ``x`` is there for calibration only: it keeps the outliers out of the activation
observer's range. Once the graph is converted, :func:`drop_outlier_masks` removes it; the
quantize step then clamps the outlier channels, and the weight's zero columns make what they
hold irrelevant. That saves an element-wise pass over ``x`` per linear at inference (ONNX
Runtime does not fuse it into its quantize). A tied weight cannot be zeroed, so its mask stays.

``duplicate`` (outlier channel splitting, Zhao et al. 2019): channel ``j`` becomes ``m_j``
copies of ``x_j / m_j`` and ``W``'s column ``j`` is repeated ``m_j`` times; ``m_j`` brings
the copies down to ``threshold`` x the median channel. Everything stays one int8 GEMM with a
few more input channels; the gather and scale fuse into the activation quantize step.

Side-path nodes of ``float`` carry :data:`FLOAT_META` so the quantizer leaves them in float.
"""

from __future__ import annotations

import math

import torch
from torch.fx import GraphModule, Node

from .graph_edit import (
    FLOAT_META,
    add_constant,
    attr_tensor,
    copy_meta,
    drop_unused_tensors,
    replace_attr_tensor,
)

aten = torch.ops.aten

#: node.meta key marking a mask multiply whose weight columns are zero (removable after convert)
MASK_META = "fxopt.quantize.outlier_mask"


def pick_outliers(absmax: torch.Tensor, threshold: float, max_channels: int) -> list[int]:
    """Channels whose ``max |x|`` exceeds ``threshold`` x the median channel's, largest
    first, at most ``max_channels``; returned sorted."""
    median = absmax.median().clamp(min=1e-12)
    index = torch.nonzero(absmax > threshold * median).flatten()
    if index.numel() > max_channels:
        index = index[absmax[index].argsort(descending=True)[:max_channels]]
    return sorted(int(i) for i in index)


def copies_needed(absmax: torch.Tensor, channels: list[int], threshold: float) -> list[int]:
    """How many copies bring each channel's ``max |x|`` down to ``threshold`` x the median."""
    target = threshold * float(absmax.median().clamp(min=1e-12))
    return [max(2, math.ceil(float(absmax[c]) / target)) for c in channels]


def _selected(gm: GraphModule, channels: dict[str, list[int]]) -> list[tuple[str, Node, list[int]]]:
    """``(node name, node, channels)`` of each linear with channels to rewrite."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return [(name, nodes[name], picked) for name, picked in channels.items() if picked]


def duplicate_outliers(
    gm: GraphModule, channels: dict[str, list[int]], copies: dict[str, list[int]]
) -> None:
    """The ``duplicate`` rewrite of each ``aten.linear`` node named in ``channels``."""
    graph = gm.graph
    for name, node, picked in _selected(gm, channels):
        x, weight_node = node.args[0], node.args[1]
        if len(weight_node.users) != 1:  # a tied weight: widening it would break the others
            continue
        weight = attr_tensor(gm, weight_node).detach()
        index = list(range(weight.shape[1]))
        scale = [1.0] * weight.shape[1]
        for channel, count in zip(picked, copies[name], strict=True):
            scale[channel] = 1.0 / count
            index += [channel] * (count - 1)
            scale += [1.0 / count] * (count - 1)
        gather = torch.tensor(index, dtype=torch.long)
        replace_attr_tensor(gm, weight_node, weight[:, gather])
        index_name = add_constant(gm, f"_fxopt_outlier_gather_{name}", gather)
        scale_name = add_constant(gm, f"_fxopt_outlier_scale_{name}", torch.tensor(scale))
        with graph.inserting_before(node):
            spread = graph.call_function(
                aten.index_select.default, (x, -1, graph.get_attr(index_name))
            )
            scaled = graph.call_function(aten.mul.Tensor, (spread, graph.get_attr(scale_name)))
        copy_meta(spread, node)
        copy_meta(scaled, node)
        node.replace_input_with(x, scaled)
    graph.lint()
    gm.recompile()


def split_outliers(gm: GraphModule, channels: dict[str, list[int]]) -> None:
    """The ``float`` rewrite of each ``aten.linear`` node named in ``channels``."""
    graph = gm.graph
    for name, node, index in _selected(gm, channels):
        x, weight_node = node.args[0], node.args[1]
        weight = attr_tensor(gm, weight_node).detach()
        mask = torch.ones(weight.shape[1], dtype=weight.dtype)
        mask[index] = 0.0
        picked = torch.tensor(index, dtype=torch.long)
        zeroed = len(weight_node.users) == 1  # a tied weight is left as it is
        if zeroed:
            replace_attr_tensor(gm, weight_node, weight * mask)
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
        masked.meta[MASK_META] = zeroed
        node.replace_input_with(x, masked)
        with graph.inserting_after(node):
            total = graph.call_function(aten.add.Tensor, (node, side))
        copy_meta(total, node)
        node.replace_all_uses_with(total, delete_user_cb=lambda user, keep=total: user is not keep)
    graph.lint()
    gm.recompile()


def drop_outlier_masks(gm: GraphModule) -> int:
    """Remove the calibration-only mask multiplies of :func:`split_outliers` whose weight
    columns are zero (run on the converted graph); returns how many were removed."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.meta.get(MASK_META):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    if dropped:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        drop_unused_tensors(gm)  # the masks themselves
    return dropped


def outlier_candidates(nodes: list[Node]) -> list[Node]:
    """The linears the split can apply to (2-D weight read from a parameter)."""
    return [
        n
        for n in nodes
        if n.target == aten.linear.default
        and isinstance(n.args[1], Node)
        and n.args[1].op == "get_attr"
    ]
