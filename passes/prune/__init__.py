"""``prune.structured``: dependency-aware channel, FFN-neuron and attention-head pruning.

The public names a plugin author needs: :class:`LayerPruner` (teach the analysis a new op,
registered through ``fxopt_register_layer_pruners``), :class:`DimRecorder` (what it writes
to), and the analysis itself, :class:`ChannelDependencies`.
"""

from __future__ import annotations

from .dims import Dim, DimRecorder
from .graph import ChannelDependencies, DependencyGraph, build_dependency_graph
from .group import Group
from .pruners import LayerPruner, PrunerTable

__all__ = [
    "ChannelDependencies",
    "DependencyGraph",
    "Dim",
    "DimRecorder",
    "Group",
    "LayerPruner",
    "PrunerTable",
    "build_dependency_graph",
]
