"""The search space: which recipe values ``optimize search`` varies, and its candidates.

A key of ``[search.space]`` names one value of the recipe::

    "passes.prune.structured.ffn" = [0.2, 0.3]      # a pass's config key, by pass name
    "passes[3].config.heads" = [0.25, 0.5]          # by index, when a pass appears twice
    "passes.finetune.distill.hidden" = [1.0, 4.0]   # a key inside a nested config table
    "target.backend" = ["onnxruntime", "torch"]
    "target.options.graph_optimization_level" = ["extended", "all"]
    "target" = [{ backend = "onnxruntime" }, { backend = "torch", options = { compile = true } }]

The last form replaces the whole ``[target]`` table: which lowering is fastest depends on the
CPU (int8 on an AMX Xeon runs faster through torch.compile, on an AMD EPYC through ONNX
Runtime), and each backend has options of its own, so ``target.backend`` crossed with
``target.options.*`` would make candidates with options their backend refuses.

Every key is checked before any work (the pass exists, the key is one of its config's), and
so is every candidate: each is bound to the plugins like a recipe of its own, so a value the
pass refuses (``ffn = 1.5``) is an error naming the key and the value, not a failure an hour in.

Candidates are the product of the listed values, ordered so that those sharing their earlier
passes run one after another: the pass cache then holds the shared prefix when they need it.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from fxopt.engine.errors import RecipeError
from fxopt.engine.plugin_host import PluginHost
from fxopt.run.bind import bind
from fxopt.run.recipe import Recipe, parse_recipe
from fxopt.testing.toml_text import toml_value

_BY_INDEX = re.compile(r"passes\[(\d+)\](?:\.config)?\.(.+)")
FORMS = (
    "passes.<pass name>.<config key>, passes[<index>].<config key>, target.backend, "
    "target.options.<option> or target (whole tables: [{ backend = ... , options = {...} }])"
)


@dataclass(frozen=True)
class Dimension:
    """One key of the space: where its value goes in the recipe, and the values to try."""

    key: str
    #: path of the value in the recipe's TOML data: ("passes", 2, "config", "ffn")
    path: tuple[str | int, ...]
    values: tuple[Any, ...]

    @property
    def rank(self) -> tuple[int, int]:
        """Earlier passes first, the target last: the order the candidates vary in."""
        if self.path[0] == "passes":
            return (0, int(self.path[1]))
        return (1, 0)


@dataclass(frozen=True)
class Candidate:
    """One point of the space: its values and the concrete recipe they make."""

    id: str
    values: dict[str, Any]
    data: dict[str, Any]
    recipe: Recipe


def dimensions(recipe: Recipe, host: PluginHost) -> list[Dimension]:
    """The space's keys, resolved against the recipe's passes and checked against their
    configs (``recipe.search`` must be set)."""
    assert recipe.search is not None
    keys = list(recipe.search.space)
    if "target" in keys and (inside := [k for k in keys if k.startswith("target.")]):
        raise RecipeError(
            f"'target' (whole tables) and {inside[0]!r} both set the [target] table",
            file=recipe.label,
            field=f"search.space.{inside[0]!r}",
            fix=f"put the values of {inside[0]!r} into the 'target' tables instead",
        )
    found = [
        Dimension(key, _path(key, recipe, host), tuple(values))
        for key, values in recipe.search.space.items()
    ]
    return sorted(found, key=lambda d: d.rank)


def candidates(
    recipe: Recipe, data: dict[str, Any], dims: list[Dimension], host: PluginHost
) -> list[Candidate]:
    """Every combination of the dimensions' values, each a recipe bound to the plugins.

    ``data`` is the recipe file's TOML data; the candidates keep its file for their relative
    paths and messages."""
    base = {k: v for k, v in data.items() if k != "search"}
    found = []
    width = len(str(math.prod(len(d.values) for d in dims)))
    for number, combo in enumerate(itertools.product(*(d.values for d in dims)), start=1):
        concrete = copy.deepcopy(base)
        values = {}
        for dim, value in zip(dims, combo, strict=True):
            _assign(concrete, dim.path, value)
            values[dim.key] = value
        shown = ", ".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        try:
            candidate = parse_recipe(concrete, source=recipe.source)
            bind(candidate, host)
        except RecipeError as exc:
            raise RecipeError(
                f"the candidate {shown} is not a valid recipe: {exc.field or ''}: {exc.message}",
                file=recipe.label,
                field="search.space",
                fix="drop the value the pass refuses from the space; "
                + (exc.fix or "`optimize validate` checks a recipe"),
            ) from None
        found.append(Candidate(f"c{number:0{width}d}", values, concrete, candidate))
    return found


def count(recipe: Recipe) -> int:
    """How many candidates the recipe's space makes, before anything is resolved."""
    assert recipe.search is not None
    return math.prod(len(values) for values in recipe.search.space.values())


