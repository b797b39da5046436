"""Data splits: disjoint, batched, and loud about bad files."""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np
import pytest
import torch

from fxopt.engine.config import DimRange
from fxopt.engine.data import DataContext
from fxopt.engine.errors import DataError
from fxopt.engine.specs import InputSpec
from fxopt.run.recipe import parse_recipe
from fxopt.run.splits import build_splits
from tests.data_splits import splits


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
    from fxopt.plugins.data.sources import stdlib_sentences

    sentences = stdlib_sentences()
    assert len(sentences) > 500
    assert len(set(sentences)) == len(sentences)
    assert all(s[0].isupper() and len(s) >= 40 for s in sentences)


# --- the digits source: scikit-learn's bundled 8x8 digits ----------------------------------

IMAGE = [InputSpec("x", "float32", ("batch", 1, 8, 8), 0.0, 1.0)]
IMAGE_DIMS = {"batch": DimRange(min=1, max=512)}


def image_splits(host, tmp_path, data, specs=IMAGE):
    recipe = parse_recipe({"data": data}, source=tmp_path / "r.toml")
    return build_splits(
        recipe, host.datasets, lambda split: DataContext(specs, IMAGE_DIMS, None, recipe, split)
    )


DIGITS = {
    "calibration": {"source": "digits", "samples": 256, "batch_size": 32},
    "verification": {"source": "digits", "samples": 512, "batch_size": 128},
}


def test_digits_shapes_dtypes_ranges_and_disjoint_slices(host, tmp_path):
    got = image_splits(host, tmp_path, DIGITS)
    calib, verif = got["calibration"], got["verification"]
    assert [tuple(b["x"].shape) for b in calib] == [(32, 1, 8, 8)] * 8
    assert [tuple(b["labels"].shape) for b in verif] == [(128,)] * 4
    x = torch.cat([b["x"] for b in calib + verif])
    labels = torch.cat([b["labels"] for b in calib + verif])
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # pixels 0..16, divided by 16
    assert torch.equal(torch.unique(x * 16), torch.arange(17, dtype=torch.float32))
    assert torch.equal(torch.unique(labels), torch.arange(10))
    # calibration takes [0, 256), verification the 512 after: no image in both
    first = {b.numpy().tobytes() for b in torch.cat([b["x"] for b in calib])}
    second = {b.numpy().tobytes() for b in torch.cat([b["x"] for b in verif])}
    assert not first & second


def test_digits_are_the_arrays_the_example_saves(host, tmp_path):
    """The same shuffle (seed 0) as ``digits_arrays()``, sliced as the ``npz`` source slices
    the file the example writes: both sources give identical batches."""
    from fxopt.plugins.data.sources import digits_arrays

    x, labels = digits_arrays()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and labels.dtype == np.int64
    np.savez(tmp_path / "digits.npz", x=x, labels=labels)
    from_file = {
        name: {**split, "source": "npz", "path": "digits.npz"} for name, split in DIGITS.items()
    }
    builtin, saved = image_splits(host, tmp_path, DIGITS), image_splits(host, tmp_path, from_file)
    for name in DIGITS:
        for a, b in zip(builtin[name], saved[name], strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(builtin["verification"][0]["x"], torch.from_numpy(x[256:384]))
    # deterministic: another call gives the same order
    again = image_splits(host, tmp_path, DIGITS)
    assert torch.equal(again["calibration"][3]["x"], builtin["calibration"][3]["x"])
    # the order examples/digits/digits_model.py has always written (seed 0)
    assert labels[:12].tolist() == [6, 6, 6, 2, 5, 6, 6, 2, 2, 1, 1, 9]
    assert (zlib.crc32(x.tobytes()), zlib.crc32(labels.tobytes())) == (3885614363, 1294176498)


def test_digits_has_1797_images(host, tmp_path):
    whole = image_splits(
        host, tmp_path, {"verification": {"source": "digits", "samples": 1797, "batch_size": 599}}
    )
    assert [len(b["x"]) for b in whole["verification"]] == [599] * 3
    with pytest.raises(DataError, match="only 1541 samples available after the 256 used"):
        image_splits(
            host,
            tmp_path,
            {
                "calibration": {"source": "digits", "samples": 256, "batch_size": 32},
                "verification": {"source": "digits", "samples": 1542, "batch_size": 2},
            },
        )


def test_digits_follow_the_declared_input_name_and_dtype(host, tmp_path):
    half = [InputSpec("pixels", "float16", ("batch", 1, 8, 8), 0.0, 1.0)]
    got = image_splits(host, tmp_path, {"verification": DIGITS["verification"]}, half)
    batch = got["verification"][0]
    assert set(batch) == {"pixels", "labels"} and batch["pixels"].dtype == torch.float16


def test_digits_feed_one_input(host, tmp_path):
    with pytest.raises(DataError, match=r"data\.verification\.source: .*one image input.*x, y"):
        image_splits(
            host,
            tmp_path,
            {"verification": DIGITS["verification"]},
            [*IMAGE, InputSpec("y", "float32", ("batch", 4), 0.0, 1.0)],
        )


def test_digits_without_scikit_learn(host, tmp_path, monkeypatch):
    """scikit-learn is optional (``pip install 'fxopt[digits]'``): without it the source says
    which split needs it and how to install it."""
    from fxopt.plugins.data import sources as datasets

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    datasets._digits.cache_clear()
    try:
        with pytest.raises(DataError) as caught:
            image_splits(host, tmp_path, DIGITS)
    finally:
        datasets._digits.cache_clear()
    message = caught.value.render()
    assert message.startswith("r.toml: data.calibration.source: ")
    assert "scikit-learn" in message and "pip install scikit-learn" in message


# --- the stdlib-sentences source: the distillation corpus of minilm-prune.toml ------------


def test_stdlib_sentences_are_disjoint_from_stdlib_docstrings(host, tmp_path):
    from fxopt.plugins.data.sources import split_sentences, stdlib_sentence_corpus, stdlib_sentences

    corpus = stdlib_sentence_corpus()
    assert len(corpus) >= 5216  # what recipes/minilm-prune.toml fine-tunes on
    assert len(set(corpus)) == len(corpus)
    assert all(len(s) >= 20 and s[0].isupper() for s in corpus)
    paragraphs = stdlib_sentences()
    held_out = {s for p in paragraphs for s in (p, *split_sentences(p))}
    assert not held_out & set(corpus)
    assert split_sentences("One thing. Two things! three. Four?") == [
        "One thing.",
        "Two things! three.",
        "Four?",
    ]
    got = splits(
        host,
        tmp_path,
        {
            "finetune": {"source": "stdlib-sentences", "samples": 600, "batch_size": 100},
            "verification": {"source": "stdlib-docstrings", "samples": 600, "batch_size": 100},
        },
    )
    assert [len(b["input_ids"]) for b in got["finetune"]] == [100] * 6
