"""``optimize search`` end to end on a small random BERT: candidates, drops, the winner,
an interrupt and ``--resume``, and a search nothing survives."""

from __future__ import annotations

import json

import pytest

from fxopt.run.toml_compat import tomllib
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import TINY_PASSES, tiny_recipe_dict, write_recipe

#: ffn 0.05 moves the outputs by rel-L2 ~0.002, ffn 0.9 by ~0.011: a bound of 0.005 drops
#: the second at its prune pass (nothing after it can recover), before it is lowered
SPACE = {
    "passes.prune.structured.ffn": [0.05, 0.9],
    "passes.cleanup.constant_fold.max_bytes": [1024, 4096],
}


def search_recipe(tmp_path, *, max_rel_l2: float = 0.005, **search: object):
    passes = [
        *TINY_PASSES,
        {"name": "prune.structured", "config": {"ffn": 0.05}},
        {"name": "cleanup.constant_fold"},
    ]
    recipe = tiny_recipe_dict(
        passes=passes,
        verify={"min_cosine": 0.9, "max_rel_l2": max_rel_l2},
        search={"space": SPACE, **search},
    )
    # two verification sets: a candidate must meet the budget on both
    docstrings = recipe["data"]["verification"]
    reference = {**docstrings, "source": "python-reference"}
    recipe["data"]["verification"] = {"docstrings": docstrings, "reference": reference}
    return write_recipe(tmp_path, recipe)


def test_search_finds_the_winner_drops_and_skips_and_resumes_after_an_interrupt(
    capsys, tmp_path, tiny_bert_dir, monkeypatch
):
    from fxopt.search import driver

    # every qualifying candidate is a finalist, however the tiny model's timings scatter
    recipe = search_recipe(tmp_path, final_margin=1.0)
    out = tmp_path / "search"
    real = driver.evaluate
    calls = []

    def interrupted_second(candidate, *args):
        calls.append(candidate.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(candidate, *args)

    monkeypatch.setattr(driver, "evaluate", interrupted_second)
    first = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert first.code == 130, first.err
    assert "the finished candidates are kept" in first.err and "--resume" in first.err
    kept = json.loads((out / "search.json").read_text())
    assert [c["id"] for c in kept["candidates"]] == ["c1"]
    assert not kept["finished"]

    monkeypatch.setattr(driver, "evaluate", real)
    again = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert_clean_failure(again, 2, "holds an earlier search", "--resume")

    second = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out, "--resume", "--json")
    assert second.code == 0, second.err
    state = json.loads(second.out)
    assert state == json.loads((out / "search.json").read_text())
    by_id = {c["id"]: c for c in state["candidates"]}
    assert [c["status"] for c in state["candidates"]] == ["passed", "passed", "dropped", "skipped"]
    # c3 stopped at its prune pass, over the rel-L2 bound, and was never lowered
    assert by_id["c3"]["message"] == "passes[2] prune.structured"
    assert "rel_l2" in by_id["c3"]["misses"][0]
    assert not (out / "candidates" / "c3").exists()
    assert "c3" in by_id["c4"]["message"]
    assert state["finished"] and state["winner"] in ("c1", "c2")
    winner = by_id[state["winner"]]
    assert winner["latency_ms"] > 0 and winner["cosine_mean"] > 0.9
    assert set(winner["sets"]) == {"docstrings", "reference"}
    weakest = min(s["cosine_mean"] for s in winner["sets"].values())
    assert winner["cosine_mean"] == weakest
    assert winner["size_from"] == "artifact" and winner["size_bytes"] > 0
    assert set(state["frontier"]) <= {"c1", "c2"}
    # the winner: a normal output directory and the recipe that makes it
    report = json.loads((out / "winner" / "report.json").read_text())
    assert report["passed"]
    concrete = tomllib.loads((out / "winner.toml").read_text())
    assert "search" not in concrete
    passes = {p["name"]: p.get("config", {}) for p in concrete["passes"]}
    assert passes["prune.structured"]["ffn"] == winner["values"]["passes.prune.structured.ffn"]
    markdown = (out / "search.md").read_text()
    assert "| c3 |" in markdown and "dropped" in markdown and "frontier.svg" in markdown
    svg = (out / "frontier.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<circle") >= 3  # 2 timed dots + the ring
    # the final round timed the two qualifying candidates side by side with the original
    assert sorted(state["final"]["finalists"]) == ["c1", "c2"]
    for c in (by_id["c1"], by_id["c2"]):
        assert c["final_ms"] > 0 and c["final_reference_ms"] > 0
    assert "timed side by side" in markdown

    # a finished search resumed with another ranking re-ranks without running anything again
    search_recipe(tmp_path, objective="size")
    reranked = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out, "--resume", "--json")
    assert reranked.code == 0, reranked.err
    assert "running" not in reranked.err and "candidate c1 " not in reranked.err
    ranked = json.loads(reranked.out)
    assert ranked["objective"] == "size" and ranked["final"] is None  # no round to rank sizes

    def measured(candidates):
        return [{k: v for k, v in c.items() if not k.startswith("final")} for c in candidates]

    assert measured(ranked["candidates"]) == measured(state["candidates"])
    passed = [c for c in state["candidates"] if c["status"] == "passed"]
    smallest = min(passed, key=lambda c: (c["size_bytes"], -c["cosine_mean"]))
    assert ranked["winner"] == smallest["id"]
    assert json.loads((out / "winner" / "report.json").read_text())["passed"]

    # the recipe changed: its results would not compare with the earlier ones
    search_recipe(tmp_path, max_rel_l2=0.004)
    changed = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out, "--resume")
    assert_clean_failure(changed, 2, "changed since the search", "--force")