def _path(key: str, recipe: Recipe, host: PluginHost) -> tuple[str | int, ...]:
    field = f"search.space.{key!r}"
    if key == "target":
        values = recipe.search.space[key] if recipe.search else []
        if bad := [v for v in values if not isinstance(v, dict)]:
            raise RecipeError(
                f"the values of 'target' are whole [target] tables, not {bad[0]!r}",
                file=recipe.label,
                field=field,
                fix='write each as { backend = "torch", options = { compile = true } }, or '
                "vary one value with 'target.backend' / 'target.options.<option>'",
            )
        return ("target",)
    if key == "target.backend":
        return ("target", "backend")
    if key.startswith("target.options.") and len(key) > len("target.options."):
        return ("target", "options", *key.removeprefix("target.options.").split("."))
    if (match := _BY_INDEX.fullmatch(key)) is not None:
        index, rest = int(match.group(1)), match.group(2)
        if index >= len(recipe.passes):
            raise RecipeError(
                f"passes[{index}] does not exist: the recipe has {len(recipe.passes)} passes",
                file=recipe.label,
                field=field,
                fix=f"use an index from 0 to {len(recipe.passes) - 1}",
            )
        return _config_path(index, rest, recipe, host, field)
    if key.startswith("passes."):
        return _by_name(key.removeprefix("passes."), recipe, host, field)
    raise RecipeError(
        f"{key!r} names no value a search can vary",
        file=recipe.label,
        field=field,
        fix=f"name a value as {FORMS}",
    )


def _by_name(rest: str, recipe: Recipe, host: PluginHost, field: str) -> tuple[str | int, ...]:
    """``prune.structured.ffn``: the longest pass name of the recipe that starts it."""
    names = sorted({p.name for p in recipe.passes}, key=len, reverse=True)
    for name in names:
        if rest.startswith(name + "."):
            indices = [i for i, p in enumerate(recipe.passes) if p.name == name]
            key = rest.removeprefix(name + ".")
            if len(indices) > 1:
                raise RecipeError(
                    f"the recipe runs {name!r} {len(indices)} times (passes "
                    f"{', '.join(map(str, indices))}): the key does not say which",
                    file=recipe.label,
                    field=field,
                    fix=f"name it by index, e.g. 'passes[{indices[0]}].{key}'",
                )
            return _config_path(indices[0], key, recipe, host, field)
    hint = _did_you_mean(rest.split(".")[0], [n.split(".")[0] for n in names], "a key of ")
    raise RecipeError(
        f"passes.{rest!r} names no pass of the recipe{hint}",
        file=recipe.label,
        field=field,
        fix=f"the recipe's passes: {', '.join(p.name for p in recipe.passes) or 'none'}",
    )


def _did_you_mean(word: str, choices: list[str], what: str = "") -> str:
    """``"; did you mean <what>'x'?"`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {what}{close[0]!r}?" if close else ""


def _config_path(
    index: int, key: str, recipe: Recipe, host: PluginHost, field: str
) -> tuple[str | int, ...]:
    name = recipe.passes[index].name
    if name not in host.passes:
        raise RecipeError(
            f"unknown pass {name!r}{host.passes.suggestion(name)}",
            file=recipe.label,
            field=f"passes[{index}].name",
            fix="`optimize passes` lists every registered pass",
        )
    parts = key.split(".")
    keys = list(host.passes.get(name).Config.model_fields)
    if parts[0] not in keys:
        raise RecipeError(
            f"pass {name!r} has no config key {parts[0]!r}{_did_you_mean(parts[0], keys)}",
            file=recipe.label,
            field=field,
            fix=f"{name}'s keys: {', '.join(keys)}",
        )
    return ("passes", index, "config", *parts)


def _assign(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    here: Any = data
    for part in path[:-1]:
        here = here[part] if isinstance(part, int) else here.setdefault(part, {})
    here[path[-1]] = value
