"""TensorRT optimization profiles from the recipe's shape ranges: pure, testable without TensorRT.

A profile gives every network input a (min, opt, max) shape. Ours come from the input specs
(``("batch", "sequence")``: named axes and fixed sizes) and the ranges of the named axes
(``[model.dims]``): one profile by default, more when ``[target.options] profiles`` narrows
some axes (a small-batch profile next to a large-batch one, say). The graph was captured for
``[model.dims]``, so a profile may narrow those ranges but never widen them.

Example::

    >>> from fxopt.engine.specs import InputSpec
    >>> from fxopt.engine.config import DimRange
    >>> spec = InputSpec("input_ids", "int64", ("batch", "sequence"))
    >>> dims = {"batch": DimRange(min=1, opt=8, max=64), "sequence": DimRange(min=2, max=512)}
    >>> compute_profiles([spec], dims)[0]["input_ids"]
    ShapeRange(min=(1, 2), opt=(8, 8), max=(64, 512))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fxopt.engine.config import DimRange
from fxopt.engine.errors import RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.specs import InputSpec


@dataclass(frozen=True)
class ShapeRange:
    """One input's shapes in one profile, as ``IOptimizationProfile.set_shape`` takes them."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


#: input name -> its shapes; one dict per optimization profile
Profile = dict[str, ShapeRange]


def compute_profiles(
    specs: Sequence[InputSpec],
    dims: Mapping[str, DimRange],
    narrowed: Sequence[Mapping[str, DimRange]] = (),
    *,
    label: str = "recipe",
) -> list[Profile]:
    """One profile from ``dims``, or one per entry of ``narrowed`` (each narrowing ``dims``)."""
    for spec in specs:
        for axis in spec.dynamic_axes.values():
            if axis not in dims:
                raise RecipeError(
                    f"input {spec.name!r} has the dynamic axis {axis!r}, which has no range",
                    file=label,
                    field=f"model.dims.{axis}",
                    fix=f"add [model.dims.{axis}] with min, opt and max",
                )
    if not narrowed:
        return [_profile(specs, dims)]
    profiles = []
    for index, overrides in enumerate(narrowed):
        ranges = dict(dims)
        for axis, wanted in overrides.items():
            where = f"target.options.profiles[{index}].{axis}"
            if axis not in dims:
                raise RecipeError(
                    f"no input has an axis named {axis!r}",
                    file=label,
                    field=where,
                    fix=f"the inputs' axes are: {', '.join(dims) or 'none (all static)'}",
                )
            captured = dims[axis]
            if wanted.min < captured.min or wanted.max > captured.max:
                raise RecipeError(
                    f"profile range {wanted.min}..{wanted.max} leaves the captured range "
                    f"{captured.min}..{captured.max} of [model.dims.{axis}]",
                    file=label,
                    field=where,
                    fix=f"narrow the profile, or widen [model.dims.{axis}] and re-run",
                )
            ranges[axis] = wanted
        profiles.append(_profile(specs, ranges))
    return profiles


def _profile(specs: Sequence[InputSpec], ranges: Mapping[str, DimRange]) -> Profile:
    def sizes(pick) -> dict[str, int]:
        return {axis: pick(r) for axis, r in ranges.items()}

    return {
        spec.name: ShapeRange(
            spec.concrete_shape(sizes(lambda r: r.min)),
            spec.concrete_shape(sizes(lambda r: r.optimal)),
            spec.concrete_shape(sizes(lambda r: r.max)),
        )
        for spec in specs
    }


def ir_dims(ir: ModelIR) -> dict[str, DimRange]:
    """The ranges the IR was captured with: min/max from its ``torch.export.Dim``s, opt from
    the example inputs (capture traces at the recipe's ``opt``, never below 2)."""
    dims: dict[str, DimRange] = {}
    for spec, shapes, example in zip(
        ir.inputs, ir.dynamic_shapes or [{}] * len(ir.inputs), ir.example_inputs, strict=True
    ):
        for axis, dim in (shapes or {}).items():
            name = spec.dynamic_axes.get(axis, getattr(dim, "__name__", str(axis)))
            low, high = int(dim.min), int(dim.max)
            opt = min(max(int(example.shape[axis]), low), high)
            dims.setdefault(name, DimRange(min=low, opt=opt, max=high))
    return dims


def uncovered(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Why no profile covers ``shapes`` (one line per input and profile), or [] if one does."""
    reasons: list[str] = []
    for index, profile in enumerate(profiles):
        misses = [
            f"{name} {tuple(shape)} is outside {_span(profile[name])}"
            for name, shape in shapes.items()
            if name in profile and not profile[name].covers(shape)
        ]
        if not misses:
            return []
        reasons.append(f"profile {index}: " + "; ".join(misses))
    return reasons


def check_covered(
    profiles: Sequence[Profile],
    specs: Sequence[InputSpec],
    shapes: Mapping[str, Sequence[int]],
    *,
    label: str = "recipe",
    data_field: str = "data.verification",
) -> None:
    """Raise when no profile covers ``shapes``, naming the ``[model.dims]`` axis to widen."""
    reasons = uncovered(profiles, shapes)
    if not reasons:
        return
    axis = offending_axis(profiles[0], specs, shapes)
    field = f"model.dims.{axis}" if axis else "model.dims"
    raise RecipeError(
        f"the TensorRT profiles do not cover the {data_field.rsplit('.', 1)[-1]} inputs: "
        + " | ".join(reasons),
        file=label,
        field=field,
        fix=f"widen [{field}] to include these sizes, or change {data_field} "
        "(batch_size, sequence_length) to fit the ranges",
    )


def offending_axis(
    profile: Profile, specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]]
) -> str | None:
    """The name of the first dynamic axis whose size falls outside ``profile``."""
    for spec in specs:
        shape, span = shapes.get(spec.name), profile.get(spec.name)
        if shape is None or span is None or len(shape) != len(span.min):
            continue
        for axis, size in enumerate(shape):
            if not span.min[axis] <= size <= span.max[axis]:
                return spec.dynamic_axes.get(axis)
    return None


def _span(shape_range: ShapeRange) -> str:
    return (
        "["
        + ", ".join(
            f"{lo}" if lo == hi else f"{lo}..{hi}"
            for lo, hi in zip(shape_range.min, shape_range.max, strict=True)
        )
        + "]"
    )


def profiles_to_json(profiles: Sequence[Profile]) -> list[dict[str, Any]]:
    return [{name: r.to_json() for name, r in profile.items()} for profile in profiles]


def profiles_from_json(data: Sequence[Mapping[str, Mapping[str, Sequence[int]]]]) -> list[Profile]:
    return [
        {
            name: ShapeRange(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"]))
            for name, r in profile.items()
        }
        for profile in data
    ]
