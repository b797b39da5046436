from __future__ import annotations

import pytest

from fxopt.engine.errors import PluginError, RecipeError
from fxopt.engine.registry import Registry


def test_duplicates_are_refused_with_both_origins():
    registry = Registry("pass")
    registry.registrar("pkg-a 1.0").register("x.y", object)
    with pytest.raises(PluginError) as info:
        registry.registrar("pkg-b 2.0").register("x.y", int)
    assert "pkg-a 1.0" in str(info.value) and "pkg-b 2.0" in str(info.value)
    assert registry.get("x.y") is object  # never overwritten


def test_unknown_names_suggest_the_closest():
    registry = Registry("pass")
    registry.register("quantize.int8", object)
    with pytest.raises(RecipeError, match="did you mean 'quantize.int8'"):
        registry.get("quantise.int8", file="r.toml", field="passes[0].name")
    with pytest.raises(RecipeError, match=r"registered: quantize.int8"):
        registry.get("zzz")
