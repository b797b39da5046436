"""Hostile inputs found by fault testing: each is one clear user error (exit 2), found early.

Every case names the file, the field and the fix, exits 2 (never a traceback, an internal
error or a fidelity miss blamed on [verify]), and leaves nothing at ``-o``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fxopt.engine.errors import EXIT_USAGE
from tests.cli import Result, assert_clean_failure, run_cli
from tests.conftest import TINY_RECIPE, save_bert, write_recipe

BASE = TINY_RECIPE.format(backend="onnxruntime")


def fails_cleanly(capsys, recipe: Path, model: Path, out: Path, *needles: str) -> Result:
    """Run the CLI; exit 2 with every needle in the message, found before any model ran (no
    reference run, no capture), and nothing written at ``out``."""
    result = run_cli(capsys, recipe, model, "-o", out)
    assert_clean_failure(result, EXIT_USAGE, *needles)
    assert "running reference" not in result.err and "capturing" not in result.err
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return result


def validate_fails(capsys, recipe: Path, *needles: str) -> None:
    """``optimize validate`` finds it too: the recipe alone is wrong, no model needed."""
    assert_clean_failure(run_cli(capsys, "validate", recipe), EXIT_USAGE, *needles)


def edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


# 1. config.json sizes disagree with the weights -------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        (
            {"hidden_size": 64},
            ["hidden_size", "[32]", "[64]"],
        ),
        (
            {"vocab_size": 1000},
            ["embeddings.word_embeddings.weight", "[30522, 32]", "[1000, 32]", "vocab_size"],
        ),
        (
            {"num_hidden_layers": 3},
            ["encoder.layer.2.", "missing from the weights"],
        ),
        (
            {"num_hidden_layers": 1},
            ["encoder.layer.1.", "have no place in the model"],
        ),
    ],
    ids=["hidden_size", "vocab_size", "more-layers", "fewer-layers"],
)
def test_config_disagrees_with_weights(capsys, tmp_path, model_copy, changes, needles):
    edit_config(model_copy, **changes)
    recipe = write_recipe(tmp_path, BASE)
    fails_cleanly(
        capsys,
        recipe,
        model_copy,
        tmp_path / "out",
        "config.json",
        "model.safetensors",
        "disagree",
        *needles,
        "fix: use the config.json saved with these weights",
    )


# 2. token ids outside the model's vocabulary ------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab_bert(tmp_path_factory, tiny_bert_dir) -> Path:
    """A model whose vocab_size (1000) is smaller than its tokenizer's (30522)."""
    path = tmp_path_factory.mktemp("small-vocab")
    return save_bert(
        path,
        tiny_bert_dir,
        vocab_size=1000,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )


def test_tokenizer_larger_than_model_vocab(capsys, tmp_path, small_vocab_bert):
    recipe = write_recipe(tmp_path, BASE)
    fails_cleanly(
        capsys,
        recipe,
        small_vocab_bert,
        tmp_path / "out",
        "config.json: vocab_size",
        "the model's tokenizer gives input_ids up to",
        "the model's embedding has 1000 rows",
        "data.verification",
        "fix: use the tokenizer saved with this model",
    )


@pytest.mark.parametrize(("bad", "needle"), [(40000, "up to 40000"), (-3, "down to -3")])
def test_npz_ids_outside_the_vocabulary(capsys, tmp_path, tiny_bert_dir, bad, needle):
    ids = np.arange(8 * 16).reshape(8, 16)
    ids[5, 3] = bad
    ones = np.ones((8, 16))
    np.savez(tmp_path / "ids.npz", input_ids=ids, attention_mask=ones, token_type_ids=0 * ones)
    text = BASE.replace('source = "stdlib-docstrings"', 'source = "npz"\npath = "ids.npz"')
    recipe = write_recipe(tmp_path, text)
    fails_cleanly(
        capsys,
        recipe,
        tiny_bert_dir,
        tmp_path / "out",
        "ids.npz: data.verification",
        "input_ids",
        needle,
        "30522",
        "config.json: vocab_size",
        "fix:",
    )


