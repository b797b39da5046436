"""Decoder language models with a KV cache, end to end from the command line.

A tiny random model of each supported family is captured with its cache (the names ONNX
Runtime GenAI and Optimum use), lowered to ONNX Runtime, judged on perplexity and greedy
generation against the original model, and generates from the artifact with
``optimize generate``; the ONNX Runtime artifact generates the very tokens transformers'
own ``generate`` does. Each bad input fails before any work, or cleanly, naming the fix.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins
from fxopt.plugins.huggingface.generation import Generator
from fxopt.run.output_dir import load_output
from fxopt.testing.language_models import FAMILIES, save_causal_lm, tokenizer
from fxopt.testing.language_models import RECIPE as TINY
from tests.cli import assert_clean_failure, run_cli
from tests.conftest import merged, write_recipe

RECIPE = merged(
    TINY,
    {
        "verify": {
            "min_cosine": 0.9999,
            "max_perplexity_increase": 0.001,
            "min_generation_agreement": 1.0,
        }
    },
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama (grouped-query attention) optimized to ONNX Runtime: (model, output)."""
    tmp = tmp_path_factory.mktemp("llama")
    model = save_causal_lm(tmp / "model", "llama")
    out = tmp / "out"
    recipe = write_recipe(tmp, RECIPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FXOPT_CACHE_DIR", str(tmp / "cache"))
        from fxopt.cli import main

        assert main([str(recipe), str(model), "-o", str(out), "-q"]) == 0
    return model, out


def test_the_artifact_takes_and_returns_the_cache_under_genai_names(llama):
    _, out = llama
    graph = onnx.load(str(out / "model.ort.onnx"), load_external_data=False).graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert [v.name for v in graph.input] == [
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert [v.name for v in graph.output] == ["logits"] + [
        f"present.{i}.{kind}" for i in range(2) for kind in ("key", "value")
    ]
    assert shapes["attention_mask"] == ["batch", "past_sequence+sequence"]
    assert shapes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    assert shapes["present.1.value"] == ["batch", 2, "past_sequence+sequence", 16]
    assert shapes["logits"] == ["batch", "sequence", 384]


def test_the_report_judges_perplexity_and_generation(llama):
    _, out = llama
    report = json.loads((out / "report.json").read_text())
    metrics = report["verify"]["metrics"]
    assert metrics["perplexity"] == pytest.approx(metrics["perplexity_reference"], rel=1e-6)
    assert abs(metrics["perplexity_increase"]) < 1e-6
    assert metrics["generation_agreement"] == 1.0
    bounded = {b["field"]: b["passed"] for b in report["verify"]["budget"]}
    assert bounded == {
        "min_cosine": True,
        "max_perplexity_increase": True,
        "min_generation_agreement": True,
    }


def test_the_artifact_generates_what_transformers_generates(llama):
    from transformers import AutoModelForCausalLM

    model_dir, out = llama
    prompt = tokenizer()("def read(path):")["input_ids"]
    loaded = load_output(out, load_plugins(), Output(quiet=True))
    ours = Generator(loaded.runner, (2, 16)).generate(prompt, 12).tokens
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    import torch

    with torch.no_grad():
        theirs = model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    assert ours == theirs


def test_optimize_generate_streams_the_text_and_says_how_fast(llama, capsys):
    _, out = llama
    result = run_cli(capsys, "generate", out, "--prompt", "def ", "--max-new-tokens", "6")
    assert result.code == 0, result.err
    assert result.out.startswith("def ")
    assert "6 tokens on onnxruntime" in result.err and "tokens/s" in result.err
    shown = run_cli(capsys, "generate", out, "--prompt", "def ", "--json", "--max-new-tokens", "5")
    data = json.loads(shown.out)
    assert len(data["tokens"]) == 5 and data["decode_tokens_per_second"] > 0
    # sampling: seeded, so repeatable
    args = ["generate", out, "--prompt", "x", "--json", "--temperature", "1.0", "--seed", "3"]
    first, again = run_cli(capsys, *args), run_cli(capsys, *args)
    assert json.loads(first.out)["tokens"] == json.loads(again.out)["tokens"]


def test_generate_refuses_a_prompt_longer_than_the_artifact_takes(llama, capsys):
    _, out = llama
    result = run_cli(capsys, "generate", out, "--prompt", "x = 1; " * 60)
    assert_clean_failure(result, 2, "the artifact takes at most 48 at once", "dims.sequence.max")
    result = run_cli(capsys, "generate", out, "--prompt", "x", "--max-new-tokens", "100")
    assert_clean_failure(result, 2, "exceed the cache", "--max-new-tokens")


def test_generate_refuses_an_output_that_is_not_a_language_model(llama, capsys, tmp_path):
    _, out = llama
    other = tmp_path / "other"
    shutil.copytree(out, other)
    report = json.loads((other / "report.json").read_text())
    report["task"] = "sequence-classification"
    (other / "report.json").write_text(json.dumps(report))
    result = run_cli(capsys, "generate", other, "--prompt", "x")
    assert_clean_failure(result, 2, "generate needs a causal-lm output", "report.json")


def test_an_unsupported_architecture_is_refused_before_any_work(capsys, tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    model = tmp_path / "opt"
    config = OPTConfig(
        vocab_size=384, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2
    )
    OPTForCausalLM(config).save_pretrained(model, safe_serialization=True)
    recipe = write_recipe(tmp_path, RECIPE)
    result = run_cli(capsys, recipe, model, "-o", tmp_path / "out")
    assert_clean_failure(
        result, 2, "supports the architectures gpt2, llama, mistral, phi3, qwen2", "'opt'"
    )
    assert "capturing" not in result.err and not (tmp_path / "out").exists()


def test_a_tokenizer_without_an_end_token_is_refused(capsys, tmp_path):
    model = save_causal_lm(tmp_path / "model", "llama")
    config = json.loads((model / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token"):
        config.pop(key, None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    special = model / "special_tokens_map.json"
    special.unlink(missing_ok=True)
    recipe = write_recipe(tmp_path, RECIPE)
    result = run_cli(capsys, recipe, model, "-o", tmp_path / "out")
    assert_clean_failure(result, 2, "tokenizer has no end-of-text token", "eos_token")


def test_verification_text_shorter_than_one_window_is_refused(capsys, tmp_path):
    model = save_causal_lm(tmp_path / "model", "llama")
    (tmp_path / "short.txt").write_text("a\nb\nc\nd\n")
    recipe = dict(RECIPE)
    recipe["data"] = {
        "verification": {"source": "text", "path": "short.txt", "samples": 4, "batch_size": 4}
    }
    result = run_cli(capsys, write_recipe(tmp_path, recipe), model, "-o", tmp_path / "out")
    assert_clean_failure(result, 2, "shorter than two tokens", "data.verification")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_every_supported_family_is_captured_with_its_cache(family, capsys, tmp_path):
    model = save_causal_lm(tmp_path / "model", family)
    recipe = write_recipe(tmp_path, RECIPE)
    result = run_cli(capsys, recipe, model, "-o", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    metrics = json.loads(result.out)["verify"]["metrics"]
    assert metrics["generation_agreement"] == 1.0
    assert abs(metrics["perplexity_increase"]) < 1e-5


def test_pruned_grouped_query_attention_shrinks_the_cache_and_reloads_in_transformers(
    tmp_path, monkeypatch
):
    """Whole key/value groups and query heads within them go, the MLP too: the artifact
    takes and returns a cache of the surviving key/value heads, config.json describes the
    weights (transformers builds the pruned model from it and generates the artifact's
    tokens), and a rerun resumed from the pass cache has the same inputs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fxopt.run import pass_cache

    monkeypatch.setattr(pass_cache, "MIN_SECONDS", 0.0)  # cache the pruned graph
    model = save_causal_lm(tmp_path / "model", "llama")
    prune = {"name": "prune.structured", "config": {"kv_heads": 0.5, "heads": 0.5, "ffn": 0.25}}
    recipe = merged(
        RECIPE,
        {
            "passes": [prune, {"name": "cleanup.dce"}],
            "target": {"backend": "torch"},
            "verify": {"min_cosine": 0.5, "max_perplexity_increase": 5.0},
        },
    )
    recipe["verify"].pop("min_generation_agreement")
    out = tmp_path / "out"
    cache = ["--cache-dir", str(tmp_path / "cache"), "-q"]
    from fxopt.cli import main

    assert main([str(write_recipe(tmp_path, recipe)), str(model), "-o", str(out), *cache]) == 0
    report = json.loads((out / "report.json").read_text())
    record = report["passes"][0]
    assert record["metrics"]["pruned"] == {
        "kv_heads": "2 groups: 2 -> 1",
        "heads": "2 groups: 2 -> 1",
        "ffn": "2 groups: 128 -> 96",
    }
    assert 0.0 <= report["verify"]["metrics"]["generation_agreement"] <= 1.0
    config = AutoConfig.from_pretrained(out)
    assert (config.num_attention_heads, config.num_key_value_heads) == (1, 1)
    assert (config.head_dim, config.intermediate_size) == (16, 96)
    shapes = {spec["name"]: spec["shape"] for spec in report["inputs"]}
    assert shapes["past_key_values.1.key"] == ["batch", 1, "past_sequence", 16]

    loaded = load_output(out, load_plugins(), Output(quiet=True))
    prompt = tokenizer()("def read(path):")["input_ids"]
    ours = Generator(loaded.runner, (1, 16)).generate(prompt, 10).tokens
    weights = torch.export.load(str(out / "model.pt2")).module().state_dict()
    pruned = AutoModelForCausalLM.from_config(config).eval()
    pruned.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()}, strict=False)
    with torch.no_grad():
        theirs = pruned.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    assert ours == theirs

    # the last pass dropped: a new build, whose pruned graph comes back from the pass cache
    recipe["passes"] = [prune]
    again = tmp_path / "again"
    assert main([str(write_recipe(tmp_path, recipe)), str(model), "-o", str(again), *cache]) == 0
    resumed = json.loads((again / "report.json").read_text())
    assert resumed["passes"][0]["metrics"]["cached"] is True
    assert resumed["inputs"] == report["inputs"]


def test_distillation_recovers_a_pruned_language_model_through_its_logits(tmp_path):
    """Token-level KL on the logits alone (the cache the pruned model returns has fewer
    heads than the original's, and is not a target): the student moves toward the teacher
    on held-out verification text."""
    model = save_causal_lm(tmp_path / "model", "llama")
    passes = [
        {"name": "prune.structured", "config": {"kv_heads": 0.5, "ffn": 0.25}},
        {
            "name": "finetune",
            "config": {"objective": "distill", "max_steps": 40, "lr": 3e-3, "batch_size": 8},
        },
    ]
    finetune = {"source": "stdlib-docstrings", "samples": 64, "batch_size": 8}
    recipe = merged(
        RECIPE,
        {
            "passes": passes,
            "data": {"finetune": {**finetune, "sequence_length": 32}},
            "verify": {"min_cosine": 0.5, "max_perplexity_increase": 5.0},
        },
    )
    recipe["verify"].pop("min_generation_agreement")
    out = tmp_path / "out"
    from fxopt.cli import main

    assert main([str(write_recipe(tmp_path, recipe)), str(model), "-o", str(out), "-q"]) == 0
    pruned, distilled = json.loads((out / "report.json").read_text())["passes"]
    metrics = distilled["metrics"]
    assert metrics["objective"] == "distill" and metrics["steps"] == 40
    assert metrics["eval_loss_after"] < 0.8 * metrics["eval_loss_before"]
    assert distilled["numerics"]["rel_l2"] < pruned["numerics"]["rel_l2"]
