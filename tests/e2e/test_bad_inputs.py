"""Every bad input the engine handles: a clear message, exit != 0, no traceback, nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fxopt.engine.errors import EXIT_INTERRUPTED, EXIT_USAGE
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_RECIPE, write_recipe


def leftovers(directory: Path) -> list[str]:
    """Anything a failed run left next to its output (temp dirs included)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith((".out", "out")))


def test_malformed_toml(capsys, tmp_path, tiny_bert_dir):
    recipe = write_recipe(tmp_path, "schema_version = 1\n[model\n")
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "recipe.toml", "not valid TOML", "line 2")
    assert leftovers(tmp_path) == []


def test_unknown_key_lists_the_allowed_ones(capsys, tmp_path, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime") + "\n[verify2]\n")
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "recipe.toml: verify2: unknown key", "allowed keys")


def test_unknown_nested_key(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime").replace("min_cosine =", "min_cosin =")
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir)
    assert_clean_failure(
        result, EXIT_USAGE, "verify.min_cosin: unknown key", "min_cosine", "max_abs"
    )


def test_unknown_pass_suggests_the_closest(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime").replace('"cleanup.dce"', '"cleanup.dc"')
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir)
    assert_clean_failure(
        result,
        EXIT_USAGE,
        "passes[1].name",
        "unknown pass 'cleanup.dc'",
        "did you mean 'cleanup.dce'",
    )


def test_wrong_type(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime").replace("samples = 8", 'samples = "many"')
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir)
    assert_clean_failure(result, EXIT_USAGE, "data.verification.samples", "got 'many'")


def test_pass_config_error_names_the_pass_index(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[[passes]]\nname = "cleanup.constant_fold"\nconfig = { max_bytes = -1 }\n'
    )
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir)
    assert_clean_failure(result, EXIT_USAGE, "recipe.toml: passes[2].config.max_bytes", "(got -1)")


def test_dim_range_min_above_max(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime").replace("min = 1\n", "min = 32\n", 1)
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir)
    assert_clean_failure(result, EXIT_USAGE, "model.dims.batch", "min (32) must be <= max (16)")


def test_missing_model_dir(capsys, tiny_recipe, tmp_path):
    result = run_cli(capsys, tiny_recipe, tmp_path / "nope", "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "nope", "model path not found")
    assert not (tmp_path / "out").exists()


def test_model_dir_without_config(capsys, tiny_recipe, model_copy, tmp_path):
    (model_copy / "config.json").unlink()
    result = run_cli(capsys, tiny_recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "config.json is missing", "save_pretrained")


def test_model_dir_without_weights(capsys, tiny_recipe, model_copy, tmp_path):
    (model_copy / "model.safetensors").unlink()
    result = run_cli(capsys, tiny_recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "no weights found", "safe_serialization")


def test_truncated_safetensors(capsys, tiny_recipe, model_copy, tmp_path):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    result = run_cli(capsys, tiny_recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(
        result, EXIT_USAGE, "model.safetensors", "corrupt or truncated safetensors", "re-download"
    )
    assert not (tmp_path / "out").exists()


def test_pickle_checkpoint_refused_unless_allowed(capsys, tiny_recipe, model_copy, tmp_path):
    from safetensors.torch import load_file

    state = load_file(model_copy / "model.safetensors")
    (model_copy / "model.safetensors").unlink()
    torch.save(state, model_copy / "pytorch_model.bin")
    result = run_cli(capsys, tiny_recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "pytorch_model.bin", "--allow-pickle")

    allowed = run_cli(capsys, tiny_recipe, model_copy, "-o", tmp_path / "out", "--allow-pickle")
    assert allowed.code == 0, allowed.err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["passed"] is True


REMOTE_MODEL = """
import torch
from transformers import PretrainedConfig, PreTrainedModel


class BranchyConfig(PretrainedConfig):
    model_type = "branchy"


class BranchyModel(PreTrainedModel):
    config_class = BranchyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(4, 4)
        self.post_init()

    def forward(self, pixel_values, return_dict=True):
        if pixel_values.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return {"logits": self.proj(pixel_values.flatten(1)[:, :4])}
        return {"logits": -self.proj(pixel_values.flatten(1)[:, :4])}
"""


@pytest.fixture
def remote_code_model(tmp_path):
    path = tmp_path / "remote"
    path.mkdir()
    (path / "modeling_branchy.py").write_text(REMOTE_MODEL)
    config = {
        "architectures": ["BranchyModel"],
        "model_type": "branchy",
        "auto_map": {
            "AutoConfig": "modeling_branchy.BranchyConfig",
            "AutoModelForImageClassification": "modeling_branchy.BranchyModel",
        },
        "image_size": 2,
        "num_channels": 1,
    }
    (path / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(
        {"proj.weight": torch.zeros(4, 4), "proj.bias": torch.zeros(4)}, path / "model.safetensors"
    )
    return path


def test_remote_code_refused_unless_trusted(capsys, tmp_path, remote_code_model):
    recipe = write_recipe(
        tmp_path,
        """
        [model]
        task = "image-classification"
        [data.verification]
        source = "synthetic"
        samples = 4
        batch_size = 2
        """,
    )
    result = run_cli(capsys, recipe, remote_code_model, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "config.json: auto_map", "--trust-remote-code")


def test_uncapturable_model_names_the_line(capsys, tmp_path, remote_code_model):
    recipe = write_recipe(
        tmp_path,
        """
        [model]
        task = "image-classification"
        [data.verification]
        source = "synthetic"
        samples = 4
        batch_size = 2
        """,
    )
    result = run_cli(
        capsys, recipe, remote_code_model, "-o", tmp_path / "out", "--trust-remote-code"
    )
    assert_clean_failure(
        result,
        EXIT_USAGE,
        "torch.export could not capture the model",
        "modeling_branchy.py",
        "docs/capture.md",
    )
    assert not (tmp_path / "out").exists()


def test_output_exists_needs_force(capsys, tiny_recipe, tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(capsys, tiny_recipe, tiny_bert_dir, "-o", out)
    assert_clean_failure(result, EXIT_USAGE, "output directory already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"

    # --force replaces only an earlier fxopt output, never a folder of the user's own
    forced = run_cli(capsys, tiny_recipe, tiny_bert_dir, "-o", out, "--force")
    assert_clean_failure(forced, EXIT_USAGE, "has no manifest.json", "keep.txt")
    assert (out / "keep.txt").read_text() == "mine"


def test_empty_calibration_file(capsys, tmp_path, tiny_bert_dir):
    (tmp_path / "calib.txt").write_text("\n\n")
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[data.calibration]\nsource = "text"\npath = "calib.txt"\nsamples = 4\nbatch_size = 2\n'
    )
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "data.calibration.path", "source is empty")
    assert not (tmp_path / "out").exists()


def test_missing_data_file(capsys, tmp_path, tiny_bert_dir):
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[data.calibration]\nsource = "text"\npath = "nowhere.txt"\nsamples = 4\nbatch_size = 2\n'
    )
    result = run_cli(capsys, write_recipe(tmp_path, text), tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_USAGE, "data.calibration.path", "nowhere.txt")


def test_ctrl_c_leaves_nothing_behind(capsys, monkeypatch, tiny_recipe, tiny_bert_dir, tmp_path):
    from fxopt.plugins.onnxruntime import backend as ort_backend

    def interrupted(self, ir, out_dir):
        (out_dir / "model.onnx").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ort_backend.OnnxRuntimeBackend, "lower", interrupted)
    result = run_cli(capsys, tiny_recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(result, EXIT_INTERRUPTED, "interrupted")
    assert leftovers(tmp_path) == []
