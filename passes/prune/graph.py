"""The channel-dependency analysis: which parameter slices must be pruned together.

Walks the live part of the graph (what the outputs depend on), asks each node's layer pruner
how its axes are coupled, and solves the relations into index spaces and groups. Model inputs
and outputs keep their sizes, except axes the model's own sizes decide (a KV cache's heads,
``ModelMeta.model_axes``), which follow the channels they carry. An op no pruner knows makes
every concrete axis it touches unsafe, so the groups through it are left alone and reported
rather than pruned on a guess.

    >>> deps = ir.analysis(ChannelDependencies)          # doctest: +SKIP
    >>> [(g.kind, g.name, g.size) for g in deps.prunable]  # doctest: +SKIP
    [('heads', 'model.encoder.layer.0.attention', 12),
     ('ffn', 'model.encoder.layer.0.intermediate.dense', 1536), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from fxopt.engine.analysis import Analysis

from .dims import DimRecorder, Rewrite
from .group import Group, make_groups
from .pruners import PrunerTable, installed_pruners, op_name
from .spaces import Spaces, solve

#: call_module nodes torch.export adds that only check the inputs
GUARD_MODULES = ("_guards_fn",)


@dataclass
class DependencyGraph:
    """The solved spaces, the groups over them and the constants to rewrite."""

    spaces: Spaces
    groups: list[Group]
    rewrites: list[Rewrite]

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def unproven(self) -> list[Group]:
        """Groups left alone because a coupling could not be shown safe (not by design)."""
        return [g for g in self.groups if g.unsafe and not g.fixed and g.kind != "other"]

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


def build_dependency_graph(
    module: fx.GraphModule,
    table: PrunerTable,
    model_axes: tuple[dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]] = ({}, {}),
) -> DependencyGraph:
    """Analyse ``module``'s graph with the layer pruners in ``table``.

    ``model_axes``: by position, the axes of inputs and of outputs that the model's own
    sizes decide (a KV cache's key/value heads), which follow the channels they index
    instead of keeping their size.
    """
    dims = DimRecorder(module)
    free_inputs, free_outputs = model_axes
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for node in live_nodes(module.graph):
        if node.op == "placeholder":
            free = free_inputs.get(placeholders.index(node), ())
            for dim in dims.axes(node):
                if dim.axis not in free:
                    dims.fixed(dim, "model input")
        elif node.op == "output":
            for position, value in enumerate(_flatten(node.args)):
                free = free_outputs.get(position, ())
                for dim in dims.axes(value):
                    if dim.axis not in free:
                        dims.fixed(dim, "model output")
        elif node.op == "get_attr":
            dims.axes(node)
        elif node.op == "call_function":
            pruner = table.lookup(node.target)
            if pruner is None:
                dims.unknown(node, f"no layer pruner for {op_name(node.target)}")
            else:
                pruner.relate(node, dims)
        elif not (node.op == "call_module" and node.target in GUARD_MODULES):
            dims.unknown(node, f"{node.op} {node.target} is opaque to the analysis")
    relations = dims.relations
    spaces = solve(relations)
    producers = {d for d, tags in relations.tags.items() if "producer" in tags}
    return DependencyGraph(spaces, make_groups(spaces, producers), relations.rewrites)


def live_nodes(graph: fx.Graph) -> list[fx.Node]:
    """Nodes the outputs depend on, plus impure ones (asserts), in graph order."""
    roots = [n for n in graph.nodes if n.op == "output" or _impure(n)]
    live: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(node.all_input_nodes)
    return [n for n in graph.nodes if n in live]


def _impure(node: fx.Node) -> bool:
    if node.op in ("placeholder", "output", "get_attr"):
        return False
    try:
        return node.is_impure()
    except Exception:
        return False


def _flatten(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, fx.Node):
        yield value


class ChannelDependencies(Analysis):
    """The :class:`DependencyGraph` of an IR, with every installed layer pruner (or the
    pruners of one plugin host: ``ir.analysis(ChannelDependencies.using(table))``)."""

    name = "prune.channel-dependencies"
    table: ClassVar[PrunerTable | None] = None

    def compute(self, ir) -> DependencyGraph:
        axes = ir.meta.model_axes
        model_axes = tuple(
            {i: axes[name] for i, name in enumerate(names) if name in axes}
            for names in (ir.input_names, ir.output_names)
        )
        with torch.no_grad():
            return build_dependency_graph(
                ir.module,
                self.table or installed_pruners(),
                model_axes,  # type: ignore[arg-type]
            )

    @classmethod
    def using(cls, table: PrunerTable | None) -> type[ChannelDependencies]:
        return type(cls.__name__, (cls,), {"table": table})
