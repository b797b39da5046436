"""Recipe parsing and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxopt.engine.errors import RecipeError
from fxopt.engine.plan import bind
from fxopt.engine.recipe import load_recipe, parse_recipe
from fxopt.engine.schema import recipe_schema
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
