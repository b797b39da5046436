"""Linears in disguise: ``addmm`` / ``mm`` with a ``[in, out]`` weight parameter, as ``linear``.

GPT-2 and its relatives build their projections from ``transformers``' ``Conv1D``: the weight
is stored transposed, ``[in, out]``, and the forward is ``addmm(bias, x.view(-1, in), W)``,
so ``torch.export`` records ``aten.addmm`` (``aten.mm`` without a bias), never
``aten.linear``. Such a node is rewritten to ``linear(x, W^T, bias)`` with the parameter
replaced by its transpose (the same numbers; a new tensor, never edited in place): from
then on it is a linear like any other, for the int8 quantizer (weights per output channel),
the outlier split, SmoothQuant and the backends' fused int8 matmuls.

Only the exact pattern is rewritten: a 2-D float weight read from a parameter by this node
alone (a weight another op reads keeps its layout), a 2-D input, a 1-D bias of out-features,
and ``beta = alpha = 1``.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.fx import GraphModule, Node

from .graph_edit import attr_tensor, module_name, replace_attr_tensor

aten = torch.ops.aten

#: op -> (index of the input, index of the weight, index of the bias or None)
MATMUL_LINEARS = {
    aten.addmm.default: (1, 2, 0),
    aten.mm.default: (0, 1, None),
}


def linear_weight(gm: GraphModule, node: Node, readers: Counter | None = None) -> bool:
    """``node`` is an ``addmm`` / ``mm`` that computes a linear with a parameter weight
    (``readers``: get_attr nodes per tensor id, see :func:`_readers`)."""
    if node.op != "call_function" or node.target not in MATMUL_LINEARS:
        return False
    if any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
        return False
    x_at, w_at, bias_at = MATMUL_LINEARS[node.target]
    if len(node.args) <= max(x_at, w_at, bias_at or 0):
        return False
    x, weight = node.args[x_at], node.args[w_at]
    if not (isinstance(weight, Node) and weight.op == "get_attr" and isinstance(x, Node)):
        return False
    tensor = attr_tensor(gm, weight)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        return False
    if not tensor.dtype.is_floating_point or len(weight.users) != 1:
        return False
    if (readers if readers is not None else _readers(gm))[id(tensor)] != 1:
        return False  # a tied weight
    if _rank(x) != 2:
        return False
    if bias_at is not None:
        bias = node.args[bias_at]
        value = _value(gm, bias)
        if value is None or tuple(value.shape) != (tensor.shape[1],):
            return False
    return True


def matmuls_as_linears(gm: GraphModule) -> list[str]:
    """Rewrite every :func:`linear_weight` node to ``aten.linear``; returns their module
    names (or node names), in graph order."""
    done = []
    graph = gm.graph
    readers = _readers(gm)
    for node in list(graph.nodes):
        if not linear_weight(gm, node, readers):
            continue
        x_at, w_at, bias_at = MATMUL_LINEARS[node.target]
        x, weight = node.args[x_at], node.args[w_at]
        bias = node.args[bias_at] if bias_at is not None else None
        replace_attr_tensor(gm, weight, attr_tensor(gm, weight).detach().t().contiguous())
        args = (x, weight, bias) if bias is not None else (x, weight)
        with graph.inserting_before(node):
            linear = graph.call_function(aten.linear.default, args)
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        done.append(module_name(linear) or linear.name)
    if done:
        graph.lint()
        gm.recompile()
    return done


def _readers(gm: GraphModule) -> Counter:
    """How many ``get_attr`` nodes read each tensor (by id): more than one is a tied weight."""
    return Counter(id(attr_tensor(gm, n)) for n in gm.graph.nodes if n.op == "get_attr")


def _rank(value: Node) -> int | None:
    val = value.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _value(gm: GraphModule, value) -> torch.Tensor | None:
    if not isinstance(value, Node):
        return None
    if value.op == "get_attr":
        tensor = attr_tensor(gm, value)
        return tensor if isinstance(tensor, torch.Tensor) else None
    val = value.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None