# 3. a corrupt sentence-transformers modules.json --------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[{"type": "Pooling", ', "not valid JSON"),
        ('{"0": "Pooling"}', "must hold a JSON list"),
        ("[1, 2]", "entry 0 must be an object with type and path"),
        ('[{"type": 7, "path": "1_Pooling"}]', "entry 0: type must be a string"),
    ],
    ids=["invalid-json", "object", "list-of-numbers", "type-not-string"],
)
def test_corrupt_modules_json(capsys, tmp_path, model_copy, text, needle):
    (model_copy / "modules.json").write_text(text)
    recipe = write_recipe(tmp_path, BASE)
    fails_cleanly(
        capsys,
        recipe,
        model_copy,
        tmp_path / "out",
        "modules.json",
        needle,
        "fix: restore modules.json",
    )


# 4. input value ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decl", "needles"),
    [
        ('dtype = "int64"\nlow = 5\nhigh = 1', ["low (5) must be below high (1)"]),
        ('dtype = "int64"\nlow = 5', ["low (5) must be below high (2, the default"]),
        ('dtype = "float32"\nlow = 1.0\nhigh = -1.0', ["low (1.0) must be at most high (-1.0)"]),
        ('dtype = "float32"\nhigh = inf', ["model.inputs.attention_mask.high", "finite"]),
        ('dtype = "float32"\nlow = nan', ["model.inputs.attention_mask.low", "finite"]),
        ('dtype = "int64"\nlow = 0.5\nhigh = 4', ["model.inputs.attention_mask.low", "whole"]),
    ],
    ids=["int-reversed", "int-default-high", "float-reversed", "inf", "nan", "int-fraction"],
)
def test_input_value_range(capsys, tmp_path, tiny_bert_dir, decl, needles):
    text = BASE + f'\n[model.inputs.attention_mask]\nshape = ["batch", "sequence"]\n{decl}\n'
    recipe = write_recipe(tmp_path, text)
    needles = ["recipe.toml: model.inputs.attention_mask", *needles, "fix:"]
    fails_cleanly(capsys, recipe, tiny_bert_dir, tmp_path / "out", *needles)
    validate_fails(capsys, recipe, *needles)


# 5. counts that drive allocation are bounded ------------------------------------------------


HUGE = 2**40


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (f"samples = {HUGE}\nbatch_size = 4", "data.calibration.samples"),
        (f"samples = 8\nbatch_size = {HUGE}", "data.calibration.batch_size"),
        (
            f"samples = 8\nbatch_size = 4\nsequence_length = {HUGE}",
            "data.calibration.sequence_length",
        ),
        (f"samples = 8\nbatch_size = 4\nseed = {HUGE}", "data.calibration.seed"),
    ],
    ids=["samples", "batch_size", "sequence_length", "seed"],
)
def test_huge_data_counts(capsys, tmp_path, tiny_bert_dir, body, field):
    split = f'\n[data.calibration]\nsource = "synthetic"\n{body}\n'
    recipe = write_recipe(tmp_path, BASE + split)
    needles = [f"recipe.toml: {field}", "at most", "fix:"]
    fails_cleanly(capsys, recipe, tiny_bert_dir, tmp_path / "out", *needles)
    validate_fails(capsys, recipe, *needles)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("max = 64", f"max = {HUGE}", "model.dims.sequence.max"),
        ("latency_iters = 2", f"latency_iters = {HUGE}", "verify.latency_iters"),
        ("pass_samples = 4", f"pass_samples = {HUGE}", "verify.pass_samples"),
    ],
    ids=["dims-max", "latency_iters", "pass_samples"],
)
def test_huge_counts(capsys, tmp_path, tiny_bert_dir, old, new, field):
    recipe = write_recipe(tmp_path, BASE.replace(old, new))
    fails_cleanly(capsys, recipe, tiny_bert_dir, tmp_path / "out", field, "at most", "fix:")
    validate_fails(capsys, recipe, field, "at most")