def test_no_candidate_within_the_budget_exits_3_and_still_writes_the_table(
    capsys, tmp_path, tiny_bert_dir
):
    recipe = search_recipe(tmp_path, max_rel_l2=1e-9)
    out = tmp_path / "search"
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert_clean_failure(result, 3, "no candidate met the budget", "closest: c1")
    state = json.loads((out / "search.json").read_text())
    statuses = [c["status"] for c in state["candidates"]]
    assert statuses == ["dropped", "skipped", "dropped", "skipped"]
    assert state["winner"] is None and state["closest"] == "c1"
    assert not (out / "winner").exists() and not (out / "winner.toml").exists()
    assert "no candidate met the budget" in (out / "search.md").read_text()


@pytest.mark.parametrize(
    ("search", "needles"),
    [
        (
            {"space": {"passes.prune.structured.fnn": [0.1]}},
            ["pass 'prune.structured' has no config key 'fnn'; did you mean 'ffn'?", "ratio"],
        ),
        (
            {"space": {"passes.quantize.int8.observer": ["mse"]}},
            ["names no pass of the recipe", "prune.structured"],
        ),
        ({"space": {"verify.min_cosine": [0.9]}}, ["names no value a search can vary"]),
        (
            {"space": {"passes[9].ffn": [0.1]}},
            ["passes[9] does not exist", "use an index from 0 to 3"],
        ),
        (
            {"space": {"passes.prune.structured.ffn": [0.1, 1.5]}},
            ["the candidate passes.prune.structured.ffn = 1.5", "less than 1"],
        ),
        (
            {"space": {"passes.prune.structured.ffn": [0.1, 0.2, 0.3]}, "max_candidates": 2},
            ["makes 3 candidates, more than the limit of 2", "--max-candidates 3"],
        ),
        ({"space": {"passes.prune.structured.ffn": []}}, ["lists no values"]),
        (
            {"space": {"target": ["torch"]}},
            ["the values of 'target' are whole [target] tables, not 'torch'", "backend ="],
        ),
        (
            {"space": {"target": [{"backend": "torch"}], "target.backend": ["onnxruntime"]}},
            ["'target' (whole tables) and 'target.backend' both set the [target] table"],
        ),
        (
            {
                "space": {
                    "target": [{"backend": "torch", "options": {"graph_optimization_level": 1}}]
                }
            },
            ['the candidate target = {backend = "torch", options = ', "graph_optimization_level"],
        ),
        (
            {"space": {"passes.prune.structured.ffn": [0.1]}, "finalists": 1},
            ["search.finalists", "one finalist has nothing to be timed against", "0"],
        ),
    ],
)
def test_bad_search_spaces_are_refused_before_any_work(
    capsys, tmp_path, tiny_bert_dir, search, needles
):
    passes = [*TINY_PASSES, {"name": "prune.structured", "config": {"ffn": 0.05}}]
    passes.append({"name": "cleanup.constant_fold"})
    recipe = write_recipe(tmp_path, tiny_recipe_dict(passes=passes, search=search))
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", tmp_path / "s")
    assert_clean_failure(result, 2, "recipe.toml", *needles)
    assert not (tmp_path / "s").exists()


