"""Validated configuration: the pydantic bases that every recipe table, pass config and backend
option model share, so that each refuses what the others refuse and words its errors alike.

A boolean is never a number (``batch_size = true`` is an error, not 1), unknown keys are
errors (:class:`Strict`), and an error carries its fix (:func:`problem`, which the recipe's
error rendering prints as the ``fix:`` line). :class:`DimRange`, the range of one dynamic
axis, lives here because loaders, input specs and the recipe all speak it.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_AXIS = 1_048_576  # a dynamic axis, a fixed input size, a sequence length


def problem(message: str, fix: str) -> PydanticCustomError:
    """A validation error that carries its fix (:func:`fxopt.run.validation.validation_error`
    prints it)."""
    return PydanticCustomError("fxopt", "{message}", {"message": message, "fix": fix})


def at_most(limit: int, fix: str) -> AfterValidator:
    def check(value: int | None) -> int | None:
        if value is not None and value > limit:
            raise problem(f"must be at most {limit}", fix)
        return value

    return AfterValidator(check)


def _scalar_types(annotation: Any) -> set[type]:
    """Scalar types a field takes: ``int | None`` -> {int, NoneType}, ``Literal[1]`` -> {int}."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else set()


def _wants_number(annotation: Any) -> str | None:
    """``"an integer"`` / ``"a number"`` when a field takes numbers and no booleans."""
    leaves = _scalar_types(annotation)
    if bool in leaves or not leaves & {int, float}:
        return None
    return "a number" if float in leaves else "an integer"


class NumbersNotBooleans(BaseModel):
    """A model whose int and float fields refuse booleans, which pydantic would take as 1 / 0.

    Fields typed ``bool | int`` keep their booleans. The recipe's tables are such models; a
    pass's or a backend's config can be one too (subclass this), and its error then names the
    field and the fix the same way.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            info_field = cls.model_fields[info.field_name]
            wanted = _wants_number(info_field.annotation)
            if wanted is not None:
                default = info_field.default
                example = default if type(default) in (int, float) else 1
                raise problem(
                    f"{wanted} is expected here, not a boolean",
                    f"write a number, e.g. {info.field_name} = {example}",
                )
        return value


class Strict(NumbersNotBooleans):
    """Base for every recipe table: unknown keys are errors, never silently ignored; nor are
    booleans numbers (``batch_size = true`` is an error, not 1)."""

    model_config = ConfigDict(extra="forbid")


AXIS_SIZE = at_most(MAX_AXIS, "narrow the range to the sizes the model really takes")


class DimRange(Strict):
    """The range one dynamic axis may take; ``opt`` is the shape to tune and time for.

    ``min`` may be 0 for an axis that can be empty: a language model's cached tokens
    (``past_sequence``) before the first step."""

    min: Annotated[int, AXIS_SIZE] = Field(ge=0)
    max: Annotated[int, AXIS_SIZE] = Field(ge=1)
    opt: Annotated[int | None, AXIS_SIZE] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DimRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.opt is not None and not self.min <= self.opt <= self.max:
            raise ValueError(f"opt ({self.opt}) must lie in [min, max] = [{self.min}, {self.max}]")
        return self

    @property
    def optimal(self) -> int:
        return self.opt if self.opt is not None else min(max(self.min, 8), self.max)
