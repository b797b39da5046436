"""``cast.fp16`` recipes from the command line, ``optimize check``, and the bad inputs of the
fp16 / TensorRT issue: each a clean message, the right exit code, no output directory."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from fxopt.plugins.tensorrt.compat import check_model
from fxopt.plugins.tensorrt.profiles import compute_profiles
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, merged, tiny_recipe_dict, write_recipe


def recipe(
    tmp_path: Path, *, cast="cast.fp16", backend="onnxruntime", sequence=32, **changes
) -> Path:
    """The tiny recipe with ``cast`` after dropout, verified at ``sequence`` tokens;
    ``changes`` are laid over it."""
    body = tiny_recipe_dict(
        backend,
        data={"verification": {"sequence_length": sequence}},
        passes=[TINY_PASSES[0], {"name": cast}],
        verify={"min_cosine": 0.999},
    )
    return write_recipe(tmp_path, merged(body, changes))


def test_fp16_recipe_runs_end_to_end_on_onnxruntime(capsys, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_cli(capsys, recipe(tmp_path), tiny_bert_dir, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["passed"]
    assert report["verify"]["metrics"]["cosine_mean"] >= 0.999
    cast = next(p for p in report["passes"] if p["name"] == "cast.fp16")
    assert cast["metrics"]["fp32_ops"]["layer_norm"] == 5
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    specs_report = check_model(model, compute_profiles_for(report))
    assert specs_report.precisions["LayerNormalization"] == {"FP32": 5}
    assert set(specs_report.precisions["MatMul"]) == {"FP16"}
    assert specs_report.casts["FP16->FP32"] >= 5


def compute_profiles_for(report: dict) -> list:
    from fxopt.engine.config import DimRange
    from fxopt.engine.specs import InputSpec

    specs = [InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in report["inputs"]]
    dims = {name: DimRange(**r) for name, r in report["dims"].items()}
    return compute_profiles(specs, dims)


def test_check_reports_a_compatible_plan(capsys, tmp_path, tiny_bert_dir):
    result = run_cli(capsys, "check", recipe(tmp_path, backend="tensorrt"), tiny_bert_dir, "--json")
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    assert plan["compatible"] is True
    assert plan["passes"] == ["cleanup.dropout", "cast.fp16"]
    assert plan["precisions"]["LayerNormalization"] == {"FP32": 5}
    assert plan["precisions"]["MatMul"] == {"FP16": 16}
    assert plan["profiles"][0]["input_ids"] == {"min": [1, 2], "opt": [4, 16], "max": [16, 64]}


def test_check_fails_when_a_profile_misses_the_verification_shapes(capsys, tmp_path, tiny_bert_dir):
    narrow = {"options": {"profiles": [{"sequence": {"min": 2, "max": 16}}]}}
    path = recipe(tmp_path, backend="tensorrt", target=narrow)
    result = run_cli(capsys, "check", path, tiny_bert_dir, "--json")
    assert result.code == 2
    (problem,) = json.loads(result.out)["problems"]
    assert problem["kind"] == "profile"
    assert problem["field"] == "model.dims.sequence"
    assert "(4, 32) is outside [1..16, 2..16]" in problem["message"]


def test_tensorrt_without_the_library_fails_before_loading(capsys, tmp_path):
    empty = tmp_path / "not-a-model"  # loading it would fail with exit 2: we must stop before
    empty.mkdir()
    out = tmp_path / "out"
    path = recipe(tmp_path, backend="tensorrt")
    result = run_cli(capsys, path, empty, "-o", out)
    assert_clean_failure(result, 4, "target.backend", "pip install 'fxopt[tensorrt]'")
    assert not out.exists()
    result = run_cli(capsys, "validate", path)
    assert_clean_failure(result, 4, "pip install 'fxopt[tensorrt]'")


def test_verification_data_outside_the_dims(capsys, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_cli(capsys, recipe(tmp_path, sequence=100), tiny_bert_dir, "-o", out)
    assert_clean_failure(
        result, 2, "model.dims.sequence", "sequence = 100", "outside the range 2..64"
    )
    assert not out.exists()


def test_min_greater_than_max(capsys, tmp_path):
    batch = {"min": 32, "opt": 32}
    path = recipe(tmp_path, backend="tensorrt", model={"dims": {"batch": batch}})
    result = run_cli(capsys, "validate", path)
    assert_clean_failure(result, 2, "model.dims.batch", "min (32) must be <= max (16)")


def test_bf16_where_the_target_cannot_run_it(capsys, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_cli(capsys, recipe(tmp_path, cast="cast.bf16"), tiny_bert_dir, "-o", out)
    assert_clean_failure(result, 4, "cast.bf16", "no bfloat16 kernels", "cast.fp16")
    assert not out.exists()


@pytest.mark.slow
def test_minilm_fp16_recipe(capsys, tmp_path):
    """The shipped recipe, as a user runs it (about 4 minutes on 2 busy cores)."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "minilm-fp16"
    result = run_cli(capsys, root / "recipes" / "minilm-fp16.toml", "-o", out, "--json")
    assert result.code == 0, result.err
    metrics = json.loads(result.out)["verify"]["metrics"]
    assert metrics["cosine_mean"] >= 0.999 and metrics["cosine_min"] >= 0.998
