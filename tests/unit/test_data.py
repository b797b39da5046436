"""Data splits: disjoint, batched, and loud about bad files."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from fxopt.engine.data import DataContext, build_splits
from fxopt.engine.errors import DataError
from fxopt.engine.recipe import DimRange, parse_recipe
from fxopt.engine.specs import InputSpec

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


def test_same_file_gives_disjoint_slices(host, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"sentence {i}" for i in range(10)))
    got = splits(
        host,
        tmp_path,
        {
            "calibration": {"source": "text", "path": "t.txt", "samples": 4, "batch_size": 2},
            "verification": {"source": "text", "path": "t.txt", "samples": 6, "batch_size": 4},
        },
    )
    assert [len(b["input_ids"]) for b in got["calibration"]] == [2, 2]
    assert [len(b["input_ids"]) for b in got["verification"]] == [4, 2]
    calib = {tuple(r.tolist()) for b in got["calibration"] for r in b["input_ids"]}
    verif = {tuple(r.tolist()) for b in got["verification"] for r in b["input_ids"]}
    assert not calib & verif


def test_not_enough_samples_for_both(host, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(f"s{i}" for i in range(6)))
    with pytest.raises(DataError, match="only 2 samples available after the 4 used"):
        splits(
            host,
            tmp_path,
            {
                "calibration": {"source": "text", "path": "t.txt", "samples": 4, "batch_size": 2},
                "verification": {"source": "text", "path": "t.txt", "samples": 6, "batch_size": 2},
            },
        )


def test_overlap_between_files_is_refused(host, tmp_path):
    (tmp_path / "a.txt").write_text("same line\nother a\n")
    (tmp_path / "b.txt").write_text("same line\nother b\n")
    with pytest.raises(DataError, match="1 samples appear in both the calibration and"):
        splits(
            host,
            tmp_path,
            {
                "calibration": {"source": "text", "path": "a.txt", "samples": 2, "batch_size": 1},
                "verification": {"source": "text", "path": "b.txt", "samples": 2, "batch_size": 1},
            },
        )


def test_batch_larger_than_samples(host, tmp_path):
    with pytest.raises(DataError, match=r"batch_size \(8\) is larger than samples \(4\)"):
        splits(host, tmp_path, {"calibration": {"source": "synthetic", "samples": 4}})


def test_jsonl_with_labels_and_missing_field(host, tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(4)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    got = splits(
        host,
        tmp_path,
        {
            "finetune": {
                "source": "jsonl",
                "path": "d.jsonl",
                "samples": 4,
                "batch_size": 4,
                "label_field": "label",
            }
        },
    )
    assert got["finetune"][0]["labels"].tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="line 1: no field 'sentence'"):
        splits(
            host,
            tmp_path,
            {
                "finetune": {
                    "source": "jsonl",
                    "path": "d.jsonl",
                    "samples": 4,
                    "batch_size": 4,
                    "field": "sentence",
                }
            },
        )


def test_npz_arrays(host, tmp_path):
    np.savez(
        tmp_path / "d.npz",
        input_ids=np.arange(40).reshape(5, 8),
        attention_mask=np.ones((5, 8)),
        labels=np.arange(5),
    )
    got = splits(
        host,
        tmp_path,
        {"calibration": {"source": "npz", "path": "d.npz", "samples": 5, "batch_size": 5}},
    )
    batch = got["calibration"][0]
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"][1, 0] == 8
    assert batch["labels"].tolist() == [0, 1, 2, 3, 4]


def test_npz_missing_input(host, tmp_path):
    np.savez(tmp_path / "d.npz", input_ids=np.zeros((2, 8)))
    with pytest.raises(DataError, match="no array for input.* attention_mask"):
        splits(
            host,
            tmp_path,
            {"calibration": {"source": "npz", "path": "d.npz", "samples": 2, "batch_size": 2}},
        )


def test_synthetic_splits_differ(host, tmp_path):
    got = splits(
        host,
        tmp_path,
        {
            "calibration": {"source": "synthetic", "samples": 4, "batch_size": 4},
            "verification": {"source": "synthetic", "samples": 4, "batch_size": 4},
        },
    )
    a, b = got["calibration"][0]["input_ids"], got["verification"][0]["input_ids"]
    assert a.shape == (4, 8) and not torch.equal(a, b)
    assert int(a.max()) < 100


def test_stdlib_docstrings_are_real_sentences():
    from fxopt.plugins.datasets import stdlib_sentences

    sentences = stdlib_sentences()
    assert len(sentences) > 500
    assert len(set(sentences)) == len(sentences)
    assert all(s[0].isupper() and len(s) >= 40 for s in sentences)
