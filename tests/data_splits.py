"""Data splits built from a recipe's ``[data]`` table with a fake tokenizer, for the data
and text-domain tests."""

from __future__ import annotations

import zlib

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.data import DataContext
from fxopt.engine.specs import InputSpec
from fxopt.run.recipe import parse_recipe
from fxopt.run.splits import build_splits

SPECS = [
    InputSpec("input_ids", "int64", ("batch", "sequence"), 0, 100),
    InputSpec("attention_mask", "int64", ("batch", "sequence"), 1, 2),
]
DIMS = {"batch": DimRange(min=1, max=8), "sequence": DimRange(min=2, max=16, opt=8)}


def fake_tokenize(texts, length):
    """One id per text (crc32: stable across processes, unlike hash())."""
    ids = torch.tensor([[zlib.crc32(t.encode()) % 1_000_003] * length for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def splits(host, tmp_path, data):
    recipe = parse_recipe({"data": data}, source=tmp_path / "r.toml")
    return build_splits(
        recipe,
        host.datasets,
        lambda split: DataContext(SPECS, DIMS, fake_tokenize, recipe, split),
    )
