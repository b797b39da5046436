"""Layer pruners for ops that own parameters: linear and matmul, convolution, normalization,
embedding, and attention.

Tags name what an axis is for the group kinds: ``linear`` / ``conv`` (a weight axis),
``producer`` (a weight axis that creates channels: a Linear's or Conv's out-features, an
embedding's width), ``norm`` (LayerNorm / RMSNorm), ``embedding``, ``heads`` (attention heads).
"""

from __future__ import annotations

from torch import fx

from .dims import Dim, DimRecorder, arg, arg_path
from .pruners import LayerPruner

HEAD_DIM = "head_dim is kept whole: heads are pruned as units"


def _leading(dims: DimRecorder, a, b, count: int) -> None:
    """The first ``count`` axes of ``a`` and ``b`` are the same (batch, sequence)."""
    for i in range(count):
        dims.same(dims.axis(a, i), dims.axis(b, i))


class Linear(LayerPruner):
    """``linear(x, W[out, in], b[out])``: in-features meet ``x``, out-features make ``y``."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x, weight = node.args[0], node.args[1]
        bias = arg(node, 2, "bias")
        dims.same(dims.axis(x, -1), dims.axis(weight, 1))
        dims.same(dims.axis(node, -1), dims.axis(weight, 0), dims.axis(bias, 0))
        dims.tag(dims.axis(weight, 0), "linear", "producer")
        dims.tag(dims.axis(weight, 1), "linear")
        _leading(dims, x, node, (dims.rank(x) or 1) - 1)


class Matmul(LayerPruner):
    """``mm``, ``bmm``, ``matmul``, ``addmm``, ``baddbmm``: contraction and batch axes.

    ``addmm(bias, x, W[in, out])`` is how GPT-2's ``Conv1D`` (transposed weight) exports.
    Batch axes of a product of two activations are attention heads (``q @ k^T``).
    """

    def __init__(self, *, bias_first: bool = False) -> None:
        self.bias_first = bias_first

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        args = node.args[1:3] if self.bias_first else node.args[:2]
        a, b = args
        ra, rb = dims.rank(a), dims.rank(b)
        if ra is None or rb is None or ra < 1 or rb < 1:
            dims.unknown(node, "matmul of non-tensors")
            return
        if self.bias_first:
            dims.broadcast(node, [node.args[0]])
        if ra == 1 or rb == 1:
            self._vector(node, dims, a, b, ra, rb)
            return
        dims.same(dims.axis(a, -1), dims.axis(b, -2))
        dims.same(dims.axis(node, -2), dims.axis(a, -2))
        dims.same(dims.axis(node, -1), dims.axis(b, -1))
        for weight, axis in ((a, -2), (a, -1), (b, -2), (b, -1)):
            if weight.op == "get_attr":
                dims.tag(dims.axis(weight, axis), "linear")
        if b.op == "get_attr":
            dims.tag(dims.axis(b, -1), "producer")
        out_rank = dims.rank(node) or 2
        activations = a.op != "get_attr" and b.op != "get_attr"
        for value, rank in ((a, ra), (b, rb)):
            for i in range(rank - 2):
                j = out_rank - rank + i
                size = dims.size(dims.axis(value, i))
                if size != 1 and size == dims.size(dims.axis(node, j)):
                    dims.same(dims.axis(value, i), dims.axis(node, j))
                    if activations and isinstance(size, int):
                        dims.tag(dims.axis(node, j), "heads")

    @staticmethod
    def _vector(node, dims, a, b, ra, rb) -> None:
        if ra == 1 and rb == 1:
            dims.same(dims.axis(a, 0), dims.axis(b, 0))
        elif ra == 1:
            dims.same(dims.axis(a, 0), dims.axis(b, -2))
            dims.same(dims.axis(node, -1), dims.axis(b, -1))
            _leading(dims, b, node, rb - 2)
        else:
            dims.same(dims.axis(a, -1), dims.axis(b, 0))
            _leading(dims, a, node, ra - 1)


class Convolution(LayerPruner):
    """``conv{1,2,3}d`` and ``convolution``: channels at axis 1 (0 when unbatched).

    Plain convolutions couple in-channels with ``x`` and out-channels with ``y``; depthwise
    ones (groups = channels) pass channels through, and their ``groups`` constant is
    rewritten; any other grouping is left alone.
    """

    def __init__(self, groups_index: int, transposed_index: int | None = None) -> None:
        self.groups_index = groups_index
        self.transposed_index = transposed_index

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x, weight = node.args[0], node.args[1]
        bias = arg(node, 2, "bias")
        if self.transposed_index is not None and arg(node, self.transposed_index, "transposed"):
            dims.unknown(node, "transposed convolution")
            return
        groups = arg(node, self.groups_index, "groups", 1)
        rank, w_rank = dims.rank(x), dims.rank(weight)
        if rank is None or w_rank is None or not isinstance(groups, int):
            dims.unknown(node, "convolution with computed weights or groups")
            return
        c = 1 if rank == w_rank else 0
        _leading(dims, x, node, c)
        for k in range(w_rank - 2):
            dims.fixed(dims.axis(x, c + 1 + k), "spatial axis")
            dims.fixed(dims.axis(node, c + 1 + k), "spatial axis")
            dims.fixed(dims.axis(weight, 2 + k), "kernel axis")
        x_c, y_c = dims.axis(x, c), dims.axis(node, c)
        w_out, w_in = dims.axis(weight, 0), dims.axis(weight, 1)
        dims.tag(w_out, "conv")
        dims.tag(w_in, "conv")
        if groups == 1:
            dims.same(x_c, w_in)
            dims.same(y_c, w_out, dims.axis(bias, 0))
            dims.tag(w_out, "producer")
        elif groups == dims.size(x_c) == dims.size(y_c) and dims.size(w_in) == 1:
            dims.same(x_c, y_c, w_out, dims.axis(bias, 0))
            dims.size_arg(y_c, node, arg_path(node, self.groups_index, "groups"))
        else:
            for dim in (x_c, y_c, w_out, w_in):
                dims.unsafe(dim, f"grouped convolution ({groups} groups) in {node.name}")


class BatchNorm(LayerPruner):
    """Batch norm in inference form: per-channel weight, bias and running statistics."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        out, *extra = dims.outputs(node)
        rank = dims.rank(x) or 0
        if out is None or rank < 2:
            dims.unknown(node, "batch norm without a channel axis")
            return
        channel = [dims.axis(x, 1), dims.axis(out, 1)]
        channel += [dims.axis(p, 0) for p in node.args[1:5]]
        channel += [dims.axis(e, 0) for e in extra if e is not None and dims.rank(e) == 1]
        dims.same(*channel)
        dims.tag(channel[0], "batchnorm")
        for i in range(rank):
            if i != 1:
                dims.same(dims.axis(x, i), dims.axis(out, i))


