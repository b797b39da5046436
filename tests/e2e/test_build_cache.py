"""The build cache: no-op reruns, rebuilds on any input change, per-pass reuse, depfiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fxopt.run import pass_cache
from tests.cli import run_cli
from tests.conftest import COUNTING, TINY_RECIPE, write_recipe
from tests.entry_points import with_entry_points
from tests.fixtures.plugins import counting


def build(capsys, recipe, model, out, *extra):
    result = run_cli(capsys, recipe, model, "-o", out, "--json", *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)


def snapshot(directory):
    """Modification times of the outputs (the manifest is touched on purpose, for make)."""
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.name != "manifest.json"}


def test_rerun_is_a_no_op_and_any_change_rebuilds(capsys, tmp_path, cache_dir, model_copy):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    first = build(capsys, recipe, model_copy, out)
    assert "cache" not in first
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["build_key"]) == 64
    before = snapshot(out)

    touched = (out / "manifest.json").stat().st_mtime_ns
    again = build(capsys, recipe, model_copy, out)
    assert again["cache"] == "up-to-date"
    assert snapshot(out) == before  # not a single file rewritten
    assert (out / "manifest.json").stat().st_mtime_ns > touched

    # the recipe changes: a new key, so the old output is stale and --force rebuilds it
    recipe.write_text(recipe.read_text().replace("latency_iters = 2", "latency_iters = 3"))
    rebuilt = build(capsys, recipe, model_copy, out, "--force")
    assert "cache" not in rebuilt
    new_key = json.loads((out / "manifest.json").read_text())["build_key"]
    assert new_key != manifest["build_key"]

    # a model file changes (same size, different bytes): rebuild again
    config = model_copy / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    assert "cache" not in build(capsys, recipe, model_copy, out, "--force")
    assert json.loads((out / "manifest.json").read_text())["build_key"] != new_key


def test_deleted_output_is_restored_from_the_cache(capsys, tmp_path, cache_dir, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    first = build(capsys, recipe, tiny_bert_dir, out)
    onnx_bytes = (out / "model.onnx").read_bytes()
    import shutil

    shutil.rmtree(out)
    restored = build(capsys, recipe, tiny_bert_dir, out)
    assert restored["cache"] == "restored"
    assert restored["verify"] == first["verify"]
    assert (out / "model.onnx").read_bytes() == onnx_bytes


def test_damaged_cache_entry_is_rebuilt_with_a_warning(capsys, tmp_path, cache_dir, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, out)
    (entry,) = (cache_dir / "outputs").iterdir()
    import shutil

    shutil.rmtree(out)
    (entry / "report.md").write_text("tampered")  # the output is a copy: only the cache changes
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", out)
    assert result.code == 0
    message = " ".join(result.err.split())
    assert "is damaged (report.md does not match its recorded sha256); rebuilding" in message
    assert (out / "report.md").read_text().startswith("# fxopt report")


def test_changing_the_last_pass_reuses_the_earlier_ones(
    capsys, monkeypatch, tmp_path, cache_dir, tiny_bert_dir
):
    monkeypatch.setattr(pass_cache, "MIN_SECONDS", 0.0)
    with_entry_points(monkeypatch, counting="tests.fixtures.plugins.counting")
    counting.RUNS.clear()
    body = TINY_RECIPE.format(backend="onnxruntime") + COUNTING
    recipe = write_recipe(tmp_path, body.format(max_bytes=1000000))
    build(capsys, recipe, tiny_bert_dir, tmp_path / "a")
    assert counting.RUNS == ["thirdparty.count"]

    recipe.write_text(body.format(max_bytes=2000000))
    report = build(capsys, recipe, tiny_bert_dir, tmp_path / "b")
    assert counting.RUNS == ["thirdparty.count"]  # not run again
    by_name = {p["name"]: p for p in report["passes"]}
    assert by_name["thirdparty.count"]["metrics"]["cached"] is True
    assert "cached" not in by_name["cleanup.constant_fold"]["metrics"]
    assert report["verify"]["passed"]


def test_no_cache_always_builds(capsys, tmp_path, cache_dir, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, out, "--no-cache")
    again = build(capsys, recipe, tiny_bert_dir, out, "--no-cache", "--force")
    assert "cache" not in again
    assert not cache_dir.exists()


def test_depfile_lists_every_input(capsys, tmp_path, cache_dir, tiny_bert_dir):
    (tmp_path / "calib.txt").write_text("\n".join(f"line {i} of calibration" for i in range(8)))
    text = TINY_RECIPE.format(backend="onnxruntime") + (
        '\n[data.calibration]\nsource = "text"\npath = "calib.txt"\nsamples = 4\nbatch_size = 2\n'
    )
    recipe = write_recipe(tmp_path, text)
    out = tmp_path / "out"
    build(capsys, recipe, tiny_bert_dir, out, "--depfile", tmp_path / "out.d")
    text = (tmp_path / "out.d").read_text()
    target, deps = text.split(":", 1)
    assert target == str((out / "manifest.json").resolve())
    for needed in ("recipe.toml", "calib.txt", "model.safetensors", "config.json", "vocab.txt"):
        assert needed in deps


def test_cache_info_and_clear(capsys, tmp_path, cache_dir, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    build(capsys, recipe, tiny_bert_dir, tmp_path / "out")
    info = json.loads(run_cli(capsys, "cache", "info", "--json").out)
    assert info["outputs"] == 1 and info["bytes"] > 0
    assert run_cli(capsys, "cache", "clear").code == 0
    assert json.loads(run_cli(capsys, "cache", "info", "--json").out)["outputs"] == 0


@pytest.mark.slow
def test_concurrent_builds_of_one_target_do_the_work_once(tmp_path, tiny_bert_dir):
    recipe = write_recipe(tmp_path, TINY_RECIPE.format(backend="onnxruntime"))
    env = {**os.environ, "FXOPT_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "fxopt.cli.app",
        str(recipe),
        str(tiny_bert_dir),
        "-o",
        str(tmp_path / "out"),
        "--json",
    ]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r.get("cache", "built") for r in reports) == ["built", "up-to-date"]