def test_max_candidates_flag_allows_a_larger_space(capsys, tmp_path, tiny_bert_dir):
    recipe = search_recipe(tmp_path, max_candidates=2)
    refused = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", tmp_path / "s")
    assert_clean_failure(refused, 2, "more than the limit of 2")
    # allowed, it gets as far as the output check: an existing foreign directory is refused
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("keep me")
    allowed = run_cli(
        capsys, "search", recipe, tiny_bert_dir, "-o", tmp_path / "s", "--max-candidates", "4"
    )
    assert_clean_failure(allowed, 2, "not a search directory fxopt wrote")
    assert (tmp_path / "s" / "mine.txt").read_text() == "keep me"
    forced = run_cli(
        capsys,
        "search",
        recipe,
        tiny_bert_dir,
        "-o",
        tmp_path / "s",
        "--max-candidates",
        "4",
        "--force",
    )
    assert_clean_failure(forced, 2, "not a search directory fxopt wrote")
    assert (tmp_path / "s" / "mine.txt").read_text() == "keep me"


def test_a_recipe_without_a_search_table_is_refused(capsys, tmp_path, tiny_bert_dir):
    recipe = write_recipe(tmp_path, tiny_recipe_dict())
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", tmp_path / "s")
    assert_clean_failure(result, 2, "recipe.toml", "no [search] table", "[search.space]")


