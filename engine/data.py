"""Datasets: what a data source is and what it yields.

A dataset source (registered through ``fxopt_register_datasets``) yields :class:`Sample`\\ s,
each with a stable key (a hash of the raw record), so that the run can keep its calibration,
fine-tune and verification splits disjoint (:mod:`fxopt.run.splits`); passes read the
batches (:func:`batches`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import DataError

if TYPE_CHECKING:
    from fxopt.run.recipe import DataSplit, Recipe

    from .config import DimRange
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


def batches(samples: list[Sample], batch_size: int) -> list[Batch]:
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        out.append({k: torch.stack([s.tensors[k] for s in chunk]) for k in chunk[0].tensors})
    return out
