"""Tensor axes and the relations between them that per-op pruners record.

Every axis of every value in the graph (and of every parameter) is a :class:`Dim`. A layer
pruner looks at one node and says how its axes are coupled: two axes index the same channels
(:meth:`DimRecorder.same`), one axis is several others laid out major to minor (a view that
splits heads: :meth:`~DimRecorder.product`) or side by side (a concatenation, a split:
:meth:`~DimRecorder.concat`), an axis may never shrink (:meth:`~DimRecorder.fixed`: model
inputs and outputs, spatial axes, vocabulary rows) or its coupling is not understood
(:meth:`~DimRecorder.unsafe`). Constants that hold a size (a view's shape, a layer norm's
``normalized_shape``) are recorded with :meth:`~DimRecorder.size_arg` so the rewrite can update
them. The relations are solved into index spaces by :mod:`.spaces`.

Example, the rule of ``aten.linear``::

    def relate(self, node, dims):
        x, weight, bias = node.args[0], node.args[1], arg(node, 2, "bias")
        dims.same(dims.axis(x, -1), dims.axis(weight, 1))
        dims.same(dims.axis(node, -1), dims.axis(weight, 0), dims.axis(bias, 0))
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch import fx

#: reasons an axis keeps its size by design; not reported as "could not prove safe"
FIXED = "fixed"
#: reasons the analysis does not understand a coupling; such groups are listed in the report
UNSAFE = "unsafe"

#: tag of a dynamic axis whose size the graph computes; its factors must keep their size
COMPUTED_SIZE = "computed-size"

Size = int | sympy.Expr


@dataclass(frozen=True)
class Dim:
    """One axis of one value: a node's output (``owner`` = node name) or a parameter
    (``owner`` = ``"attr:" + qualified name``)."""

    owner: str
    axis: int

    @property
    def attr(self) -> str | None:
        return self.owner[5:] if self.owner.startswith("attr:") else None

    def __str__(self) -> str:
        return f"{self.owner}[{self.axis}]"


@dataclass
class Rewrite:
    """A change the rewrite applies to ``node`` once new sizes are known."""

    node: fx.Node
    dims: tuple[Dim, ...]
    apply: Callable[[fx.Node, list[int]], None]


@dataclass
class Relations:
    """Everything the layer pruners recorded; solved by :func:`.spaces.solve`."""

    sizes: dict[Dim, Size] = field(default_factory=dict)
    same: list[tuple[Dim, Dim]] = field(default_factory=list)
    defs: list[tuple[Dim, str, tuple[Dim, ...]]] = field(default_factory=list)
    reasons: dict[Dim, set[tuple[str, str]]] = field(default_factory=dict)
    tags: dict[Dim, set[str]] = field(default_factory=dict)
    rewrites: list[Rewrite] = field(default_factory=list)


class DimRecorder:
    """The handle a layer pruner writes its relations to."""

    def __init__(self, module: fx.GraphModule) -> None:
        self.module = module
        self.relations = Relations()
        self._attr_keys: dict[int, str] = {}

    # -- looking at values ------------------------------------------------------------------

    def shape(self, value: Any) -> tuple[Size, ...] | None:
        """The shape of a tensor value (an fx node or a parameter), ``None`` for non-tensors."""
        tensor = self._tensor(value)
        if tensor is None:
            return None
        return tuple(_size(s) for s in tensor.shape)

    def rank(self, value: Any) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def axis(self, value: Any, axis: int) -> Dim | None:
        """The :class:`Dim` of ``value``'s axis ``axis`` (negative counts from the end)."""
        shape = self.shape(value)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        axis %= len(shape)
        dim = Dim(self._owner(value), axis)
        self.relations.sizes.setdefault(dim, shape[axis])
        return dim

    def axes(self, value: Any) -> list[Dim]:
        rank = self.rank(value)
        return [] if rank is None else [self.axis(value, i) for i in range(rank)]  # type: ignore[misc]

    def size(self, dim: Dim) -> Size:
        return self.relations.sizes[dim]

    def outputs(self, node: fx.Node) -> list[fx.Node | None]:
        """The values a multi-output node yields, as its ``getitem`` users (``None`` if unused)."""
        val = node.meta.get("val")
        if not isinstance(val, (tuple, list)):
            return [node]
        items: list[fx.Node | None] = [None] * len(val)
        for user in node.users:
            if user.target is operator.getitem and isinstance(user.args[1], int):
                items[user.args[1]] = user
        return items

    # -- relations --------------------------------------------------------------------------

    def same(self, *dims: Dim | None) -> None:
        """These axes index the same channels: whatever is kept in one is kept in all."""
        present = [d for d in dims if d is not None]
        for other in present[1:]:
            if self.size(other) != self.size(present[0]):
                self.unsafe(present[0], f"sizes differ: {present[0]} vs {other}")
                self.unsafe(other, f"sizes differ: {present[0]} vs {other}")
                continue
            self.relations.same.append((present[0], other))

    def product(self, whole: Dim | None, parts: Iterable[Dim | None]) -> None:
        """``whole`` is ``parts`` flattened, major to minor (a view that splits or merges)."""
        self._define(whole, "product", parts)

    def concat(self, whole: Dim | None, parts: Iterable[Dim | None]) -> None:
        """``whole`` is ``parts`` side by side, in order (a concatenation, a split)."""
        self._define(whole, "concat", parts)

    def fixed(self, dim: Dim | None, reason: str) -> None:
        """This axis keeps its size by design (model input or output, spatial, vocabulary)."""
        self._reason(dim, FIXED, reason)

    def unsafe(self, dim: Dim | None, reason: str) -> None:
        """The coupling of this axis is not understood: it must not be pruned on a guess."""
        self._reason(dim, UNSAFE, reason)

    def tag(self, dim: Dim | None, *tags: str) -> None:
        """Label an axis (``linear``, ``conv``, ``norm``, ``embedding``, ``heads``) for naming
        and for the ``ffn`` / ``heads`` / ``conv`` / ``hidden`` kinds."""
        if dim is not None:
            self.relations.tags.setdefault(dim, set()).update(tags)

    def size_arg(self, dim: Dim | None, node: fx.Node, path: tuple[int | str, ...]) -> None:
        """The constant at ``path`` in ``node``'s arguments holds ``dim``'s size.

        ``path`` starts with an argument index or a keyword name, then indexes into lists:
        ``(1, 2)`` is ``node.args[1][2]``. A ``-1`` there is left alone (the size is inferred);
        a size computed in the graph cannot be rewritten, so ``dim`` is marked unsafe.
        """
        if dim is None:
            return
        value = _get_path(node, path)
        if value == -1:
            return  # inferred
        if not isinstance(self.size(dim), int):
            # a dynamic axis: fine unless it turns out to be a merge of pruned channels
            # (``b * heads`` computed in the graph), see spaces._push_reasons_down
            if isinstance(value, fx.Node):
                self.tag(dim, COMPUTED_SIZE)
            return
        if not isinstance(value, int):
            self.unsafe(dim, f"{node.name} computes this size in the graph")
            return
        if value != self.size(dim):
            self.unsafe(dim, f"{node.name} holds {value} where the axis has {self.size(dim)}")
            return

        def apply(target: fx.Node, sizes: list[int]) -> None:
            _set_path(target, path, sizes[0])

        self.rewrite(node, (dim,), apply)

    def rewrite(
        self,
        node: fx.Node,
        dims: tuple[Dim, ...],
        apply: Callable[[fx.Node, list[int]], None],
    ) -> None:
        """Call ``apply(node, new sizes of dims)`` when any of ``dims`` shrinks."""
        self.relations.rewrites.append(Rewrite(node, dims, apply))

    # -- helpers for common patterns ------------------------------------------------------------

    def unknown(self, node: fx.Node, reason: str) -> None:
        """Mark every concrete axis of the node's tensor inputs and outputs unsafe."""
        values = [a for a in node.all_input_nodes] + [o for o in self.outputs(node) if o]
        for value in values:
            for dim in self.axes(value):
                if isinstance(self.size(dim), int) and self.size(dim) > 1:
                    self.unsafe(dim, reason)

    def broadcast(self, out: Any, inputs: Iterable[Any]) -> None:
        """Elementwise with numpy broadcasting: axes aligned from the right are the same
        channels unless one side is broadcast (size 1)."""
        out_shape = self.shape(out)
        if out_shape is None:
            return
        for value in inputs:
            shape = self.shape(value)
            if shape is None:
                continue
            offset = len(out_shape) - len(shape)
            for axis, size in enumerate(shape):
                if offset + axis < 0:
                    continue
                if size == out_shape[offset + axis] and size != 1:
                    self.same(self.axis(value, axis), self.axis(out, offset + axis))

    def identity(self, out: Any, value: Any) -> None:
        """``out`` has ``value``'s shape, axis for axis (clone, dropout, dtype casts)."""
        for a, b in zip(self.axes(value), self.axes(out), strict=False):
            self.same(a, b)

    # -- internals --------------------------------------------------------------------------

    def _define(self, whole: Dim | None, kind: str, parts: Iterable[Dim | None]) -> None:
        got = tuple(parts)
        if whole is None or any(p is None for p in got):
            if whole is not None:
                self.unsafe(whole, f"a {kind} of axes that are not tensors")
            return
        self.relations.defs.append((whole, kind, got))  # type: ignore[arg-type]

    def _reason(self, dim: Dim | None, level: str, reason: str) -> None:
        if dim is not None:
            self.relations.reasons.setdefault(dim, set()).add((level, reason))

    def _owner(self, value: Any) -> str:
        if isinstance(value, fx.Node) and value.op == "get_attr":
            tensor = self._tensor(value)
            key = self._attr_keys.setdefault(id(tensor), str(value.target))
            return "attr:" + key
        return value.name

    def _tensor(self, value: Any) -> Any:
        if not isinstance(value, fx.Node):
            return None
        if value.op == "get_attr":
            tensor = _fetch_attr(self.module, str(value.target))
            return tensor if isinstance(tensor, torch.Tensor) else None
        val = value.meta.get("val")
        return val if isinstance(val, torch.Tensor) else None