class LayerNorm(LayerPruner):
    """``layer_norm`` / ``rms_norm`` over the last axes; ``normalized_shape`` is rewritten.

    Pruning a normalized axis changes the statistics: such groups are the ``hidden`` kind,
    which the pass prunes only when the recipe asks for it.
    """

    def __init__(self, *, has_bias: bool = True) -> None:
        self.has_bias = has_bias

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x, shape = node.args[0], node.args[1]
        weight = arg(node, 2, "weight")
        bias = arg(node, 3, "bias") if self.has_bias else None
        out = dims.outputs(node)[0]
        rank = dims.rank(x)
        if rank is None or out is None or not isinstance(shape, (list, tuple)):
            dims.unknown(node, "layer norm with a computed shape")
            return
        k = len(shape)
        _leading(dims, x, out, rank - k)
        for i in range(k):
            axis = dims.axis(out, rank - k + i)
            dims.same(dims.axis(x, rank - k + i), axis, dims.axis(weight, i), dims.axis(bias, i))
            dims.tag(axis, "norm")
            dims.size_arg(axis, node, (1, i))


class GroupNorm(LayerPruner):
    """Group norm ties channels into groups of equal size: not pruned."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        dims.unknown(node, f"{node.name}: group norm ties channels into fixed groups")


class Embedding(LayerPruner):
    """``embedding(W[vocab, width], ids)``: the width is a channel axis, the rows are not."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        weight, ids = node.args[0], node.args[1]
        dims.fixed(dims.axis(weight, 0), "vocabulary rows (indexed by the data)")
        dims.same(dims.axis(node, -1), dims.axis(weight, 1))
        dims.tag(dims.axis(weight, 1), "embedding", "producer")
        _leading(dims, ids, node, dims.rank(ids) or 0)


