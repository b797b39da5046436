"""Do the data's shapes fit the ranges the graph is captured for, and its values the model?

``torch.export`` guards the dynamic axes with the ``[model.dims]`` ranges, ONNX Runtime and
TensorRT profiles are built from them, so a verification batch with ``sequence_length = 128``
against ``[model.dims.sequence] max = 64`` would fail deep inside the first pass (a guard
assertion) or the engine. Checked once, right after the data is loaded, it is one sentence
naming the axis and the split.

The values too (:func:`check_data_values`): a token id at or past the vocabulary fails as an
index error in the embedding of the reference run, a NaN input makes every output NaN and the
run ends in a fidelity miss; checked when the data is built, each is one sentence naming the
split, the file and the limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.errors import DataError, ModelError, RecipeError
from fxopt.engine.specs import IndexRange, InputSpec, axis_parts


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
        if limits is None and len(parts := axis_parts(want)) > 1 and all(p in dims for p in parts):
            # a sum of axes: its range is the sum of theirs
            low, high = sum(dims[p].min for p in parts), sum(dims[p].max for p in parts)
            limits = DimRange(min=max(low, 1), max=high)
        if limits is not None and not limits.min <= size <= limits.max:
            raise RecipeError(
                f"the {split} data has {want} = {size} ({spec.name!r} {list(shape)}), outside "
                f"the range {limits.min}..{limits.max} the model is captured for",
                file=label,
                field=f"model.dims.{want}",
                fix=f"widen [model.dims.{want}] to include {size}, or change data.{split} "
                "(batch_size, sequence_length)",
            )


def check_data_values(
    specs: Sequence[InputSpec],
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    split: str,
    file: str,
    tokenized: bool,
) -> None:
    """Raise for ids outside an input's :class:`IndexRange` or non-finite float inputs.

    ``file`` is the data file of the split (or the recipe, for generated data); ``tokenized``:
    the ids come from the model's own tokenizer, so ids past the vocabulary are the model's
    fault (its tokenizer and ``config.json`` disagree), not the data's.
    """
    for spec in specs:
        tensors = [b[spec.name] for b in batches if spec.name in b and b[spec.name].numel()]
        if not tensors:
            continue
        if tensors[0].is_floating_point():
            _check_finite(spec, tensors, split, file)
        elif spec.index is not None and tensors[0].dtype != torch.bool:
            low = min(int(t.min()) for t in tensors)
            high = max(int(t.max()) for t in tensors)
            if low < 0 or high >= spec.index.size:
                raise _outside(spec, spec.index, low, high, split, file, tokenized)


def _check_finite(spec: InputSpec, tensors: list[torch.Tensor], split: str, file: str) -> None:
    bad, first, seen = 0, None, 0
    for tensor in tensors:
        finite = torch.isfinite(tensor).reshape(len(tensor), -1).all(dim=1)
        if first is None and not bool(finite.all()):
            first = seen + int((~finite).nonzero()[0, 0])
        bad += int((~torch.isfinite(tensor)).sum())
        seen += len(tensor)
    if bad:
        raise DataError(
            f"{spec.name!r} holds {bad} non-finite value(s) (NaN or inf), the first in sample "
            f"{first} of the split; every output on it would be NaN",
            file=file,
            field=f"data.{split}",
            fix="repair or drop those samples: model inputs must be finite numbers",
        )


def _outside(
    spec: InputSpec, index: IndexRange, low: int, high: int, split: str, file: str, tokenized: bool
) -> Exception:
    extreme = f"up to {high}" if high >= index.size else f"down to {low}"
    if tokenized:
        return ModelError(
            f"the model's tokenizer gives {spec.name} {extreme} on the data.{split} set, but "
            f"the model's embedding has {index.size} rows ({index.field} = {index.size}): the "
            "tokenizer and config.json disagree",
            file=index.file,
            field=index.field,
            fix="use the tokenizer saved with this model, or a config.json (and weights) whose "
            f"{index.field} covers the tokenizer's vocabulary (this data needs {high + 1})",
        )
    return DataError(
        f"{spec.name!r} holds ids {extreme}, but the model's embedding has {index.size} rows "
        f"({index.file}: {index.field})",
        file=file,
        field=f"data.{split}",
        fix=f"{spec.name} must lie in [0, {index.size}): make the data with this model's tokenizer",
    )
