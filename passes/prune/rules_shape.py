"""Layer pruners for ops that move axes around: views, permutations, expands, concatenation
and splitting, indexing, pooling and padding.

Views are matched from their input and output shapes (:mod:`.reshape`), and every size they
hold as a constant is recorded, so a pruned graph still runs at every batch and sequence
size: a head split ``view(x, [b, s, 12, 32])`` becomes ``[b, s, 9, 32]``; a fused QKV
``split(x, 768, 2)`` becomes ``split_with_sizes(x, [576, 576, 576], 2)``.
"""

from __future__ import annotations

import sys

import torch
from torch import fx

from .dims import DimRecorder, arg
from .pruners import LayerPruner
from .reshape import runs


class Reshape(LayerPruner):
    """``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ``unsqueeze``.

    ``shape_arg`` is where the op keeps output sizes as constants (``view(x, shape)``: 1);
    for ``unflatten(x, dim, sizes)`` the first of them sets output axis ``dim``.
    """

    def __init__(self, shape_arg: int | None = None, *, unflatten: bool = False) -> None:
        self.shape_arg = shape_arg
        self.unflatten = unflatten

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        before, after = dims.shape(x), dims.shape(node)
        if before is None or after is None:
            dims.unknown(node, "reshape of a non-tensor")
            return
        matched = runs(before, after)
        if matched is None:
            dims.unknown(node, f"{node.name}: reshape {before} -> {after} cannot be matched")
            return
        for ins, outs in matched:
            in_dims = [dims.axis(x, i) for i in ins]
            out_dims = [dims.axis(node, j) for j in outs]
            if len(ins) == 1 and len(outs) == 1:
                dims.same(in_dims[0], out_dims[0])
            elif len(ins) == 1:
                dims.product(in_dims[0], out_dims)
            elif len(outs) == 1:
                dims.product(out_dims[0], in_dims)
            else:
                for dim in in_dims + out_dims:
                    dims.unsafe(dim, f"{node.name}: reshape mixes axes")
        self._constants(node, dims, len(after))

    def _constants(self, node: fx.Node, dims: DimRecorder, rank: int) -> None:
        if self.shape_arg is None or len(node.args) <= self.shape_arg:
            return
        sizes = node.args[self.shape_arg]
        if not isinstance(sizes, (list, tuple)):
            return
        first = 0
        if self.unflatten:
            first = node.args[1] % (rank - len(sizes) + 1)
        for k in range(len(sizes)):
            dims.size_arg(dims.axis(node, first + k), node, (self.shape_arg, k))


class Permute(LayerPruner):
    """``transpose``, ``permute``, ``t``, ``swapaxes``: output axis i is input axis perm[i]."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        name = str(node.target)
        if "permute" in name:
            perm = [p % rank for p in node.args[1]]
        else:
            perm = list(range(rank))
            if rank >= 2:
                a, b = (node.args[1], node.args[2]) if len(node.args) > 2 else (0, 1)
                a, b = a % rank, b % rank
                perm[a], perm[b] = perm[b], perm[a]
        for out_axis, in_axis in enumerate(perm):
            dims.same(dims.axis(x, in_axis), dims.axis(node, out_axis))


class Expand(LayerPruner):
    """``expand(x, sizes)``: broadcast axes are new; kept ones are the same channels, and
    every constant size is recorded for rewriting."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x, sizes = node.args[0], node.args[1]
        dims.broadcast(node, [x])
        for k in range(len(sizes)):
            dims.size_arg(dims.axis(node, k), node, (1, k))


class ExpandAs(LayerPruner):
    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        dims.broadcast(node, [node.args[0]])
        dims.identity(node, node.args[1])


