"""Named verification sets, ``[data.verification.<name>]``: each verified against the budget
and reported side by side, a miss on any one fails the run and names the set; bad tables are
clean errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fxopt.engine.errors import EXIT_BUDGET, EXIT_USAGE
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, tiny_recipe_dict, write_recipe
from tests.entry_points import with_entry_points

TWO_SETS = {
    "docstrings": {"source": "stdlib-docstrings", "samples": 8, "batch_size": 4},
    "words": {"source": "text", "path": "words.txt", "samples": 8, "batch_size": 4},
}


def sets_recipe(tmp_path, verification=None, **changes):
    """The tiny recipe verified on ``verification`` (two named sets unless given)."""
    (tmp_path / "words.txt").write_text(
        "\n".join(f"A zebra crossed the road number {i}." for i in range(8)) + "\n"
    )
    body = tiny_recipe_dict(**changes)
    body["data"] = {"verification": TWO_SETS if verification is None else verification}
    return write_recipe(tmp_path, body)


def test_every_set_is_verified_and_reported_side_by_side(capsys, tmp_path, tiny_bert_dir):
    out = tmp_path / "out"
    result = run_cli(capsys, sets_recipe(tmp_path), tiny_bert_dir, "-o", out, "--json")
    assert result.code == 0, result.err
    verify = json.loads(result.out)["verify"]
    assert list(verify["sets"]) == ["docstrings", "words"]
    assert verify["passed"] and all(s["passed"] for s in verify["sets"].values())
    assert verify["sets"]["words"]["source"] == "text"
    # the primary set is the first: the top-level figures are its own
    assert verify["metrics"] == verify["sets"]["docstrings"]["metrics"]
    assert verify["budget"] == verify["sets"]["docstrings"]["budget"]
    assert verify["sets"]["words"]["metrics"]["samples"] == 8
    md = (out / "report.md").read_text()
    assert "| metric | bound | docstrings | words |" in md
    assert "`words` (text, passed)" in md


def test_one_unnamed_set_reports_as_before(capsys, tmp_path, tiny_recipe, tiny_bert_dir):
    result = run_cli(capsys, tiny_recipe, tiny_bert_dir, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    assert list(json.loads(result.out)["verify"]) == [
        "metrics",
        "budget",
        "passed",
        "costliest_step",
    ]


def only_word(model_dir, word: str) -> None:
    """Zero every word embedding but ``word``'s (made large): a change to the embeddings
    (``thirdparty.count`` negates them) then moves the sentences with that word, and no other."""
    from transformers import AutoTokenizer

    token = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(word)
    path = model_dir / "model.safetensors"
    weights = load_file(path)
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    table = torch.zeros_like(weights[name])
    table[token] = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(0))
    weights[name] = table
    save_file(weights, path, metadata={"format": "pt"})


def test_a_miss_on_the_second_set_alone_fails_the_run(capsys, monkeypatch, tmp_path, model_copy):
    with_entry_points(monkeypatch, counting="tests.fixtures.plugins.counting")
    only_word(model_copy, "zebra")  # in every sentence of the second set, none of the first
    negate = {"name": "thirdparty.count", "config": {"factor": -1.0}}
    recipe = sets_recipe(tmp_path, passes=[*TINY_PASSES, negate], verify={"min_cosine": 0.999})
    result = run_cli(capsys, recipe, model_copy, "-o", tmp_path / "out")
    assert_clean_failure(
        result, EXIT_BUDGET, "fidelity budget missed: on words: cosine_mean", "min_cosine = 0.999"
    )
    assert "on docstrings:" not in result.err
    assert "the primary set, docstrings, held" in " ".join(result.err.split())
    assert not (tmp_path / "out").exists()
    verify = json.loads((tmp_path / "out.rejected" / "report.json").read_text())["verify"]
    assert (verify["passed"], verify["sets"]["docstrings"]["passed"]) == (False, True)
    assert verify["sets"]["docstrings"]["metrics"]["cosine_min"] > 0.9999
    assert verify["sets"]["words"]["passed"] is False
    assert all(line["passed"] for line in verify["budget"])  # the primary set held


BAD_TABLES = [
    ({}, "data.verification", "names no verification set", "[data.verification.docstrings]"),
    (
        {"docstrings": TWO_SETS["docstrings"], "2nd": TWO_SETS["docstrings"]},
        "data.verification",
        "'2nd' is not a plain identifier",
        "letters, digits and underscores",
    ),
    (
        {"docstrings": TWO_SETS["docstrings"], "other": {"source": "stdlib-docstring"}},
        "data.verification.other.source",
        "unknown dataset source 'stdlib-docstring'",
        "`optimize passes` lists every registered dataset source",
    ),
    (
        {"docstrings": TWO_SETS["docstrings"], "other": {"source": "text", "path": "no.txt"}},
        "data.verification.other.path",
        "data file not found",
        "point path at an existing file",
    ),
    (
        {"docstrings": TWO_SETS["docstrings"], "other": {"sorce": "text"}},
        "data.verification.other.source",
        "required key is missing",
        "allowed keys: source, path",
    ),
]


@pytest.mark.parametrize(("table", "field", "message", "fix"), BAD_TABLES)
def test_bad_set_tables_are_clean_errors(
    capsys, tmp_path, tiny_bert_dir, table, field, message, fix
):
    recipe = sets_recipe(tmp_path, table)
    for args in (["validate", recipe], [recipe, tiny_bert_dir, "-o", tmp_path / "out"]):
        result = run_cli(capsys, *args)
        assert_clean_failure(result, EXIT_USAGE, f"recipe.toml: {field}", message, fix)
    assert not (tmp_path / "out").exists()
