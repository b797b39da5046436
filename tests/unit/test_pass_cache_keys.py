"""The pass cache's keys: what a cached pass result depends on, and nothing else."""

from __future__ import annotations

import copy

from fxopt.run.pass_cache import prefix_keys

COMPONENTS = {
    "model": {"model.safetensors": "ab12"},
    "data": {},
    "versions": {"torch": "2.13.0"},
    "recipe": {
        "model": {"task": "sentence-embedding"},
        "data": {"calibration": {"source": "stdlib-docstrings", "samples": 128}},
        "target": {"backend": "onnxruntime"},
        "verify": {"min_cosine": 0.93, "pass_samples": 64, "latency_iters": 20},
        "passes": [
            {"name": "prune.structured", "config": {"ffn": 0.3}},
            {"name": "finetune", "config": {"epochs": 3}},
            {"name": "quantize.int8", "config": {"observer": "mse"}},
        ],
    },
}


def keys_with(change) -> list[str]:
    components = copy.deepcopy(COMPONENTS)
    change(components["recipe"])
    return prefix_keys(components)


def test_a_budget_change_keeps_every_cached_pass():
    """Tightening or loosening the budget, or timing differently, judges the same results:
    a fine-tune is not re-run for it."""
    before = prefix_keys(COMPONENTS)
    assert keys_with(lambda r: r["verify"].update(min_cosine=0.925)) == before
    assert keys_with(lambda r: r["verify"].update(max_abs=0.1, latency_iters=50)) == before


def test_what_a_pass_record_holds_changes_the_keys():
    before = prefix_keys(COMPONENTS)
    # the per-pass numerics are measured on pass_samples samples: every record differs
    assert not set(keys_with(lambda r: r["verify"].update(pass_samples=256))) & set(before)
    # a later pass's config changes its own key and the ones after it, not the earlier ones
    later = keys_with(lambda r: r["passes"][2]["config"].update(observer="minmax"))
    assert later[:2] == before[:2] and later[2] != before[2]
    data = keys_with(lambda r: r["data"]["calibration"].update(samples=64))
    assert not set(data) & set(before)


def test_the_target_enters_the_keys_from_the_first_pass_that_reads_it():
    """A search over the lowering reuses a distillation; a pass that reads the target (or a
    plugin's pass, which reads it unless it says not) is keyed on it, and so is all after."""

    def torch_target(recipe):
        recipe["target"] = {"backend": "torch", "options": {"compile": True}}

    def with_reads(reads):
        components = copy.deepcopy(COMPONENTS)
        torch_target(components["recipe"])
        return prefix_keys(COMPONENTS, reads), prefix_keys(components, reads)

    onnxruntime, torch = with_reads([False, False, False])
    assert onnxruntime == torch
    onnxruntime, torch = with_reads([False, True, False])
    assert onnxruntime[0] == torch[0] and onnxruntime[1] != torch[1] and onnxruntime[2] != torch[2]
    for unknown in (None, [False]):  # not said, or not one per pass: keyed on the target
        onnxruntime, torch = with_reads(unknown)
        assert not set(onnxruntime) & set(torch)


def test_the_built_in_passes_say_whether_they_read_the_target():
    from fxopt.engine.pass_base import Pass
    from fxopt.engine.plugin_host import load_plugins

    host = load_plugins()
    reads = {entry.name: entry.obj.reads_target for entry in host.passes}
    assert Pass.reads_target  # a plugin's pass, unless it says otherwise
    assert reads["cast.fp16"] and reads["cast.bf16"]  # they refuse what the backend cannot run
    for name in ("prune.structured", "finetune", "quantize.int8", "cleanup.dce"):
        assert not reads[name], name
