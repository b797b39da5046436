"""Binding a recipe to plugins: each pass's config and the backend's options, validated.

This is everything ``optimize validate`` checks, and the first thing a run does, so a typo in
the last pass's config fails in a second, not after an hour of calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from fxopt.engine.backend import Backend
from fxopt.engine.errors import RecipeError
from fxopt.engine.pass_base import Pass
from fxopt.engine.plugin_host import PluginHost

from .recipe import Recipe
from .validation import validation_error


@dataclass
class Plan:
    passes: list[Pass]
    backend: Backend


def bind(recipe: Recipe, host: PluginHost) -> Plan:
    passes = []
    for index, spec in enumerate(recipe.passes):
        where = f"passes[{index}]"
        if spec.name not in host.passes:
            raise RecipeError(
                f"unknown pass {spec.name!r}{host.passes.suggestion(spec.name)}"
                f"{host.failure_hint()}",
                file=recipe.label,
                field=f"{where}.name",
                fix="`optimize passes` lists every registered pass",
            )
        pass_class = host.passes.get(spec.name)
        try:
            config = pass_class.Config.model_validate(spec.config)
        except ValidationError as exc:
            raise validation_error(
                exc, pass_class.Config, file=recipe.label, prefix=f"{where}.config."
            ) from None
        pass_ = pass_class(config)
        for split in pass_.needs_data:  # asked of the configured pass: it may depend on it
            if getattr(recipe.data, split) is None:
                raise RecipeError(
                    f"pass {spec.name!r} needs a {split} set"
                    + (f" ({why})" if (why := pass_.data_reason(split)) else ""),
                    file=recipe.label,
                    field=f"data.{split}",
                    fix=f"add a [data.{split}] table (source, samples, batch_size)",
                )
        passes.append(pass_)
    name = recipe.target.backend
    if name not in host.backends:
        raise RecipeError(
            f"unknown backend {name!r}{host.backends.suggestion(name)}{host.failure_hint()}",
            file=recipe.label,
            field="target.backend",
            fix="`optimize passes` lists every registered backend",
        )
    backend_class = host.backends.get(name)
    try:
        options = backend_class.Options.model_validate(recipe.target.options)
    except ValidationError as exc:
        raise validation_error(
            exc, backend_class.Options, file=recipe.label, prefix="target.options."
        ) from None
    for key, data in recipe.data.splits().items():
        if data.source not in host.datasets:
            raise RecipeError(
                f"unknown dataset source {data.source!r}{host.datasets.suggestion(data.source)}",
                file=recipe.label,
                field=f"{recipe.data.field(key)}.source",
                fix="`optimize passes` lists every registered dataset source",
            )
    return Plan(passes, backend_class(options))
