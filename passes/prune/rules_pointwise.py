"""Layer pruners for elementwise ops, reductions and softmax.

Elementwise ops (with numpy broadcasting) tie the aligned axes of their inputs and output:
this is how a residual ``add`` couples every layer that writes to the residual stream.
Reducing or normalizing over a channel axis (a mean over features, a softmax over them)
changes meaning when channels go, so such axes are marked unsafe, except in the norms that
:mod:`.rules_layers` knows.
"""

from __future__ import annotations

from torch import fx

from .dims import DimRecorder, arg
from .pruners import LayerPruner

#: overload packets of ops that act elementwise, with broadcasting, on all tensor arguments
ELEMENTWISE = (
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "true_divide",
    "floor_divide",
    "remainder",
    "fmod",
    "pow",
    "neg",
    "abs",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "square",
    "sin",
    "cos",
    "tan",
    "tanh",
    "sigmoid",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "mish",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "softplus",
    "erf",
    "erfc",
    "clamp",
    "clamp_min",
    "clamp_max",
    "clip",
    "sign",
    "round",
    "floor",
    "ceil",
    "trunc",
    "where",
    "masked_fill",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_and",
    "logical_or",
    "logical_not",
    "logical_xor",
    "bitwise_and",
    "bitwise_or",
    "bitwise_not",
    "bitwise_xor",
    "__and__",
    "__or__",
    "__xor__",
    "maximum",
    "minimum",
    "lerp",
    "addcmul",
    "addcdiv",
    "nan_to_num",
    "isnan",
    "isinf",
    "dropout",
    "alpha_dropout",
    "feature_dropout",
    "native_dropout",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "lift_fresh_copy",
    "to",
    "_to_copy",
    "type_as",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "rand_like",
    "randn_like",
    # in place, as non-strict export keeps them (ResNet's residual ``hidden_state += shortcut``)
    "add_",
    "sub_",
    "mul_",
    "div_",
    "relu_",
    "clamp_",
    "masked_fill_",
)


class Elementwise(LayerPruner):
    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        inputs = [a for a in node.all_input_nodes if dims.shape(a) is not None]
        for out in dims.outputs(node):
            if out is not None:
                dims.broadcast(out, inputs)


class Reduction(LayerPruner):
    """``sum``/``mean``/``amax``/``var``/``norm``...: reduced concrete axes are unsafe.

    ``dim_index`` / ``keepdim_index`` say where the op takes them; no ``dim`` reduces all.
    """

    def __init__(self, dim_index: int | None, keepdim_index: int | None) -> None:
        self.dim_index = dim_index
        self.keepdim_index = keepdim_index

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        reduced = self._reduced(node, rank)
        keepdim = (
            bool(arg(node, self.keepdim_index, "keepdim", False))
            if (self.keepdim_index is not None)
            else False
        )
        for out in dims.outputs(node):
            if out is None or dims.rank(out) is None:
                continue
            j = 0
            for i in range(rank):
                if i in reduced:
                    size = dims.size(dims.axis(x, i))
                    if isinstance(size, int) and size > 1:
                        dims.unsafe(dims.axis(x, i), f"reduced over by {node.name}")
                    j += 1 if keepdim else 0
                    continue
                dims.same(dims.axis(x, i), dims.axis(out, j))
                j += 1

    def _reduced(self, node: fx.Node, rank: int) -> set[int]:
        value = arg(node, self.dim_index, "dim") if self.dim_index is not None else None
        if value is None or value == []:
            return set(range(rank))
        values = value if isinstance(value, (list, tuple)) else [value]
        return {v % rank for v in values}


class Softmax(LayerPruner):
    """Softmax-like ops normalize over ``dim``: that axis must not lose channels."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        dim = node.args[1] % rank
        dims.identity(node, x)
        size = dims.size(dims.axis(x, dim))
        if isinstance(size, int) and size > 1:
            dims.unsafe(dims.axis(x, dim), f"normalized over by {node.name}")


POINTWISE_PRUNERS: dict[str, LayerPruner] = {f"aten.{name}": Elementwise() for name in ELEMENTWISE}
POINTWISE_PRUNERS.update(
    {
        "aten.sum.dim_IntList": Reduction(1, 2),
        "aten.sum.default": Reduction(None, None),
        "aten.mean.dim": Reduction(1, 2),
        "aten.mean.default": Reduction(None, None),
        "aten.amax.default": Reduction(1, 2),
        "aten.amin.default": Reduction(1, 2),
        "aten.max.dim": Reduction(1, 2),
        "aten.min.dim": Reduction(1, 2),
        "aten.argmax.default": Reduction(1, 2),
        "aten.argmin.default": Reduction(1, 2),
        "aten.var.correction": Reduction(1, 3),
        "aten.std.correction": Reduction(1, 3),
        "aten.logsumexp.default": Reduction(1, 2),
        "aten.prod.dim_int": Reduction(1, 2),
        "aten.any.dim": Reduction(1, 2),
        "aten.all.dim": Reduction(1, 2),
        "aten.linalg_vector_norm.default": Reduction(2, 3),
        "aten.norm.ScalarOpt_dim": Reduction(2, 3),
        "aten.cumsum.default": Softmax(),
        "aten.softmax.int": Softmax(),
        "aten._softmax.default": Softmax(),
        "aten.log_softmax.int": Softmax(),
        "aten._log_softmax.default": Softmax(),
    }
)