def _size(size: Any) -> Size:
    if isinstance(size, torch.SymInt):
        expr = size.node.expr
        return int(expr) if expr.is_Integer else expr
    return int(size)


def _fetch_attr(module: torch.nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call argument given positionally or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def arg_path(node: fx.Node, index: int, name: str) -> tuple[int | str, ...]:
    """Where :func:`arg` found the argument, as the start of a :meth:`size_arg` path."""
    return (index,) if len(node.args) > index else (name,)


def _get_path(node: fx.Node, path: tuple[int | str, ...]) -> Any:
    head, *rest = path
    value: Any = node.args[head] if isinstance(head, int) else node.kwargs.get(head)
    for key in rest:
        value = value[key]
    return value


def _set_path(node: fx.Node, path: tuple[int | str, ...], new: Any) -> None:
    head, *rest = path

    def replace(container: Any, keys: list[int | str]) -> Any:
        if not keys:
            return new
        key, *more = keys
        items = list(container)
        items[key] = replace(items[key], more)  # type: ignore[index]
        return type(container)(items) if isinstance(container, tuple) else items

    if isinstance(head, int):
        args = list(node.args)
        args[head] = replace(args[head], rest)
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
        kwargs[head] = replace(kwargs[head], rest)
        node.kwargs = kwargs
