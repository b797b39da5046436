"""Input specs: names, dtypes and shapes with named dynamic axes.

One spec serves capture (``torch.export.Dim`` per named axis), synthetic data, lowering
(ONNX dim names) and the TensorRT-style min/opt/max profiles, so the three never disagree.

An axis may be the sum of named axes, written ``"past_sequence+sequence"``: a language
model's attention mask covers the cached tokens and the new ones. It has no range of its
own; its size follows from its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DimRange

TORCH_DTYPES = {
    "int64": torch.int64,
    "int32": torch.int32,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class IndexRange:
    """The values an id input may hold: ``[0, size)``, the rows of the table it indexes.

    ``file`` and ``field`` say where ``size`` comes from (``config.json``, ``vocab_size``), so
    data that leaves the range is reported against both the data and the model.
    """

    size: int
    file: str
    field: str


@dataclass(frozen=True)
class InputSpec:
    """A model input. ``shape`` mixes fixed sizes and names of dynamic axes.

    ``low`` and ``high`` are the range synthetic data is drawn from; ``index``, when set, is
    the range every real value must lie in (token ids: the vocabulary), checked on the data.
    """

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    low: float | None = None
    high: float | None = None
    index: IndexRange | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(axis_size(d, sizes) if isinstance(d, str) else d for d in self.shape)


def axis_parts(axis: str) -> list[str]:
    """The named axes an axis is made of: itself, or the terms of a sum (``"a+b"``)."""
    return [part.strip() for part in axis.split("+")]


def axis_size(axis: str, sizes: dict[str, int]) -> int:
    return sum(sizes[part] for part in axis_parts(axis))


def dim_names(specs: list[InputSpec]) -> list[str]:
    """The named axes that need a range: every axis, and every term of a sum of axes."""
    names: list[str] = []
    for spec in specs:
        for axis in spec.dynamic_axes.values():
            names += [part for part in axis_parts(axis) if part not in names]
    return names


def export_dynamic_shapes(
    specs: list[InputSpec], dims: dict[str, DimRange]
) -> tuple[dict[int, torch.export.Dim], ...] | None:
    """The ``dynamic_shapes`` argument of ``torch.export.export``, positional like the inputs."""
    made = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in dims.items()}
    for spec in specs:  # a sum of axes: a dim of its own whose range is the sum of the ranges
        for axis in spec.dynamic_axes.values():
            parts = axis_parts(axis)
            if len(parts) > 1 and axis not in made and all(p in dims for p in parts):
                made[axis] = torch.export.Dim(
                    "_plus_".join(parts),
                    min=max(1, sum(dims[p].min for p in parts)),
                    max=sum(dims[p].max for p in parts),
                )
    shapes = tuple(
        {axis: made[dim] for axis, dim in spec.dynamic_axes.items() if dim in made}
        for spec in specs
    )
    return shapes if any(shapes) else None


def example_sizes(dims: dict[str, DimRange]) -> dict[str, int]:
    """Sizes to trace with: the optimal size, but never 0 or 1, which export would specialize."""
    return {name: max(r.optimal, min(2, r.max)) for name, r in dims.items()}


def conform(batch: dict[str, torch.Tensor], specs: list[InputSpec]) -> dict[str, torch.Tensor]:
    """``batch`` fed to a graph whose inputs are ``specs``, where a pass changed the fixed
    sizes of an input (pruned key/value heads change a language model's cache): an empty
    input (text data's cache, the prompt pass) takes the graph's sizes; a filled one made
    for a larger graph is cut to them (a synthetic cache keeps its first heads, random
    values either way). Every other input is fed as it is."""
    out = dict(batch)
    for spec in specs:
        tensor = batch.get(spec.name)
        if tensor is None or tensor.dim() != len(spec.shape):
            continue
        fixed = {axis: size for axis, size in enumerate(spec.shape) if isinstance(size, int)}
        if all(tensor.shape[axis] == size for axis, size in fixed.items()):
            continue
        if tensor.numel() == 0:
            shape = [fixed.get(axis, n) for axis, n in enumerate(tensor.shape)]
            out[spec.name] = tensor.new_zeros(shape)
            continue
        for axis, size in fixed.items():
            if size < tensor.shape[axis]:
                tensor = tensor.narrow(axis, 0, size)
        out[spec.name] = tensor.contiguous()
    return out
