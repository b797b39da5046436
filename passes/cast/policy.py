"""Which ops run in half precision, which stay in float32, and which just pass dtypes through.

Every ``call_function`` node of the IR gets one :class:`Role`:

- ``HALF``: the heavy compute (matmul, linear, conv, attention, embedding lookup): always in
  the target dtype (fp16/bf16); its float inputs are cast to it.
- ``LIGHT``: any other ATen op (elementwise, pooling, normalization by batch statistics): in
  the target dtype, except that one whose non-constant float inputs all stay float32 stays in
  float32 too (``light_ops_follow_inputs``), so a float32 island is not cast down and straight
  back up for one cheap op (the ``clamp`` between a pooled ``sum`` and its ``div``).
- ``KEEP``: numerically sensitive (LayerNorm, softmax, reductions, exp/log/pow/sqrt, division,
  and by default the op that produces each model output): computes in float32; its float
  inputs are cast up.
- ``FOLLOW``: moves data without arithmetic (views, transposes, slices, dropout): its output
  has its input's dtype and no cast is ever put in front of it, so casts sit next to compute.
- ``EXPLICIT``: already states its output dtype (``to``/``_to_copy``, factory ops): untouched.
- ``OPAQUE``: not an ATen op (quantize/dequantize ops of another namespace, custom ops): runs
  on float32 inputs as it did before the cast, since we cannot know what it accepts.

Op names are ATen overload-packet names (``layer_norm``, ``_softmax``), with or without the
``aten.`` prefix; ``optimize check`` and ``--dump-ir`` show them.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable

import torch
from torch import fx

#: the float32 islands a half-precision graph keeps unless the recipe says otherwise
DEFAULT_KEEP_FP32: tuple[str, ...] = (
    "layer_norm",
    "native_layer_norm",
    "group_norm",
    "native_group_norm",
    "rms_norm",
    "softmax",
    "_softmax",
    "log_softmax",
    "_log_softmax",
    "mean",
    "sum",
    "var",
    "var_mean",
    "std",
    "linalg_vector_norm",
    "cumsum",
    "logsumexp",
    "exp",
    "log",
    "pow",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "div",
)

#: the work half precision is for: always computed in the target dtype
HEAVY_OPS = frozenset(
    {
        "linear",
        "matmul",
        "mm",
        "bmm",
        "addmm",
        "addmv",
        "baddbmm",
        "mv",
        "einsum",
        "conv1d",
        "conv2d",
        "conv3d",
        "convolution",
        "_convolution",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "scaled_dot_product_attention",
        "embedding",
        "embedding_bag",
    }
)

#: data movement: the output dtype is the input dtype, no arithmetic happens
FOLLOW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "transpose",
        "permute",
        "t",
        "expand",
        "expand_as",
        "slice",
        "select",
        "squeeze",
        "unsqueeze",
        "flatten",
        "unflatten",
        "contiguous",
        "clone",
        "alias",
        "detach",
        "dropout",
        "feature_dropout",
        "alpha_dropout",
        "split",
        "split_with_sizes",
        "chunk",
        "unbind",
        "narrow",
        "movedim",
    }
)

#: ops whose output dtype is an argument of the op
EXPLICIT_OPS = frozenset(
    {
        "to",
        "_to_copy",
        "type_as",
        "_assert_tensor_metadata",
        "arange",
        "full",
        "full_like",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "new_ones",
        "new_zeros",
        "new_full",
        "new_empty",
        "empty",
        "empty_like",
        "scalar_tensor",
        "rand",
        "randn",
        "lift_fresh_copy",
    }
)

CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


class Role(enum.Enum):
    HALF = "half"
    LIGHT = "light"
    KEEP = "fp32"
    FOLLOW = "follow"
    EXPLICIT = "explicit"
    OPAQUE = "opaque"


def op_name(node: fx.Node) -> str | None:
    """``layer_norm`` for ``aten.layer_norm.default``; None for non-ATen targets."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return target._overloadpacket.__name__
    return None


def normalize(name: str) -> str:
    """Accept ``aten.layer_norm``, ``aten::layer_norm``, ``layer_norm.default``."""
    name = name.strip().removeprefix("aten.").removeprefix("aten::")
    packet, _, overload = name.partition(".")
    return packet if overload else name


def unknown_ops(names: Iterable[str]) -> list[str]:
    """The names that are not ATen operators (typos in a recipe)."""
    return [n for n in names if not hasattr(torch.ops.aten, normalize(n))]


class Policy:
    """The role of each node, from the op lists and the per-node overrides."""

    def __init__(self, keep_ops: Iterable[str], keep_nodes: Iterable[str] = ()) -> None:
        self.keep_ops = frozenset(normalize(n) for n in keep_ops)
        self.keep_nodes = set(keep_nodes)

    def role(self, node: fx.Node) -> Role:
        if node.target is operator.getitem:
            return Role.FOLLOW
        name = op_name(node)
        if name is None:
            return Role.OPAQUE
        if name in EXPLICIT_OPS:
            return Role.EXPLICIT
        if node.name in self.keep_nodes or name in self.keep_ops:
            return Role.KEEP
        if name in FOLLOW_OPS:
            return Role.FOLLOW
        return Role.HALF if name in HEAVY_OPS else Role.LIGHT