class ScaledDotProductAttention(LayerPruner):
    """``scaled_dot_product_attention(q, k, v, mask)`` over ``(..., heads, seq, head_dim)``.

    Heads of q, k, v and the output are one axis; head_dim stays whole (the default scale is
    ``1/sqrt(head_dim)``, and heads are the unit worth removing). In its grouped-query form
    (``enable_gqa``: k and v have fewer heads, each shared by a run of consecutive q heads)
    the q heads are the product of the k/v heads and a per-group axis no tensor has, recorded
    as a virtual axis of the node (``owner`` ``<node>:per_kv_head``), so pruning either
    factor keeps the groups equal.
    """

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        q, k, v = node.args[:3]
        mask = arg(node, 3, "attn_mask")
        rank = dims.rank(q)
        if rank is None or rank < 3 or dims.rank(k) != rank or dims.rank(v) != rank:
            dims.unknown(node, "attention of unexpected rank")
            return
        heads = [dims.axis(t, -3) for t in (q, k, v, node)]
        if node.kwargs.get("enable_gqa") or len({dims.size(h) for h in heads}) != 1:
            self._grouped(node, dims, *heads)
        else:
            dims.same(*heads)
            dims.tag(heads[0], "heads")
        for i in range(rank - 3):
            for t in (q, k, v):
                if dims.size(dims.axis(t, i)) == dims.size(dims.axis(node, i)) != 1:
                    dims.same(dims.axis(t, i), dims.axis(node, i))
        dims.same(dims.axis(q, -2), dims.axis(node, -2))
        dims.same(dims.axis(k, -2), dims.axis(v, -2))
        dims.same(dims.axis(q, -1), dims.axis(k, -1))
        dims.same(dims.axis(v, -1), dims.axis(node, -1))
        for dim in (dims.axis(q, -1), dims.axis(v, -1)):
            dims.fixed(dim, HEAD_DIM)
        if mask is not None:
            self._mask(node, dims, mask, q, k)

    @staticmethod
    def _grouped(node: fx.Node, dims: DimRecorder, q, k, v, out) -> None:
        """q heads = k/v heads x query heads per k/v head (``repeat_interleave`` order)."""
        dims.same(q, out)
        dims.same(k, v)
        queries, keys = dims.size(q), dims.size(k)
        if not (isinstance(queries, int) and isinstance(keys, int)) or queries % keys:
            for h in (q, k, v, out):
                dims.unsafe(h, f"grouped-query attention of {queries} query, {keys} k/v heads")
            return
        per = Dim(f"{node.name}:per_kv_head", 0)
        dims.relations.sizes.setdefault(per, queries // keys)
        dims.product(q, (k, per))
        dims.tag(q, "heads")

    @staticmethod
    def _mask(node, dims, mask, q, k) -> None:
        """The mask broadcasts against ``(..., heads, q_len, k_len)``."""
        rank = dims.rank(mask) or 0
        targets = {-1: dims.axis(k, -2), -2: dims.axis(q, -2), -3: dims.axis(q, -3)}
        for offset in range(1, rank + 1):
            mine = dims.axis(mask, -offset)
            theirs = targets.get(-offset) or dims.axis(node, -offset)
            if theirs is not None and dims.size(mine) == dims.size(theirs) != 1:
                dims.same(mine, theirs)


LAYER_PRUNERS: dict[str, LayerPruner] = {
    "aten.linear.default": Linear(),
    "aten.mm.default": Matmul(),
    "aten.bmm.default": Matmul(),
    "aten.matmul.default": Matmul(),
    "aten.addmm.default": Matmul(bias_first=True),
    "aten.baddbmm.default": Matmul(bias_first=True),
    "aten.conv1d.default": Convolution(groups_index=6),
    "aten.conv2d.default": Convolution(groups_index=6),
    "aten.conv3d.default": Convolution(groups_index=6),
    "aten.conv1d.padding": Convolution(groups_index=6),
    "aten.conv2d.padding": Convolution(groups_index=6),
    "aten.conv3d.padding": Convolution(groups_index=6),
    "aten.convolution.default": Convolution(groups_index=8, transposed_index=6),
    "aten.batch_norm.default": BatchNorm(),
    "aten._native_batch_norm_legit_no_training.default": BatchNorm(),
    "aten.layer_norm.default": LayerNorm(),
    "aten.native_layer_norm.default": LayerNorm(),
    "aten.rms_norm.default": LayerNorm(has_bias=False),
    "aten.group_norm.default": GroupNorm(),
    "aten.embedding.default": Embedding(),
    "aten.scaled_dot_product_attention.default": ScaledDotProductAttention(),
}
