"""The rewrite: new, smaller parameter tensors and updated shape constants, then re-export.

Every parameter (and buffer: BatchNorm running statistics) sliced along a space that shrinks
is replaced by a new tensor holding only the kept indices; tied parameters stay tied. Every
size constant the layer pruners recorded (view and expand shapes, ``normalized_shape``, a
split's sizes, a depthwise conv's groups) gets its new value. The graph is then exported again
with the recipe's dynamic axes (inputs whose model-sized axes shrank, a KV cache's heads, traced at
their new sizes): that re-derives every node's shape metadata for later passes
and proves the pruned graph valid for every batch and sequence size the recipe allows
(an export that had to specialize a dynamic axis fails).
"""

from __future__ import annotations

import torch
from torch import fx

from fxopt.engine.ir import ModelIR

from .dims import Dim
from .graph import GUARD_MODULES, DependencyGraph


def prune_in_place(module: fx.GraphModule, deps: DependencyGraph, keep: dict) -> None:
    """Slice parameters and rewrite constants so ``module`` keeps ``keep[group id]``."""
    spaces = deps.spaces
    cache: dict[int, object] = {}

    def kept(space_id: int):
        if space_id not in cache:
            indices = spaces.keep(space_id, keep)
            size = spaces[space_id].size
            cache[space_id] = None if indices is None or len(indices) == size else indices
        return cache[space_id]

    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for space in spaces:
        for dim in space.attr_dims:
            indices = kept(space.id)
            if indices is not None:
                cuts.setdefault(dim.attr, []).append((dim.axis, torch.as_tensor(indices)))
    aliases = _aliases(module)
    for attr, ops in cuts.items():
        tensor = _fetch(module, attr)
        new = tensor.detach()
        for axis, indices in ops:
            new = new.index_select(axis, indices)
        new = new.contiguous().clone()
        for name in aliases.get(id(tensor), [attr]):
            _assign(module, name, new)
    for rewrite in deps.rewrites:
        space_ids = [spaces.of_dim[d] for d in rewrite.dims]
        if any(kept(s) is not None for s in space_ids):
            sizes = [
                len(k) if (k := kept(s)) is not None else int(spaces[s].size) for s in space_ids
            ]
            rewrite.apply(rewrite.node, sizes)
    module.recompile()


def model_input_sizes(ir: ModelIR, deps: DependencyGraph, keep: dict) -> dict[str, dict[int, int]]:
    """The new sizes of the inputs' model-sized axes (a KV cache's heads), from the channels
    each axis indexes; re-export then traces inputs of those sizes."""
    out: dict[str, dict[int, int]] = {}
    for name, placeholder in zip(ir.input_names, ir.placeholder_names, strict=True):
        for axis in ir.meta.model_axes.get(name, ()):
            space_id = deps.spaces.of_dim.get(Dim(placeholder, axis))
            kept = None if space_id is None else deps.spaces.keep(space_id, keep)
            if kept is not None:
                out.setdefault(name, {})[axis] = len(kept)
    return out


def reexport(ir: ModelIR) -> fx.GraphModule:
    """Export the rewritten module again with the IR's dynamic shapes.

    The input checks the previous export left (``_guards_fn``) go first: they hold the old
    sizes of the inputs that shrank, and the new export writes its own."""
    guards = [n for n in ir.graph.nodes if n.op == "call_module" and n.target in GUARD_MODULES]
    for node in guards:
        ir.graph.erase_node(node)
    if guards:
        ir.module.recompile()
    program = torch.export.export(
        ir.module, ir.example_inputs, dynamic_shapes=ir.dynamic_shapes, strict=False
    )
    module = program.module()
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    if [n.name for n in placeholders] != ir.placeholder_names:
        for node, name in zip(placeholders, ir.placeholder_names, strict=True):
            node.name = node.target = name
        module.recompile()
    return module


def _aliases(module: torch.nn.Module) -> dict[int, list[str]]:
    """Tensor identity → every attribute name it is reachable under (tied weights)."""
    names: dict[int, list[str]] = {}
    for node in module.graph.nodes:
        if node.op == "get_attr":
            tensor = _fetch(module, str(node.target))
            if isinstance(tensor, torch.Tensor):
                names.setdefault(id(tensor), [])
                if str(node.target) not in names[id(tensor)]:
                    names[id(tensor)].append(str(node.target))
    return names


def _fetch(module: torch.nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _assign(module: torch.nn.Module, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    old = getattr(owner, name)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, name, torch.nn.Parameter(value, requires_grad=old.requires_grad))
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)