# 6. booleans are not numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("batch_size = 4", "batch_size = true", "data.verification.batch_size"),
        ("samples = 8", "samples = true", "data.verification.samples"),
        ("batch_size = 4", "batch_size = 4\nseed = false", "data.verification.seed"),
        ("batch_size = 4", "batch_size = 4\nsequence_length = true", "sequence_length"),
        ("min = 1\n", "min = true\n", "model.dims.batch.min"),
        ("opt = 16", "opt = true", "model.dims.sequence.opt"),
        ("min_cosine = 0.9999", "min_cosine = true", "verify.min_cosine"),
        ("latency_iters = 2", "latency_iters = true", "verify.latency_iters"),
        ("pass_samples = 4", "pass_samples = false", "verify.pass_samples"),
        ("schema_version = 1", "schema_version = true", "schema_version"),
        (
            "[target]",
            '[model.inputs.input_ids]\nshape = ["batch", true]\n\n[target]',
            "model.inputs.input_ids.shape[1]",
        ),
        (
            "[target]",
            '[model.inputs.input_ids]\nshape = ["batch", "sequence"]\nhigh = true\n\n[target]',
            "model.inputs.input_ids.high",
        ),
    ],
    ids=[
        "batch_size",
        "samples",
        "seed",
        "sequence_length",
        "dims-min",
        "dims-opt",
        "min_cosine",
        "latency_iters",
        "pass_samples",
        "schema_version",
        "shape",
        "high",
    ],
)
def test_booleans_are_not_numbers(capsys, tmp_path, tiny_bert_dir, old, new, field):
    text = BASE.replace(old, new, 1)
    assert text != BASE
    recipe = write_recipe(tmp_path, text)
    needles = [field, "a boolean", "fix: write a number"]
    fails_cleanly(capsys, recipe, tiny_bert_dir, tmp_path / "out", *needles)
    validate_fails(capsys, recipe, *needles)


# 7. an empty recipe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the recipe is empty"),
        ("# nothing yet\n\n   \n", "the recipe is empty"),
        ("schema_version = 1\n", "the recipe sets only schema_version"),
    ],
    ids=["zero-bytes", "comments-only", "schema-version-only"],
)
def test_empty_recipe(capsys, tmp_path, tiny_bert_dir, text, needle):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    needles = ["recipe.toml", needle, "fix: start from recipes/quickstart.toml"]
    fails_cleanly(capsys, recipe, tiny_bert_dir, tmp_path / "out", *needles)
    validate_fails(capsys, recipe, *needles)


# 8. non-finite weights and inputs -----------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights(capsys, tmp_path, model_copy, value):
    from safetensors.torch import load_file, save_file

    weights = model_copy / "model.safetensors"
    state = load_file(weights)
    state["encoder.layer.1.intermediate.dense.weight"][3, 7] = value
    save_file(state, weights, metadata={"format": "pt"})
    recipe = write_recipe(tmp_path, BASE)
    fails_cleanly(
        capsys,
        recipe,
        model_copy,
        tmp_path / "out",
        "model.safetensors",
        "encoder.layer.1.intermediate.dense.weight",
        "non-finite",
        "fix: re-export the weights",
    )


class Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def save_pt2(module: torch.nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module.eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


PT2_RECIPE = """
[data.verification]
source = "{source}"
{path}samples = 8
batch_size = 4

[[passes]]
name = "cleanup.dce"

[verify]
latency = false
"""


def test_non_finite_weights_in_pt2(capsys, tmp_path):
    torch.manual_seed(0)
    module = Affine()
    with torch.no_grad():
        module.proj.bias[1] = float("nan")
    model = save_pt2(module, tmp_path / "affine.pt2")
    recipe = write_recipe(tmp_path, PT2_RECIPE.format(source="synthetic", path=""))
    fails_cleanly(
        capsys, recipe, model, tmp_path / "out", "affine.pt2", "proj.bias", "non-finite", "fix:"
    )


@pytest.mark.parametrize("value", [float("nan"), float("-inf")], ids=["nan", "inf"])
def test_non_finite_data_inputs(capsys, tmp_path, value):
    torch.manual_seed(0)
    model = save_pt2(Affine(), tmp_path / "affine.pt2")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    x[6, 2] = value
    np.savez(tmp_path / "x.npz", x=x)
    recipe = write_recipe(tmp_path, PT2_RECIPE.format(source="npz", path='path = "x.npz"\n'))
    fails_cleanly(
        capsys,
        recipe,
        model,
        tmp_path / "out",
        "x.npz: data.verification",
        "'x'",
        "non-finite",
        "fix:",
    )


def test_booleans_are_not_numbers_in_pass_or_backend_config(capsys, tmp_path):
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[[passes]]\nname = "cleanup.constant_fold"\nconfig = { max_bytes = true }\n'
    )
    result = run_cli(capsys, "validate", write_recipe(tmp_path, text))
    assert_clean_failure(
        result, EXIT_USAGE, "passes[2].config.max_bytes", "not a boolean", "fix: write a number"
    )
