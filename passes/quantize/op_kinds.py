"""Which graph ops ``quantize.int8`` can quantize, and why one of them cannot be.

Kept free of torchao so that loading the plugin, checking a recipe's patterns and reading
the calibration cache stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from .graph_edit import attr_tensor

aten = torch.ops.aten

#: op kind -> (targets, index of the argument that is a weight when it is a parameter)
OP_KINDS: dict[str, tuple[tuple[Any, ...], int]] = {
    "linear": ((aten.linear.default,), 1),
    "conv2d": ((aten.conv2d.default,), 1),
    "matmul": ((aten.matmul.default, aten.mm.default, aten.bmm.default), 1),
}

#: (consumer node name, argument index) -> (scale, zero point)
Scales = dict[tuple[str, int], tuple[float, int]]


@dataclass
class Unsupported:
    """An op of a selected kind left in float, and why."""

    node: str
    module: str
    op: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"node": self.node, "module": self.module, "op": self.op, "reason": self.reason}


def candidates(nodes: Iterable[Node], ops: Iterable[str]) -> list[Node]:
    """The call nodes of the given op kinds, in graph order."""
    targets = {t for kind in ops for t in OP_KINDS[kind][0]}
    return [n for n in nodes if n.op == "call_function" and n.target in targets]


def kind_of(node: Node) -> str | None:
    return next((k for k, (targets, _) in OP_KINDS.items() if node.target in targets), None)


def is_weight(node: Node, index: int) -> bool:
    """The argument is a constant weight (a parameter or buffer), not an activation."""
    arg = node.args[index]
    return index == OP_KINDS[kind_of(node)][1] and isinstance(arg, Node) and arg.op == "get_attr"


def weight_axis(node: Node, model: GraphModule) -> int:
    """The output-channel axis of the weight: 0 for linear/conv ``[out, in...]``, the last
    for a matmul's right operand ``[in, out]``."""
    if kind_of(node) == "matmul":
        return attr_tensor(model, node.args[1]).dim() - 1
    return 0


def unsupported_reason(node: Node, model: GraphModule) -> str | None:
    """Why ``node`` cannot take int8 Q/DQ in our form (``None`` when it can)."""
    kind = kind_of(node)
    args = node.args[:2]
    if len(args) < 2 or not all(isinstance(a, Node) for a in args):
        return "an input is not a tensor in the graph"
    for arg in args:
        val = attr_tensor(model, arg) if arg.op == "get_attr" else arg.meta.get("val")
        dtype = getattr(val, "dtype", torch.float32)
        if dtype != torch.float32:
            return f"input {arg.name} is {dtype}; int8 needs float32 inputs"
    if kind in ("linear", "conv2d") and args[1].op != "get_attr":
        return "its weight is computed in the graph, not a parameter (fold constants first)"
    if kind == "matmul" and args[1].op == "get_attr" and attr_tensor(model, args[1]).dim() != 2:
        return "a constant right operand must be 2-D for per-channel weights"
    return None
