"""``fxopt.testing.recipe_toml``: whole recipes written from dicts read back as the same dicts,
and as valid recipes."""

from __future__ import annotations

import math

import pytest

from fxopt.run.recipe import parse_recipe
from fxopt.run.toml_compat import tomllib
from fxopt.testing import recipe_toml
from fxopt.testing.toml_text import to_toml
from tests.conftest import TINY_PASSES, merged, tiny_recipe_dict
from tests.passes.finetune_support import DIGITS_RECIPE

FINETUNE = merged(
    DIGITS_RECIPE,
    {
        "model": {"path": "model.pt2"},
        "passes": [
            {"name": "cleanup.dropout"},
            {
                "name": "finetune",
                "config": {
                    "epochs": 2,
                    "lr": 3e-3,
                    "weight_decay": 0.0,
                    "evaluate": False,
                    "adversarial": {"method": "pgd", "epsilon": 0.1, "clamp": [0.0, 1.0]},
                    "early_stopping": {"every": 2, "max_drop": 0.2},
                },
            },
            {"name": "quantize.int8", "config": {"ops": ["linear", "conv2d"], "cache": False}},
        ],
    },
)

ESCAPES = {
    "schema_version": 1,
    "model": {"path": 'C:\\models\\"quoted"\tdir\n', "task": "feature-extraction"},
    "passes": [
        {
            "name": "acme.odd",
            "config": {
                "with space": "naïve café ☕ 😀",
                "dotted.key": "\x00\x1f\x7f",
                "": "empty key",
                "sizes": [[1, 2], [3.5, -4e-05]],
                "mixed": [1, "two", {"three": 3}],
                "huge": 1e300,
                "infinite": -math.inf,
                "stages": [{"a": 1}, {"b": {"c": [True, False]}}],
                "nothing": {},
            },
        },
        {"name": "cleanup.dce", "config": {}},
    ],
    "target": {
        "backend": "tensorrt",
        "options": {"profiles": [{"sequence": {"min": 2, "max": 16}}, {"batch": {"max": 8}}]},
    },
}

RECIPES = {
    "tiny": tiny_recipe_dict(),
    "tiny-verify-bounds": tiny_recipe_dict(verify={"max_abs": 0.0, "min_top1_agreement": 1.0}),
    "finetune": FINETUNE,
    "escapes": ESCAPES,
    "no-passes": {"schema_version": 1, "passes": [], "verify": {"min_cosine": 0.5}},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_round_trip_and_parse(name):
    recipe = RECIPES[name]
    text = recipe_toml(recipe)
    assert tomllib.loads(text) == recipe, text
    assert parse_recipe(tomllib.loads(text)) == parse_recipe(recipe)


def test_layout_is_the_hand_written_one():
    text = recipe_toml(FINETUNE)
    assert text.startswith("schema_version = 1\n\n[model]\ntask = ")
    assert "\n[model.inputs.x]\n" in text and "\n[model.dims.batch]\n" in text
    assert "\n[model.inputs]\n" not in text and "\n[model.dims]\n" not in text  # implied
    assert text.count("\n[[passes]]\n") == 3
    assert "[passes.config]\nepochs = 2\nlr = 0.003\nweight_decay = 0.0\nevaluate = false\n" in (
        text
    )
    assert '[passes.config.adversarial]\nmethod = "pgd"\nepsilon = 0.1\nclamp = [0.0, 1.0]\n' in (
        text
    )
    assert "\n[target.options]\nonnx = false\n" in text
    assert "\n[[target.options.profiles]]\n" in recipe_toml(ESCAPES)


def test_what_toml_cannot_hold_is_refused():
    with pytest.raises(TypeError, match="NoneType has no TOML form"):
        recipe_toml({"verify": {"max_abs": None}})
    with pytest.raises(TypeError, match="keys are strings"):
        recipe_toml({"model": {1: "one"}})


def test_to_toml_still_writes_a_config_table():
    table = {"a": 1, "b": [0.5, 2.0], "c": "x ☕", "d": True, "e": {"f": [1, 2], "g": "h"}}
    assert tomllib.loads(to_toml(table)) == table


def test_merged_lays_changes_over_a_copy():
    base = tiny_recipe_dict()
    changed = merged(base, {"verify": {"max_abs": 0.0, "pass_samples": None}, "passes": []})
    assert changed["verify"] == {"min_cosine": 0.9999, "latency_iters": 2, "max_abs": 0.0}
    assert changed["passes"] == [] and changed["model"] == base["model"]
    assert base == tiny_recipe_dict() and base["passes"] == list(TINY_PASSES)
