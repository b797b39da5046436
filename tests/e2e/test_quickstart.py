"""The quickstart on the real all-MiniLM-L6-v2, from the command line, as a user runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "out"
    from fxopt.cli.app import main

    code = main([str(ROOT / "recipes" / "quickstart.toml"), "-o", str(out), "-q"])
    return code, out


def test_quickstart_passes_with_exact_fidelity(quickstart):
    code, out = quickstart
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    metrics = report["verify"]["metrics"]
    assert metrics["samples"] == 64
    assert metrics["cosine_mean"] >= 0.9999
    assert metrics["cosine_min"] >= 0.999
    assert [p["name"] for p in report["passes"]] == [
        "cleanup.dropout",
        "cleanup.constant_fold",
        "cleanup.dce",
    ]
    assert report["passes"][0]["metrics"] == {"removed": 13}
    assert all(p["numerics"]["cosine_mean"] > 0.99999 for p in report["passes"])
    model = report["model"]
    assert model["params_before"] > 22_000_000
    # 6 layers x 6 Linear; the pooler's Linear feeds nothing the embedding uses: DCE drops it
    assert model["ops_after"]["aten.linear.default"] == 36
    assert model["params_before"] - model["params_after"] == 384 * 384 + 384
    latency = report["latency_ms"]
    assert latency["reference"]["p50"] > 0 and latency["optimized"]["p95"] > 0
    assert report["seconds"]["total"] < 120


def test_quickstart_writes_every_artifact_and_a_true_manifest(quickstart):
    _, out = quickstart
    names = {p.name for p in out.iterdir()}
    assert {
        "model.onnx",
        "model.onnx.data",
        "model.ort.onnx",
        "report.json",
        "report.md",
        "manifest.json",
        "config.json",
        "tokenizer.json",
    } <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["path"].endswith("quickstart.toml")
    assert any(m["path"].endswith("model.safetensors") for m in manifest["model"])
    for name, digest in manifest["outputs"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert {"torch", "onnx", "onnxruntime", "fxopt"} <= set(manifest["versions"])
    assert "# fxopt report: PASSED" in (out / "report.md").read_text()
    assert not list(out.parent.glob(".out.*"))  # no staging directory left


def test_bench_times_the_artifact_next_to_the_original(quickstart, capsys):
    _, out = quickstart
    result = run_cli(
        capsys, "bench", out, "--iters", "3", "--warmup", "1", "--batch", "2", "--json"
    )
    assert result.code == 0, result.err
    bench = json.loads(result.out)
    assert bench["shape"]["input_ids"] == [2, 128]
    assert bench["optimized"]["iters"] == 3
    assert bench["speedup_p50"] == pytest.approx(
        bench["reference"]["p50"] / bench["optimized"]["p50"], rel=1e-2
    )