def test_a_plain_run_ignores_the_search_table(capsys, tmp_path, tiny_bert_dir):
    recipe = search_recipe(tmp_path)
    result = run_cli(capsys, recipe, tiny_bert_dir, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    assert "search" not in json.loads(result.out)["target"]


def test_validate_checks_the_search_space_too(capsys, tmp_path):
    recipe = search_recipe(tmp_path)
    result = run_cli(capsys, "validate", recipe)
    assert result.code == 0, result.err
    assert "search space: 4 candidates" in result.err
    bad = search_recipe(tmp_path, space={"passes.prune.structured.ffn": [2.0]})
    assert_clean_failure(run_cli(capsys, "validate", bad), 2, "ffn = 2.0", "less than 1")


def test_whole_target_tables_search_the_lowerings(capsys, tmp_path, tiny_bert_dir, monkeypatch):
    """Each backend with options of its own: the candidates bind, run and are ranked, the
    second lowering reuses the passes the first computed, and the winner's recipe holds the
    whole table it was built with."""
    from fxopt.run import pass_cache

    monkeypatch.setattr(pass_cache, "MIN_SECONDS", 0.0)  # cache every pass's result
    targets = [
        {"backend": "onnxruntime", "options": {"graph_optimization_level": "extended"}},
        {"backend": "torch", "options": {"onnx": False}},
    ]
    recipe = search_recipe(tmp_path, space={"target": targets})
    out = tmp_path / "search"
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert result.code == 0, result.err
    assert 'target = {backend = "torch", options = {onnx = false}}' in result.err
    state = json.loads((out / "search.json").read_text())
    assert [c["values"]["target"] for c in state["candidates"]] == targets
    assert [c["status"] for c in state["candidates"]] == ["passed", "passed"]
    first, second = state["candidates"]
    assert first["cached_passes"] == 0 and second["cached_passes"] >= 2, state["candidates"]
    for candidate, target in zip(state["candidates"], targets, strict=True):
        report = json.loads((out / "candidates" / candidate["id"] / "report.json").read_text())
        assert report["target"]["backend"] == target["backend"]
    winner = next(c for c in state["candidates"] if c["id"] == state["winner"])
    concrete = tomllib.loads((out / "winner.toml").read_text())
    assert concrete["target"] == winner["values"]["target"]
    assert "backend = " in (out / "search.md").read_text()


def test_a_prefix_dropped_under_one_lowering_skips_the_other(capsys, tmp_path, tiny_bert_dir):
    """No pass of the recipe reads the target: the pruning that missed the budget under ONNX
    Runtime misses it under torch too, so that candidate is skipped, not run again."""
    targets = [{"backend": "onnxruntime"}, {"backend": "torch", "options": {"onnx": False}}]
    recipe = search_recipe(tmp_path, max_rel_l2=1e-9, space={"target": targets})
    out = tmp_path / "search"
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert_clean_failure(result, 3, "no candidate met the budget")
    state = json.loads((out / "search.json").read_text())
    assert [c["status"] for c in state["candidates"]] == ["dropped", "skipped"]
    assert "c1" in state["candidates"][1]["message"]


def test_the_final_round_ranks_the_winner(capsys, tmp_path, tiny_bert_dir, monkeypatch):
    """The candidates' own timings say c1 is the faster; timed side by side, c2 is: the
    winner is c2, and the table shows both timings."""
    from fxopt.search import finalists

    seen = {}

    def side_by_side(calls, **kwargs):
        seen.update(names=list(calls), **kwargs)
        for call in calls.values():
            call()  # each loaded artifact and the original model really run
        medians = {"original": 9.0, "c1": 3.0, "c2": 2.0}
        return {name: {"p50": medians[name], "first_s": 0.0} for name in calls}

    monkeypatch.setattr(finalists, "time_interleaved", side_by_side)
    monkeypatch.setattr(finalists, "pick", lambda outcomes, count, margin: outcomes[:2])
    recipe = search_recipe(tmp_path, space={"passes.cleanup.constant_fold.max_bytes": [64, 4096]})
    out = tmp_path / "search"
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", out)
    assert result.code == 0, result.err
    state = json.loads((out / "search.json").read_text())
    assert seen["names"] == ["original", "c1", "c2"] and seen["iters"] == 1
    assert state["final"]["finalists"] == ["c1", "c2"]
    assert state["winner"] == "c2"
    by_id = {c["id"]: c for c in state["candidates"]}
    assert by_id["c2"]["final_ms"] == 2.0 and by_id["c2"]["final_reference_ms"] == 9.0
    assert "final round: c2 2.00 ms, 4.50x eager" in result.err
    assert "| 2.00 (4.50× eager) |" in (out / "search.md").read_text()
    assert json.loads((out / "winner" / "report.json").read_text())["passed"]


@pytest.mark.parametrize(
    ("where", "failure", "said"),
    [
        ("load_source", "gone", "the source model is gone"),
        ("time_interleaved", "crash", "RuntimeError: the session refused the batch"),
    ],
)
def test_a_final_round_that_cannot_run_leaves_the_ranking_to_each_run(
    capsys, tmp_path, tiny_bert_dir, monkeypatch, where, failure, said
):
    """The model moved away before the round, or a backend failed on its batch: the search
    still ends with its winner, ranked on each candidate's own timing, and says why."""
    from fxopt.engine.errors import OutputError
    from fxopt.search import finalists

    def fail(*args, **kwargs):
        if failure == "gone":
            raise OutputError("the source model is gone", file=tiny_bert_dir, fix="re-run")
        raise RuntimeError("the session refused the batch")

    monkeypatch.setattr(finalists, where, fail)
    monkeypatch.setattr(finalists, "pick", lambda outcomes, count, margin: outcomes[:2])
    recipe = search_recipe(tmp_path, space={"passes.cleanup.constant_fold.max_bytes": [64, 4096]})
    result = run_cli(capsys, "search", recipe, tiny_bert_dir, "-o", tmp_path / "s")
    assert result.code == 0, result.err
    assert "final round skipped" in result.err and said in result.err
    assert "Traceback" not in result.err
    state = json.loads((tmp_path / "s" / "search.json").read_text())
    assert state["final"] is None and state["winner"] in ("c1", "c2")
    assert all(c["final_ms"] is None for c in state["candidates"])