class Cat(LayerPruner):
    """``cat(tensors, dim)``: the output axis is the inputs' axes side by side."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        tensors = [t for t in node.args[0] if dims.shape(t) not in (None, (0,))]
        dim = arg(node, 1, "dim", 0)
        rank = dims.rank(node)
        if rank is None or not tensors:
            return
        dim %= rank
        dims.concat(dims.axis(node, dim), [dims.axis(t, dim) for t in tensors])
        for i in range(rank):
            if i != dim:
                dims.same(dims.axis(node, i), *(dims.axis(t, i) for t in tensors))


class Stack(LayerPruner):
    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        tensors = list(node.args[0])
        rank = dims.rank(node)
        if rank is None:
            return
        dim = arg(node, 1, "dim", 0) % rank
        dims.fixed(dims.axis(node, dim), "stacked axis")
        for i in range(rank - 1):
            j = i if i < dim else i + 1
            dims.same(dims.axis(node, j), *(dims.axis(t, i) for t in tensors))


class Split(LayerPruner):
    """``split`` / ``split_with_sizes``: the input axis is the outputs' axes side by side.

    The rewrite turns ``split(x, 768, 2)`` into ``split_with_sizes(x, new sizes, 2)`` when the
    parts shrink (equal-size splitting cannot express parts that shrank differently).
    """

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        parts = dims.outputs(node)
        if rank is None:
            return
        dim = arg(node, 2, "dim", 0) % rank
        whole = dims.axis(x, dim)
        if any(p is None for p in parts):
            dims.unsafe(whole, f"{node.name}: a part of the split is unused")
            return
        part_dims = tuple(dims.axis(p, dim) for p in parts)
        dims.concat(whole, part_dims)
        for i in range(rank):
            if i != dim:
                dims.same(dims.axis(x, i), *(dims.axis(p, i) for p in parts))
        if isinstance(dims.size(whole), int):
            dims.rewrite(node, part_dims, _split_with_sizes(dim))


def _split_with_sizes(dim: int):
    def apply(node: fx.Node, sizes: list[int]) -> None:
        node.target = torch.ops.aten.split_with_sizes.default
        node.args = (node.args[0], list(sizes), dim)
        node.kwargs = {}

    return apply


class Unbind(LayerPruner):
    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        dim = arg(node, 1, "dim", 0) % rank
        dims.fixed(dims.axis(x, dim), "unbound axis")
        for part in dims.outputs(node):
            if part is not None:
                for i in range(rank - 1):
                    dims.same(dims.axis(part, i), dims.axis(x, i if i < dim else i + 1))


class Select(LayerPruner):
    """``select(x, dim, i)`` and ``index_select(x, dim, idx)``: that axis is indexed by a
    constant or the data and keeps its size; the others pass through."""

    def __init__(self, *, drops_axis: bool) -> None:
        self.drops_axis = drops_axis

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x, dim = node.args[0], node.args[1]
        rank = dims.rank(x)
        if rank is None:
            return
        dim %= rank
        dims.fixed(dims.axis(x, dim), f"indexed by {node.name}")
        if not self.drops_axis:
            dims.fixed(dims.axis(node, dim), f"indexed by {node.name}")
        for i in range(rank):
            if i == dim:
                continue
            j = i - 1 if self.drops_axis and i > dim else i
            dims.same(dims.axis(x, i), dims.axis(node, j))


class Slice(LayerPruner):
    """``slice(x, dim, start, end, step)``: a full slice passes channels through; a partial
    one of a concrete axis is not understood."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        dim = arg(node, 1, "dim", 0) % rank
        start, end = arg(node, 2, "start"), arg(node, 3, "end")
        step = arg(node, 4, "step", 1)
        size = dims.size(dims.axis(x, dim))
        full = (
            start in (None, 0)
            and step == 1
            and (
                end is None
                or end == sys.maxsize
                or (isinstance(end, int) and isinstance(size, int) and end >= size)
            )
        )
        for i in range(rank):
            if i != dim or full:
                dims.same(dims.axis(x, i), dims.axis(node, i))
            elif isinstance(size, int):
                dims.unsafe(dims.axis(x, i), f"partly sliced by {node.name}")
                dims.unsafe(dims.axis(node, i), f"partly sliced by {node.name}")


class Spatial(LayerPruner):
    """Pooling, upsampling, padding: the last ``count`` axes are spatial, the rest pass.

    ``count=None`` reads it from a padding list (``constant_pad_nd(x, pad)``: len(pad) // 2).
    """

    def __init__(self, count: int | None) -> None:
        self.count = count

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        x = node.args[0]
        rank = dims.rank(x)
        if rank is None:
            return
        count = self.count if self.count is not None else len(node.args[1]) // 2
        for out in dims.outputs(node):
            if out is None:
                continue
            for i in range(rank):
                if i < rank - count:
                    dims.same(dims.axis(x, i), dims.axis(out, i))
                else:
                    dims.fixed(dims.axis(x, i), "spatial axis")
                    dims.fixed(dims.axis(out, i), "spatial axis")


class Passive(LayerPruner):
    """Ops that read a value without constraining its channels (``getitem``: the producer
    describes its outputs; shape queries; metadata asserts without sizes)."""

    def relate(self, node: fx.Node, dims: DimRecorder) -> None:
        if node.kwargs.get("size") is not None or node.kwargs.get("stride") is not None:
            dims.unknown(node, f"{node.name} asserts sizes")


SHAPE_PRUNERS: dict[str, LayerPruner] = {
    "aten.view.default": Reshape(1),
    "aten.reshape.default": Reshape(1),
    "aten._unsafe_view.default": Reshape(1),
    "aten.view_as.default": Reshape(),
    "aten.flatten.using_ints": Reshape(),
    "aten.unflatten.int": Reshape(2, unflatten=True),
    "aten.squeeze": Reshape(),
    "aten.unsqueeze.default": Reshape(),
    "aten.transpose.int": Permute(),
    "aten.swapaxes.default": Permute(),
    "aten.t.default": Permute(),
    "aten.permute.default": Permute(),
    "aten.expand.default": Expand(),
    "aten.expand_as.default": ExpandAs(),
    "aten.cat.default": Cat(),
    "aten.stack.default": Stack(),
    "aten.split.Tensor": Split(),
    "aten.split_with_sizes.default": Split(),
    "aten.unbind.int": Unbind(),
    "aten.select.int": Select(drops_axis=True),
    "aten.index_select.default": Select(drops_axis=False),
    "aten.slice.Tensor": Slice(),
    "aten.constant_pad_nd.default": Spatial(None),
    "operator.getitem": Passive(),
    "aten.sym_size.int": Passive(),
    "aten.sym_numel.default": Passive(),
    "aten._assert_tensor_metadata.default": Passive(),
    "aten._assert_scalar.default": Passive(),
}

for _n in (1, 2, 3):
    for _op in ("avg_pool", "max_pool", "adaptive_avg_pool", "adaptive_max_pool"):
        SHAPE_PRUNERS[f"aten.{_op}{_n}d"] = Spatial(_n)
    SHAPE_PRUNERS[f"aten.max_pool{_n}d_with_indices"] = Spatial(_n)
    SHAPE_PRUNERS[f"aten._adaptive_avg_pool{_n}d"] = Spatial(_n)
for _op in ("upsample_nearest1d", "upsample_linear1d"):
    SHAPE_PRUNERS[f"aten.{_op}"] = Spatial(1)
for _op in ("upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d"):
    SHAPE_PRUNERS[f"aten.{_op}"] = Spatial(2)
for _op in ("upsample_nearest3d", "upsample_trilinear3d"):
    SHAPE_PRUNERS[f"aten.{_op}"] = Spatial(3)
