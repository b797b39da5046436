"""Recipe parsing and its error messages."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from fxopt.engine.config import _scalar_types
from fxopt.engine.errors import RecipeError
from fxopt.run.bind import bind
from fxopt.run.recipe import Recipe, load_recipe, parse_recipe
from fxopt.run.recipe_schema import recipe_schema
from tests.conftest import write_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_relative_paths(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, 'schema_version = 1\n[model]\npath = "m"\n'))
    assert recipe.target.backend == "onnxruntime"
    assert recipe.verify.min_cosine == 0.99
    assert recipe.data.verification.source == "synthetic"
    assert recipe.resolve_path("m") == tmp_path.resolve() / "m"
    assert recipe.label == "recipe.toml"


def test_errors_read_file_field_value(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, "[verify]\nmin_cosine = 1.5\n"))
    assert str(info.value) == (
        "recipe.toml: verify.min_cosine: input should be less than or equal to 1 (got 1.5)"
    )


def test_all_errors_are_listed(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, "schema_version = 7\n[verify]\nmax_abs = -1\n"))
    message = str(info.value)
    assert "schema_version" in message and "verify.max_abs" in message


def test_missing_required_key():
    with pytest.raises(RecipeError, match=r"passes\[0\]\.name: required key is missing"):
        parse_recipe({"passes": [{"config": {}}]})


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_pass_config_validated_by_the_pass(host, tmp_path):
    recipe = parse_recipe(
        {"passes": [{"name": "cleanup.constant_fold", "config": {"max_bytez": 1}}]},
        source=tmp_path / "r.toml",
    )
    with pytest.raises(RecipeError) as info:
        bind(recipe, host)
    assert "r.toml: passes[0].config.max_bytez: unknown key; allowed keys: max_bytes" in str(
        info.value
    )


def test_backend_options_validated_by_the_backend(host):
    recipe = parse_recipe({"target": {"backend": "onnxruntime", "options": {"threads": 2}}})
    with pytest.raises(RecipeError, match=r"target\.options\.threads: unknown key"):
        bind(recipe, host)


def test_unknown_backend_suggests(host):
    recipe = parse_recipe({"target": {"backend": "onnxruntim"}})
    with pytest.raises(RecipeError, match="did you mean 'onnxruntime'"):
        bind(recipe, host)


def test_shipped_recipes_validate(host):
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        plan = bind(load_recipe(path), host)
        assert plan.backend.name


def test_schema_file_is_current(host):
    committed = json.loads((ROOT / "recipes" / "schema.json").read_text())
    assert committed == recipe_schema(host), "regenerate: optimize schema > recipes/schema.json"


def test_schema_lists_each_pass_config(host):
    schema = recipe_schema(host)
    variants = {v["title"]: v for v in schema["properties"]["passes"]["items"]["oneOf"]}
    assert "cleanup.constant_fold" in variants
    fold = variants["cleanup.constant_fold"]["properties"]["config"]
    assert fold["properties"]["max_bytes"]["minimum"] == 0


# numbers are checked as strictly as keys: no booleans, ordered finite ranges, bounded counts


def _tables(model: type[BaseModel], seen: dict[type[BaseModel], None] | None = None) -> list:
    """Every recipe table model reachable from ``model`` (nested models, lists and dicts)."""
    seen = {} if seen is None else seen
    seen[model] = None
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if tp not in seen:
                    _tables(tp, seen)
            else:
                stack.extend(typing.get_args(tp))
    return list(seen)


MINIMAL = {"DimRange": {"min": 1, "max": 2}, "InputDecl": {"shape": ["batch"]}}
MINIMAL["DataSplit"] = {"source": "synthetic"}
MINIMAL["SearchSection"] = {"space": {"target.backend": ["onnxruntime"]}}


def test_booleans_refused_for_every_number_field():
    checked = []
    for table in _tables(Recipe):
        for name, info in table.model_fields.items():
            if info.annotation is bool or not {int, float} & _scalar_types(info.annotation):
                continue
            with pytest.raises(ValidationError, match="not a boolean") as caught:
                table.model_validate({**MINIMAL.get(table.__name__, {}), name: True})
            assert caught.value.errors()[0]["ctx"]["fix"].startswith("write a number")
            checked.append(f"{table.__name__}.{name}")
    # the walk reaches every table: a new numeric field is covered without editing this test
    assert {"DataSplit.batch_size", "DimRange.opt", "VerifySection.min_cosine"} <= set(checked)
    assert {"Recipe.schema_version", "InputDecl.low", "VerifySection.latency_iters"} <= set(checked)
    assert {"SearchSection.max_size_mb", "SearchSection.max_candidates"} <= set(checked)
    assert parse_recipe({"verify": {"latency": False}}).verify.latency is False  # a real bool


def test_boolean_error_names_the_field_and_the_fix():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"data": {"verification": {"source": "synthetic", "batch_size": True}}})
    assert str(info.value) == (
        "recipe: data.verification.batch_size: an integer is expected here, not a boolean "
        "(got True)\n  fix: write a number, e.g. batch_size = 8"
    )


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"data": {"verification": {"source": "s", "samples": 2**40}}}, "samples", "1000000"),
        ({"data": {"calibration": {"source": "s", "batch_size": 2**40}}}, "batch_size", "65536"),
        ({"data": {"finetune": {"source": "s", "sequence_length": 2**40}}}, "length", "1048576"),
        ({"data": {"verification": {"source": "s", "seed": 2**40}}}, "seed", "4294967295"),
        ({"data": {"verification": {"source": "s", "seed": -1}}}, "seed", "not be negative"),
        ({"model": {"dims": {"batch": {"min": 1, "max": 2**40}}}}, "batch.max", "1048576"),
        ({"model": {"inputs": {"x": {"shape": ["batch", 2**40]}}}}, "shape[1]", "1048576"),
        ({"model": {"inputs": {"x": {"shape": ["batch", 0]}}}}, "shape[1]", "[1, 1048576]"),
        ({"verify": {"latency_iters": 2**40}}, "latency_iters", "10000"),
        ({"verify": {"pass_samples": 2**40}}, "pass_samples", "1000000"),
    ],
)
def test_counts_that_drive_allocation_are_bounded(data, field, needle):
    with pytest.raises(RecipeError) as info:
        parse_recipe(data)
    assert info.value.field.endswith(field) and needle in info.value.message
    assert info.value.fix


@pytest.mark.parametrize(
    ("decl", "needle"),
    [
        ({"low": 5, "high": 1}, "low (5) must be below high (1): high is exclusive"),
        ({"low": 3, "high": 3}, "low (3) must be below high (3)"),
        ({"low": 2}, "high (2, the default when high is unset)"),
        ({"dtype": "float32", "low": 1, "high": -1}, "low (1.0) must be at most high (-1.0)"),
        ({"dtype": "float32", "high": -0.5}, "low (0.0, the default when low is unset)"),
        ({"dtype": "float32", "high": math.inf}, "must be a finite number"),
        ({"dtype": "float32", "low": -math.inf}, "must be a finite number"),
        ({"dtype": "float32", "low": math.nan}, "must be a finite number"),
        ({"dtype": "float16", "high": 1e6}, "outside what float16 holds"),
        ({"dtype": "int32", "high": 2**40}, "outside what int32 holds"),
        ({"low": 0.5, "high": 4}, "an int64 input's low must be a whole number"),
    ],
)
def test_input_ranges_are_finite_and_ordered(decl, needle):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"model": {"inputs": {"ids": {"shape": ["batch"], **decl}}}})
    assert info.value.field.startswith("model.inputs.ids") and needle in info.value.message
    assert info.value.fix


def test_valid_input_ranges_pass():
    inputs = {
        "ids": {"shape": ["batch"], "low": 0, "high": 30522},
        "mask": {"shape": ["batch"], "low": 1},  # [1, 2): the default high
        "pixels": {"dtype": "float32", "shape": ["batch", 3], "low": -1.0, "high": -1.0},
        "flags": {"dtype": "bool", "shape": ["batch"]},
    }
    recipe = parse_recipe({"model": {"inputs": inputs}})
    assert recipe.model.inputs["ids"].high == 30522


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the recipe is empty"),
        ("# a comment\n\n", "the recipe is empty"),
        ("schema_version = 1\n", "the recipe sets only schema_version"),
    ],
)
def test_empty_recipe_refused(tmp_path, text, needle):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.file == "recipe.toml" and needle in info.value.message
    assert info.value.fix.startswith("start from recipes/quickstart.toml")


def test_a_bad_schema_version_alone_is_reported_as_such(tmp_path):
    with pytest.raises(RecipeError, match="schema_version"):
        load_recipe(write_recipe(tmp_path, "schema_version = 2\n"))
