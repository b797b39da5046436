"""The report is a typed model: every run's report.json validates against it, its schema is
committed, and a report that is not fxopt's is one clean error where it is read back."""

from __future__ import annotations

import json
from pathlib import Path

from fxopt.engine.errors import EXIT_USAGE
from fxopt.report.model import RunReport, report_schema
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_RECIPE, write_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_schema_file_is_current():
    committed = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    assert committed == report_schema(), (
        "regenerate: python -c 'import json; from fxopt.report.model import "
        "report_schema; print(json.dumps(report_schema(), indent=2))' > docs/report.schema.json"
    )


def test_a_run_writes_a_report_the_model_reads_and_bench_refuses_a_foreign_one(
    capsys, tmp_path, tiny_bert_dir
):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", out, "-q")
    assert result.code == 0, result.err
    report = RunReport.model_validate_json((out / "report.json").read_text())
    assert report.passed and report.task == "feature-extraction"
    assert report.verify.metrics["cosine_mean"] > 0.9999
    assert report.artifacts.path == "model.ort.onnx"
    assert report.artifacts.deploy == ["model.ort.onnx", "model.onnx.data"]
    assert report.latency_ms is not None and report.latency_ms.reference.iters == 2

    data = json.loads((out / "report.json").read_text())
    gone = dict(data, model_path=str(tmp_path / "moved-away"))
    (out / "report.json").write_text(json.dumps(gone))
    result = run_cli(capsys, "bench", out, "--iters", "1")
    assert_clean_failure(result, EXIT_USAGE, "the source model is gone", "moved-away")

    del data["target"]
    (out / "report.json").write_text(json.dumps(data))
    result = run_cli(capsys, "bench", out, "--iters", "1")
    assert_clean_failure(result, EXIT_USAGE, "report.json is not an fxopt report", "target")
