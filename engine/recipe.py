"""The recipe: a TOML file validated by pydantic models that refuse unknown keys.

Structure (``optimize schema`` prints the full JSON schema)::

    schema_version = 1
    [model]            where the model is, its task, its inputs and their dynamic axes
    [data.<split>]     calibration / finetune / verification sets, kept disjoint
    [[passes]]         name + that pass's own config table, run in order
    [target]           backend and its options
    [verify]           the fidelity budget the final artifact must meet

Each pass's ``config`` is validated by that pass's own ``Config`` model once the plugins are
loaded (:func:`bind_passes`), so its errors read ``passes[1].config.ratio`` like the rest.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RecipeError
from .toml_compat import tomllib

SCHEMA_VERSION = 1
DTYPES = ("int64", "int32", "float32", "float16", "bfloat16", "bool")


class Strict(BaseModel):
    """Base for every recipe table: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DimRange(Strict):
    """The range one dynamic axis may take; ``opt`` is the shape to tune and time for."""

    min: int = Field(ge=1)
    max: int = Field(ge=1)
    opt: int | None = Field(default=None, ge=1)

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


class InputDecl(Strict):
    """One model input: dtype, and a shape of named dynamic axes and fixed sizes."""

    dtype: Literal[DTYPES] = "int64"  # type: ignore[valid-type]
    shape: list[str | int] = Field(min_length=1)
    low: float | None = Field(default=None, description="smallest value for synthetic data")
    high: float | None = Field(default=None, description="largest value (exclusive) for ints")


class ModelSection(Strict):
    path: str | None = Field(
        default=None,
        description="model directory or .pt2 archive used when the command line names none; "
        "relative to the recipe, or 'pkg:<python package>/<subdir>' for a model a package ships",
    )
    task: str | None = Field(
        default=None,
        description="sentence-embedding, feature-extraction, sequence-classification, "
        "image-classification, causal-lm; inferred from the model when omitted",
    )
    loader: str = Field(default="auto", description="a registered loader, or 'auto'")
    inputs: dict[str, InputDecl] = Field(
        default_factory=dict, description="override the inputs the loader proposes"
    )
    dims: dict[str, DimRange] = Field(
        default_factory=dict, description="ranges of the named dynamic axes (batch, sequence...)"
    )


class DataSplit(Strict):
    source: str = Field(description="a registered dataset: text, jsonl, npz, synthetic, ...")
    path: str | None = Field(default=None, description="file for file-based sources")
    samples: int = Field(default=64, ge=1)
    batch_size: int = Field(default=8, ge=1)
    sequence_length: int | None = Field(default=None, ge=1, description="token length for text")
    field: str = Field(default="text", description="JSONL field holding the text")
    label_field: str | None = Field(default=None, description="JSONL field holding a label")
    seed: int = 0


class DataSection(Strict):
    calibration: DataSplit | None = None
    finetune: DataSplit | None = None
    verification: DataSplit = Field(
        default_factory=lambda: DataSplit(source="synthetic", samples=32, batch_size=8)
    )


class PassSpec(Strict):
    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class TargetSection(Strict):
    backend: str = "onnxruntime"
    options: dict[str, Any] = Field(
        default_factory=dict, description="backend options, validated by the backend"
    )


class VerifySection(Strict):
    """The fidelity budget. Unset bounds are reported but not enforced."""

    min_cosine: float | None = Field(default=0.99, ge=-1, le=1, description="mean cosine")
    min_cosine_worst: float | None = Field(default=None, ge=-1, le=1, description="worst sample")
    max_abs: float | None = Field(default=None, ge=0)
    max_rel_l2: float | None = Field(default=None, ge=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    pass_samples: int = Field(
        default=16, ge=0, description="samples used to measure each pass's numerics (0: off)"
    )
    latency: bool = Field(default=True, description="time reference and artifact in the report")
    latency_iters: int = Field(
        default=10,
        ge=1,
        description="timed runs of each side, interleaved, each after its own warm-up",
    )


class Recipe(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    passes: list[PassSpec] = Field(default_factory=list)
    target: TargetSection = Field(default_factory=TargetSection)
    verify: VerifySection = Field(default_factory=VerifySection)

    # not part of the file: where it came from, for messages and relative paths
    _source: Path | None = None

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def label(self) -> str:
        return self._source.name if self._source else "recipe"

    def resolve_path(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe file."""
        path = Path(value).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file; every problem becomes a :class:`RecipeError`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            "recipe file not found", file=path, fix="pass the path of an existing .toml recipe"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"not valid TOML: {exc}", file=path.name) from None
    except UnicodeDecodeError:
        raise RecipeError("not a UTF-8 text file", file=path.name) from None
    return parse_recipe(data, source=path)


def parse_recipe(data: dict[str, Any], *, source: Path | None = None) -> Recipe:
    label = source.name if source else "recipe"
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, Recipe, file=label) from None
    recipe._source = source.resolve() if source else None
    return recipe


def validation_error(
    exc: ValidationError, model: type[BaseModel], *, file: str, prefix: str = ""
) -> RecipeError:
    """Turn pydantic's errors into one message: ``file: a.b[2].c: what (got x)`` per line."""
    lines = []
    for err in exc.errors():
        loc = prefix + _dotted(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{loc}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {_lower_first(msg)} (got {err['input']!r})")
    first, *rest = lines
    field, _, message = first.partition(": ")
    if rest:
        message += "".join(f"\n  {file}: {line}" for line in rest)
    return RecipeError(message, file=file, field=field)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` inside ``model``, to list them next to an unknown key."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    """Strip ``X | None`` to ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else tp
    return tp
