"""Datasets: calibration, fine-tune and verification splits, kept apart.

A dataset source (registered through ``fxopt_register_datasets``) yields :class:`Sample`\\ s,
each with a stable key (a hash of the raw record). Splits that read the same source and file
take consecutive, disjoint slices of it (calibration first, then fine-tune, then verification),
and the keys of all splits are checked for overlap, so a model is never verified on the data it
was calibrated or trained on. The values are checked too (ids within the vocabulary, float
inputs finite: :func:`~.data_shapes.check_data_values`), before anything runs on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .data_shapes import check_data_values
from .errors import DataError
from .recipe import DataSplit, DimRange, Recipe
from .registry import Registry
from .specs import InputSpec

SPLIT_ORDER = ("calibration", "finetune", "verification")

#: one batch: input name -> tensor, plus ``labels`` when the data has them
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sample:
    key: str
    tensors: dict[str, torch.Tensor]


@dataclass
class DataContext:
    """What a dataset source needs to make model inputs."""

    inputs: list[InputSpec]
    dims: dict[str, DimRange]
    tokenize: Callable[[list[str], int], dict[str, torch.Tensor]] | None
    recipe: Recipe
    split_name: str
    #: set once ``tokenize`` ran: the split's ids come from the model's own tokenizer
    tokenized: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.tokenize is not None:
            tokenize = self.tokenize

            def recorded(texts: list[str], length: int) -> dict[str, torch.Tensor]:
                self.tokenized = True
                return tokenize(texts, length)

            self.tokenize = recorded

    @property
    def label(self) -> str:
        return self.recipe.label

    @property
    def field_prefix(self) -> str:
        return self.recipe.data.field(self.split_name)

    def path(self, split: DataSplit) -> Path:
        if split.path is None:
            raise DataError(
                "this source reads a file, but no path is given",
                file=self.label,
                field=f"{self.field_prefix}.path",
                fix='add path = "..." (relative to the recipe)',
            )
        path = self.recipe.resolve_path(split.path)
        if not path.is_file():
            raise DataError(
                f"data file not found: {path}",
                file=self.label,
                field=f"{self.field_prefix}.path",
                fix="point path at an existing file (relative paths start at the recipe)",
            )
        return path

    def sequence_length(self, split: DataSplit) -> int:
        if split.sequence_length is not None:
            return split.sequence_length
        if "sequence" in self.dims:
            return self.dims["sequence"].optimal
        return 128


class Dataset:
    """A data source. ``samples`` returns ``count`` samples starting at ``offset``."""

    name: ClassVar[str]
    reads_file: ClassVar[bool] = True

    def samples(
        self, split: DataSplit, ctx: DataContext, *, offset: int, count: int
    ) -> list[Sample]:
        raise NotImplementedError


def sample_key(raw: Any) -> str:
    data = raw if isinstance(raw, bytes) else repr(raw).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def build_splits(
    recipe: Recipe, datasets: Registry, make_ctx: Callable[[str], DataContext]
) -> dict[str, list[Batch]]:
    """Load every split the recipe declares, disjoint, batched, by its key
    (:meth:`~.recipe.DataSection.splits`: a named verification set as ``verification.<name>``)."""
    offsets: dict[tuple[str, str | None], int] = {}
    samples: dict[str, list[Sample]] = {}
    contexts: dict[str, DataContext] = {}
    declared = recipe.data.splits()
    for name, split in declared.items():
        where = recipe.data.field(name)
        source = datasets.get(split.source, file=recipe.label, field=f"{where}.source")()
        if split.batch_size > split.samples:
            raise DataError(
                f"batch_size ({split.batch_size}) is larger than samples ({split.samples})",
                file=recipe.label,
                field=f"{where}.batch_size",
                fix="lower batch_size or raise samples",
            )
        # one record list per source and file: splits take consecutive, disjoint slices
        # (sources that generate data per split, like synthetic, ignore the offset)
        group = (split.source, split.path)
        offset = offsets.get(group, 0)
        contexts[name] = ctx = make_ctx(name)
        got = source.samples(split, ctx, offset=offset, count=split.samples)
        if len(got) < split.samples:
            shared = f" after the {offset} used by earlier splits" if offset else ""
            raise DataError(
                f"only {len(got)} samples available{shared}, {split.samples} asked",
                file=recipe.label,
                field=f"{where}.samples",
                fix="lower samples, or give this split more data",
            )
        offsets[group] = offset + split.samples
        samples[name] = got
    _check_disjoint(samples, recipe)
    out = {}
    for name, got in samples.items():
        split = declared[name]
        out[name] = batches(got, split.batch_size)
        ctx = contexts[name]
        file = str(recipe.resolve_path(split.path)) if split.path else recipe.label
        where = recipe.data.field(name).removeprefix("data.")
        check_data_values(ctx.inputs, out[name], split=where, file=file, tokenized=ctx.tokenized)
    return out


def _check_disjoint(samples: dict[str, list[Sample]], recipe: Recipe) -> None:
    names = list(samples)
    for i, first in enumerate(names):
        keys = {s.key for s in samples[first]}
        for second in names[i + 1 :]:
            shared = keys & {s.key for s in samples[second]}
            if shared:
                a, b = (recipe.data.field(n).removeprefix("data.") for n in (first, second))
                raise DataError(
                    f"{len(shared)} samples appear in both the {a} and the {b} set",
                    file=recipe.label,
                    field=recipe.data.field(second),
                    fix="use different files, or remove the duplicated records",
                )


def batches(samples: list[Sample], batch_size: int) -> list[Batch]:
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        out.append({k: torch.stack([s.tensors[k] for s in chunk]) for k in chunk[0].tensors})
    return out
