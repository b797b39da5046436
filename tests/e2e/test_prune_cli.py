"""``optimize recipe.toml model_dir`` with ``prune.structured`` on a small random BERT."""

from __future__ import annotations

import json

from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, tiny_recipe_dict, write_recipe

SIZES = {"heads": 0.25, "ffn": 0.5}


def prune_recipe(tmp_path, config: dict, *, then=({"name": "cleanup.dce"},)):
    """The tiny recipe's passes, ``prune.structured`` with ``config``, then the passes ``then``."""
    prune = {"name": "prune.structured", "config": config}
    # pruning a random model moves its outputs: the budget here is about the plumbing
    recipe = tiny_recipe_dict(passes=[*TINY_PASSES, prune, *then], verify={"min_cosine": -1.0})
    return write_recipe(tmp_path, recipe)


def test_prune_writes_a_smaller_model_and_its_new_sizes(capsys, tmp_path, tiny_bert_dir):
    recipe = prune_recipe(tmp_path, SIZES)
    out = tmp_path / "out"
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    model = report["model"]
    # 2 layers; per layer 3 x (8 rows x 32 + 8) for q/k/v, 8 columns x 32 of the attention
    # output, 32 FFN neurons x (32 + 1) in and 32 columns x 32 out
    removed = 2 * (3 * (8 * 32 + 8) + 8 * 32 + 32 * 33 + 32 * 32)
    prune = next(p for p in report["passes"] if p["name"] == "prune.structured")
    assert prune["metrics"]["pruned"] == {
        "heads": "2 groups: 4 -> 3",
        "ffn": "2 groups: 64 -> 32",
    }
    assert prune["metrics"]["params_before"] - prune["metrics"]["params_after"] == removed
    assert model["params_after"] < model["params_before"]
    written = json.loads((out / "config.json").read_text())
    assert (written["num_attention_heads"], written["intermediate_size"]) == (3, 32)
    assert written["head_dim"] == 8 and written["hidden_size"] == 32
    assert report["verify"]["metrics"]["cosine_mean"] > 0.5  # ONNX Runtime ran the pruned graph
    md = (out / "report.md").read_text()
    assert "prune.structured" in md and "64 -> 32" in md


def test_ratio_of_one_is_refused_before_anything_runs(capsys, tmp_path, tiny_bert_dir):
    recipe = prune_recipe(tmp_path, {"ratio": 1.0})
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(
        result, 2, "recipe.toml: passes[2].config.ratio: input should be less than 1"
    )
    assert not (tmp_path / "out").exists()


def test_ignore_pattern_matching_nothing_fails_naming_candidates(capsys, tmp_path, tiny_bert_dir):
    recipe = prune_recipe(tmp_path, {"ffn": 0.5, "ignore": ["*.classifier"]})
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out")
    assert_clean_failure(
        result,
        2,
        "pass 'prune.structured' failed after [cleanup.dropout, cleanup.dce]",
        "ignore pattern '*.classifier' matches no group",
        "prunable groups: model.encoder.layer.0.attention.self",
    )
    assert not (tmp_path / "out").exists()


def test_config_sizes_survive_a_rerun_resumed_from_the_pass_cache(
    capsys, tmp_path, tiny_bert_dir, monkeypatch
):
    from fxopt.run import pass_cache

    monkeypatch.setattr(pass_cache, "MIN_SECONDS", 0.0)  # cache every pass's result
    recipe = prune_recipe(tmp_path, SIZES)
    first = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "a", "--json")
    assert first.code == 0, first.err
    # change only the last pass (drop it): the rerun resumes after prune.structured
    recipe = prune_recipe(tmp_path, SIZES, then=())
    second = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "b", "--json")
    assert second.code == 0, second.err
    report = json.loads(second.out)
    prune = next(p for p in report["passes"] if p["name"] == "prune.structured")
    assert prune["metrics"]["cached"] is True
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (written["num_attention_heads"], written["intermediate_size"]) == (3, 32)
