"""Do the data's shapes fit the ranges the graph is captured for?

``torch.export`` guards the dynamic axes with the ``[model.dims]`` ranges, ONNX Runtime and
TensorRT profiles are built from them, so a verification batch with ``sequence_length = 128``
against ``[model.dims.sequence] max = 64`` would fail deep inside the first pass (a guard
assertion) or the engine. Checked once, right after the data is loaded, it is one sentence
naming the axis and the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .errors import RecipeError
from .recipe import DimRange
from .specs import InputSpec


def check_data_shapes(
    specs: Sequence[InputSpec],
    dims: Mapping[str, DimRange],
    splits: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
    *,
    label: str,
) -> None:
    """Raise a :class:`RecipeError` for the first batch whose input shape leaves the ranges."""
    for split, batches in splits.items():
        for batch in batches:
            for spec in specs:
                if spec.name in batch:
                    _check(spec, tuple(batch[spec.name].shape), dims, split, label)


def _check(
    spec: InputSpec, shape: tuple[int, ...], dims: Mapping[str, DimRange], split: str, label: str
) -> None:
    if len(shape) != len(spec.shape):
        raise RecipeError(
            f"the {split} data gives {spec.name!r} the shape {list(shape)}, the model input "
            f"is {list(spec.shape)}",
            file=label,
            field=f"model.inputs.{spec.name}.shape",
        )
    for axis, (size, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(want, int):
            if size != want:
                raise RecipeError(
                    f"the {split} data gives {spec.name!r} size {size} on axis {axis}, fixed "
                    f"at {want} in the model input",
                    file=label,
                    field=f"model.inputs.{spec.name}.shape",
                    fix=f"make the data fit, or declare axis {axis} as a named dynamic axis",
                )
            continue
        limits = dims.get(want)
        if limits is not None and not limits.min <= size <= limits.max:
            raise RecipeError(
                f"the {split} data has {want} = {size} ({spec.name!r} {list(shape)}), outside "
                f"the range {limits.min}..{limits.max} the model is captured for",
                file=label,
                field=f"model.dims.{want}",
                fix=f"widen [model.dims.{want}] to include {size}, or change data.{split} "
                "(batch_size, sequence_length)",
            )
