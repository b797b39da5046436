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
