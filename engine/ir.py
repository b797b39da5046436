"""``ModelIR``: the graph every pass reads and rewrites.

It is the ``torch.fx.GraphModule`` that ``torch.export.export(...).module()`` returns (ATen ops,
parameters as attributes), together with what lowering and verification need to re-export and
run it: the input specs, example inputs, the dynamic-shape spec, output names and the source
model's metadata. Analyses computed over it are cached here and dropped by the pass manager
when a pass does not declare them preserved.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import fx

from .analysis import Analysis
from .specs import InputSpec

A = TypeVar("A", bound=Analysis)

#: passes record node metadata under keys with this prefix (``"fxopt.qparams"``)
META_PREFIX = "fxopt."


def placeholder_name(input_name: str) -> str:
    """An input's name as a graph placeholder, which must be a Python identifier."""
    return re.sub(r"\W", "_", input_name)


@dataclass
class ModelMeta:
    """What is known about the source model, independent of the graph."""

    task: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    loader: str = ""
    #: inputs and outputs whose listed axes the model's own sizes decide (a KV cache's
    #: key/value heads): a pass may change them with the model, see
    #: :meth:`ModelIR.resize_inputs`
    model_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class ModelIR:
    module: fx.GraphModule
    inputs: list[InputSpec]
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...] | None
    output_names: list[str]
    meta: ModelMeta
    _analyses: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def graph(self) -> fx.Graph:
        return self.module.graph

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def placeholder_names(self) -> list[str]:
        """The graph's placeholders: the input names as Python identifiers
        (``past_key_values.0.key`` is ``past_key_values_0_key`` in the graph)."""
        return [placeholder_name(name) for name in self.input_names]

    def resize_inputs(self, sizes: dict[str, dict[int, int]]) -> None:
        """Give inputs' model-sized axes new sizes (``{input: {axis: size}}``): the specs
        lowering names and verification feeds, and the example inputs re-export traces with
        (cut to the new size, which is never larger: their values never matter)."""
        specs, examples = [], []
        for spec, example in zip(self.inputs, self.example_inputs, strict=True):
            new = sizes.get(spec.name, {})
            if any(axis not in self.meta.model_axes.get(spec.name, ()) for axis in new):
                raise ValueError(f"{spec.name}: only model-sized axes may change")
            shape = list(spec.shape)
            for axis, size in new.items():
                shape[axis] = size
                example = example.narrow(axis, 0, size).contiguous()  # only ever smaller
            specs.append(dataclasses.replace(spec, shape=tuple(shape)))
            examples.append(example)
        self.inputs, self.example_inputs = specs, tuple(examples)

    def graph_input_sizes(self) -> dict[str, dict[int, int]]:
        """The sizes the graph's placeholders have on the model-sized axes (a graph read
        back from the pass cache tells what a pass made of them)."""
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        out: dict[str, dict[int, int]] = {}
        for spec, node in zip(self.inputs, placeholders, strict=True):
            value = node.meta.get("val")
            axes = self.meta.model_axes.get(spec.name, ())
            if value is not None and axes:
                out[spec.name] = {axis: int(value.shape[axis]) for axis in axes}
        return out

    def analysis(self, kind: type[A]) -> Any:
        """The result of analysis ``kind`` on the current graph, computed once and cached."""
        if kind.name not in self._analyses:
            self._analyses[kind.name] = kind().compute(self)
        return self._analyses[kind.name]

    def cached_analyses(self) -> set[str]:
        return set(self._analyses)

    def invalidate(self, preserved: Iterable[str] | None = None) -> None:
        """Drop every cached analysis not named in ``preserved``."""
        keep = set(preserved or ())
        if "*" in keep:
            return
        self._analyses = {k: v for k, v in self._analyses.items() if k in keep}

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run the graph on named inputs; always returns a list of output tensors."""
        with torch.no_grad():
            out = self.module(*(feeds[name] for name in self.input_names))
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def byte_size(self) -> int:
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def ops(self) -> dict[str, int]:
        """How many nodes call each operator, e.g. ``{"aten.linear.default": 37}``."""
        counts: dict[str, int] = {}
        for node in self.graph.nodes:
            if node.op == "call_function":
                key = str(node.target)
                counts[key] = counts.get(key, 0) + 1
        return counts
