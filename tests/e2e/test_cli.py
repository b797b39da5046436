"""The CLI's commands and modes on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from fxopt.engine.errors import EXIT_BUDGET
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import tiny_recipe_dict, write_recipe


def test_json_mode_prints_only_the_report(capsys, tiny_recipe, tiny_bert_dir, tmp_path):
    result = run_cli(capsys, tiny_recipe, tiny_bert_dir, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["passed"] and report["task"] == "feature-extraction"
    assert report["artifacts"]["backend"] == "onnxruntime"
    assert set(report["latency_ms"]) == {"shape", "reference", "optimized", "speedup_p50"}
    assert result.err == ""


def test_quiet_mode_prints_nothing(capsys, tiny_recipe, tiny_bert_dir, tmp_path):
    # ``optimize run RECIPE`` is ``optimize RECIPE``, the form every other test uses
    result = run_cli(capsys, "run", tiny_recipe, tiny_bert_dir, "-o", tmp_path / "out", "-q")
    assert (result.code, result.out, result.err) == (0, "", "")


def test_budget_miss_exits_3_and_writes_nothing(capsys, tmp_path, tiny_bert_dir):
    recipe = write_recipe(tmp_path, tiny_recipe_dict(verify={"max_abs": 0.0}))
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(
        result,
        EXIT_BUDGET,
        "fidelity budget missed: max_abs =",
        "bound max_abs = 0.0",
        "costliest step:",
    )
    assert not (tmp_path / "out").exists()
    rejected = json.loads((tmp_path / "out.rejected" / "report.json").read_text())
    assert rejected["passed"] is False
    assert rejected["verify"]["budget"][1]["field"] == "max_abs"


def test_validate(capsys, tiny_recipe, tmp_path):
    result = run_cli(capsys, "validate", tiny_recipe)
    assert result.code == 0
    assert "ok (cleanup.dropout, cleanup.dce → onnxruntime)" in result.out + result.err


def test_passes_lists_origins(capsys):
    result = run_cli(capsys, "passes", "--json")
    listing = json.loads(result.out)
    passes = {p["name"]: p["origin"] for p in listing["passes"]}
    assert passes["cleanup.dce"].startswith("fxopt") and "[builtin-passes]" in passes["cleanup.dce"]
    assert {b["name"] for b in listing["backends"]} >= {"onnxruntime", "torch"}


def test_schema_command(capsys):
    result = run_cli(capsys, "schema")
    assert json.loads(result.out)["properties"]["schema_version"]["const"] == 1


def test_dump_ir(capsys, tiny_recipe, tiny_bert_dir, tmp_path):
    result = run_cli(
        capsys,
        tiny_recipe,
        tiny_bert_dir,
        "-o",
        tmp_path / "out",
        "-q",
        "--dump-ir",
        tmp_path / "ir",
    )
    assert result.code == 0
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "00-captured.py",
        "01-cleanup.dropout.py",
        "02-cleanup.dce.py",
    ]


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def cnn_pt2(tmp_path):
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        SmallCNN().eval(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: batch},)
    )
    path = tmp_path / "cnn.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_pt2_archive_end_to_end(capsys, tmp_path, cnn_pt2, backend):
    recipe = write_recipe(
        tmp_path,
        {
            "model": {"task": "image-classification"},
            "data": {"verification": {"source": "synthetic", "samples": 16, "batch_size": 8}},
            "passes": [{"name": "cleanup.dce"}],
            "target": {"backend": backend},
            "verify": {"min_cosine": 0.99999, "min_top1_agreement": 1.0, "latency_iters": 2},
        },
    )
    result = run_cli(capsys, recipe, cnn_pt2, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["inputs"][0]["shape"][1:] == [1, 8, 8]
    assert report["verify"]["metrics"]["top1_agreement"] == 1.0
    assert report["model"]["params_after"] == 4 * 9 + 4 + 256 * 10 + 10
    expected = "model.pt2" if backend == "torch" else "model.ort.onnx"
    assert (tmp_path / "out" / expected).is_file()


def test_pt2_corrupt_archive(capsys, tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    recipe = write_recipe(tmp_path, {"model": {"task": "image-classification"}})
    result = run_cli(capsys, recipe, bad, "-o", tmp_path / "out")
    assert_clean_failure(result, 2, "bad.pt2", "not a readable torch.export archive")
