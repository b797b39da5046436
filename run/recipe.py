"""The recipe: a TOML file validated by pydantic models that refuse unknown keys.

Structure (``optimize schema`` prints the full JSON schema)::

    schema_version = 1
    [model]            where the model is, its task, its inputs and their dynamic axes
    [data.<split>]     calibration / finetune / verification sets, kept disjoint (or named
                       verification sets, [data.verification.<name>])
    [[passes]]         name + that pass's own config table, run in order
    [target]           backend and its options
    [verify]           the fidelity budget the final artifact must meet

Each pass's ``config`` is validated by that pass's own ``Config`` model once the plugins are
loaded (:func:`fxopt.run.bind.bind`), so its errors read ``passes[1].config.ratio`` like
the rest.

Numbers are checked as strictly as keys: a boolean is never a number (``batch_size = true``
is an error, not 1), input ranges are finite and ordered, and every count that sizes an
allocation or a loop has an upper bound, so a typo (``samples = 2**40``) is an error at load
time instead of a hang. The bounds are checked by validators, not ``Field(le=...)``, so the
committed JSON schema stays as it is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fxopt.engine.config import MAX_AXIS, DimRange, Strict, at_most, problem
from fxopt.engine.errors import RecipeError

from .toml_compat import tomllib
from .validation import validation_error

SCHEMA_VERSION = 1
DTYPES = ("int64", "int32", "float32", "float16", "bfloat16", "bool")

#: upper bounds of the counts that size an allocation or a loop: far above any real recipe,
#: low enough that a typo is an error at load time, not a hang or an out-of-memory kill
MAX_SAMPLES = 1_000_000
MAX_BATCH_SIZE = 65_536
MAX_LATENCY_ITERS = 10_000
MAX_SEED = 2**32 - 1

#: the values each input dtype can hold (ints: ``high`` is exclusive)
INT_RANGES = {"int64": (-(2**63), 2**63), "int32": (-(2**31), 2**31)}
FLOAT_MAX = {"float32": 3.4028234e38, "bfloat16": 3.3895313e38, "float16": 65504.0}
#: synthetic data's range when the recipe gives none
DEFAULT_RANGE = {"int": (0, 2), "float": (0.0, 1.0)}

MINIMAL_RECIPE_FIX = (
    "start from recipes/quickstart.toml: schema_version = 1, the [[passes]] to run and the "
    "[target] backend (docs/recipes.md lists every table)"
)


def _no_bool_size(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem(
            "a fixed size is expected here, not a boolean",
            "write a number (a fixed size) or a name (a dynamic axis), e.g. "
            'shape = ["batch", "sequence"]',
        )
    return value


def _axis(value: str | int) -> str | int:
    if isinstance(value, int) and not 1 <= value <= MAX_AXIS:
        raise problem(
            f"a fixed size must lie in [1, {MAX_AXIS}]",
            "write the input's size on this axis, or a name for a dynamic axis",
        )
    if isinstance(value, str) and not value.strip():
        raise problem("an axis name must not be empty", 'name the axis, e.g. "batch"')
    return value


def _seed(value: int) -> int:
    if value < 0 or value > MAX_SEED:
        where = "must not be negative" if value < 0 else f"must be at most {MAX_SEED}"
        raise problem(where, "use a small non-negative seed, e.g. 0")
    return value


class InputDecl(Strict):
    """One model input: dtype, and a shape of named dynamic axes and fixed sizes."""

    dtype: Literal[DTYPES] = "int64"  # type: ignore[valid-type]
    shape: list[Annotated[str | int, BeforeValidator(_no_bool_size), AfterValidator(_axis)]] = (
        Field(min_length=1)
    )
    low: float | None = Field(default=None, description="smallest value for synthetic data")
    high: float | None = Field(default=None, description="largest value (exclusive) for ints")

    @field_validator("low", "high")
    @classmethod
    def _representable(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Finite, whole for integer inputs, and within what the dtype can hold."""
        if value is None:
            return value
        name, dtype = info.field_name, info.data.get("dtype", "int64")
        fix = f"set {name} to a finite value the input can take (synthetic data lies in it)"
        if not math.isfinite(value):
            raise problem("must be a finite number", fix)
        if dtype in INT_RANGES:
            lowest, highest = INT_RANGES[dtype]
            if not value.is_integer():
                raise problem(f"an {dtype} input's {name} must be a whole number", fix)
            if not lowest <= value <= highest:
                raise problem(f"outside what {dtype} holds ([{lowest}, {highest}])", fix)
        elif dtype in FLOAT_MAX and abs(value) > FLOAT_MAX[dtype]:
            raise problem(f"outside what {dtype} holds (|value| <= {FLOAT_MAX[dtype]:g})", fix)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> InputDecl:
        if self.dtype == "bool":
            return self
        integer = self.dtype in INT_RANGES
        default_low, default_high = DEFAULT_RANGE["int" if integer else "float"]
        low = self.low if self.low is not None else default_low
        high = self.high if self.high is not None else default_high
        if (low < high) if integer else (low <= high):
            return self

        def shown(value: float, given: float | None, default: str) -> str:
            text = str(int(value)) if integer else repr(float(value))
            return text if given is not None else f"{text}, the default when {default} is unset"

        low_text = shown(low, self.low, "low")
        high_text = shown(high, self.high, "high")
        if integer:
            message = f"low ({low_text}) must be below high ({high_text}): high is exclusive"
        else:
            message = f"low ({low_text}) must be at most high ({high_text})"
        raise problem(
            message,
            "set low and high to the range of the input's values, e.g. low = 0, high = 1000 "
            "for token ids below 1000",
        )


class ModelSection(Strict):
    path: str | None = Field(
        default=None,
        description="model directory or .pt2 archive used when the command line names none; "
        "relative to the recipe, 'pkg:<python package>/<subdir>' for a model a package ships, "
        "or 'builtin:<name>' for a model a loader builds itself (builtin:digits-cnn)",
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
    samples: Annotated[
        int,
        at_most(
            MAX_SAMPLES, "use fewer samples: a split is held in memory (a few hundred verify well)"
        ),
    ] = Field(default=64, ge=1)
    batch_size: Annotated[
        int, at_most(MAX_BATCH_SIZE, "use a batch the model can run at once, e.g. 8 to 64")
    ] = Field(default=8, ge=1)
    sequence_length: Annotated[
        int | None,
        at_most(MAX_AXIS, "use the token length the model runs at, at most its context"),
    ] = Field(default=None, ge=1, description="token length for text")
    field: str = Field(default="text", description="JSONL field holding the text")
    label_field: str | None = Field(default=None, description="JSONL field holding a label")
    seed: Annotated[int, AfterValidator(_seed)] = 0


#: the name of a verification set, ``[data.verification.<name>]``
SET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SETS_FIX = (
    "give one set (source = ..., samples = ...) or name each set in a table of its own, "
    'e.g. [data.verification.docstrings] with source = "stdlib-docstrings"'
)


class DataSection(Strict):
    """The data sets. ``verification`` is one set or several named ones (the first is the
    primary one, which every pass is measured on and the latency is timed on); the artifact
    must meet the ``[verify]`` budget on each."""

    calibration: DataSplit | None = None
    finetune: DataSplit | None = None
    verification: DataSplit | dict[str, DataSplit] = Field(
        default_factory=lambda: DataSplit(source="synthetic", samples=32, batch_size=8),
        description="one set, or named sets ([data.verification.<name>], the first the "
        "primary one); the artifact must meet [verify] on each",
    )

    @field_validator("verification", mode="wrap")
    @classmethod
    def _one_or_named(cls, value: Any, _handler: Any) -> DataSplit | dict[str, DataSplit]:
        """One set, or a table of named sets, never both (validated as the form it is: a plain
        union would report every error of both forms)."""
        if not isinstance(value, dict) or not value:
            if value == {}:
                raise problem("the table names no verification set and no source", SETS_FIX)
            return DataSplit.model_validate(value)
        tables = [k for k, v in value.items() if isinstance(v, dict | DataSplit)]
        if not tables:
            return DataSplit.model_validate(value)
        if len(tables) < len(value):
            keys = ", ".join(k for k in value if k not in tables)
            raise problem(
                f"mixes a set's keys ({keys}) with named sets ({', '.join(tables)})", SETS_FIX
            )
        if bad := [k for k in tables if not SET_NAME.fullmatch(k)]:
            raise problem(
                f"set name {bad[0]!r} is not a plain identifier",
                "name each set with letters, digits and underscores, not starting with a "
                "digit, e.g. [data.verification.reference]",
            )
        return _NAMED_SETS.validate_python(value)

    def verification_keys(self) -> dict[str, str]:
        """Each verification set's name -> its key in a run's data (``run.splits``): the
        primary set's is ``verification``, another's ``verification.<name>``; one unnamed set
        is named ``verification``."""
        if isinstance(self.verification, DataSplit):
            return {"verification": "verification"}
        return {
            n: f"verification.{n}" if i else "verification" for i, n in enumerate(self.verification)
        }

    def splits(self) -> dict[str, DataSplit]:
        """Every set by its key in a run's data, in load order (calibration, finetune, the
        verification sets)."""
        found = {k: s for k in ("calibration", "finetune") if (s := getattr(self, k)) is not None}
        sets = self.verification if isinstance(self.verification, dict) else None
        for name, key in self.verification_keys().items():
            found[key] = sets[name] if sets else self.verification
        return found

    def field(self, key: str) -> str:
        """Where the set ``key`` (of :meth:`splits`) is in the recipe, for messages."""
        if key == "verification" and isinstance(self.verification, dict):
            return f"data.verification.{next(iter(self.verification))}"
        return f"data.{key}"


_NAMED_SETS = TypeAdapter(dict[str, DataSplit])


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
    max_perplexity_increase: float | None = Field(
        default=None, ge=0, description="language models: perplexity may rise by this share"
    )
    min_generation_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="language models: share of greedy tokens equal to the original model's",
    )
    generation_prompts: Annotated[int, at_most(1024, "use fewer prompts, e.g. 4 to 32")] = Field(
        default=4, ge=0, description="language models: prompts generated from (0: off)"
    )
    generation_tokens: Annotated[int, at_most(4096, "generate fewer tokens, e.g. 16 to 64")] = (
        Field(default=16, ge=1, description="language models: greedy tokens per prompt")
    )
    pass_samples: Annotated[
        int, at_most(MAX_SAMPLES, "measure each pass on fewer samples, e.g. 16 (0: off)")
    ] = Field(default=16, ge=0, description="samples used to measure each pass's numerics (0: off)")
    latency: bool = Field(default=True, description="time reference and artifact in the report")
    latency_iters: Annotated[int, at_most(MAX_LATENCY_ITERS, "time fewer runs, e.g. 10 to 100")] = (
        Field(
            default=10,
            ge=1,
            description="timed runs of each side, interleaved, each after its own warm-up",
        )
    )


class SearchSection(Strict):
    """What ``optimize search`` varies and what it minimizes; a plain run ignores it.

    Each key of ``space`` names one value of the recipe: ``passes.<pass name>.<config key>``
    (``passes[<index>].<config key>`` when the pass appears twice), ``target.backend``,
    ``target.options.<key>`` or ``target`` (whole ``[target]`` tables, one per lowering). The
    candidates are every combination of the listed values."""

    space: dict[str, list[Any]] = Field(
        min_length=1,
        description="recipe value -> the values to try, e.g. "
        '"passes.prune.structured.ffn" = [0.2, 0.3, 0.4]',
    )
    objective: Literal["latency", "size"] = Field(
        default="latency",
        description="latency: the fastest artifact (median, the [verify] timing) that meets "
        "the budget; size: the smallest",
    )
    max_size_mb: float | None = Field(
        default=None, gt=0, description="an artifact larger than this many MB does not qualify"
    )
    latency_tie: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="latencies within this fraction of the fastest qualifying one count as "
        "equal, and the best cosine among them wins: a median of a few dozen timed runs moves "
        "by a few percent between candidates that compute the same thing",
    )
    finalists: int = Field(
        default=4,
        ge=0,
        le=16,
        description="at the end, this many of the fastest qualifying candidates are loaded "
        "together and timed again side by side (interleaved rounds, beside the original model) "
        "and the winner is ranked on those times: each candidate's own [verify] timing ran "
        "minutes apart from the others' and moves by more than they differ; 0 turns it off",
    )
    final_margin: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="a finalist's [verify] latency is within this fraction of the fastest's",
    )
    max_candidates: Annotated[
        int, at_most(MAX_SAMPLES, "narrow the search space, or search it in parts")
    ] = Field(default=64, ge=1, description="refuse larger spaces (--max-candidates overrides)")

    @field_validator("finalists")
    @classmethod
    def _finalists(cls, count: int) -> int:
        if count == 1:
            raise problem(
                "one finalist has nothing to be timed against",
                "set finalists = 0 to rank on each candidate's own timing, or 2 or more",
            )
        return count

    @field_validator("space")
    @classmethod
    def _values(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in space.items():
            if not values:
                raise problem(f"{key!r} lists no values", f"give {key!r} at least one value to try")
        return space


class Recipe(Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    passes: list[PassSpec] = Field(default_factory=list)
    target: TargetSection = Field(default_factory=TargetSection)
    verify: VerifySection = Field(default_factory=VerifySection)
    search: SearchSection | None = Field(
        default=None, description="the space `optimize search` explores (a run ignores it)"
    )

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
    if not data:
        raise RecipeError(
            "the recipe is empty (no keys, only comments or blank lines)",
            file=path.name,
            fix=MINIMAL_RECIPE_FIX,
        )
    recipe = parse_recipe(data, source=path)
    if set(data) == {"schema_version"}:
        raise RecipeError(
            "the recipe sets only schema_version: no model, data, passes, target or budget, "
            "so a run would silently export the model unchanged",
            file=path.name,
            fix=MINIMAL_RECIPE_FIX,
        )
    return recipe


def parse_recipe(data: dict[str, Any], *, source: Path | None = None) -> Recipe:
    label = source.name if source else "recipe"
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, Recipe, file=label) from None
    recipe._source = source.resolve() if source else None
    return recipe


def check_files(recipe: Recipe, *, builtin_models: tuple[str, ...] | None = None) -> None:
    """Every file ``recipe`` names exists: its model path (unless ``pkg:`` or ``builtin:``; a
    ``builtin:`` name must be one of ``builtin_models`` when given) and each split's ``path``.

    ``optimize validate`` calls this so that a recipe it calls "ok" does not fail on its first
    file read. One :class:`RecipeError` names every problem (the first as its field, the others
    on lines of their own, as :func:`validation_error` does)."""
    problems: list[tuple[str, str, str]] = []  # field, message, fix
    model = recipe.model.path
    if model is not None and model.startswith("builtin:"):
        name = model.removeprefix("builtin:")
        if builtin_models is not None and name not in builtin_models:
            known = ", ".join(f"builtin:{n}" for n in builtin_models) or "none is registered"
            problems.append(("model.path", f"no built-in model {name!r}", f"use one of: {known}"))
    elif model is not None and not model.startswith("pkg:"):
        path = recipe.resolve_path(model)
        if not path.exists():
            problems.append(
                (
                    "model.path",
                    f"model not found: {path}",
                    "point path at a model directory or .pt2 archive (relative paths start at "
                    "the recipe), or name a model a package ships ('pkg:<package>/<subdir>') or "
                    "fxopt builds ('builtin:<name>'), or leave path out and pass MODEL_DIR "
                    "when you run it",
                )
            )
    for key, split in recipe.data.splits().items():
        if split.path is None:
            continue
        path = recipe.resolve_path(split.path)
        fix = (
            "point path at an existing file (relative paths start at the recipe), or use a "
            "built-in source (`optimize passes` lists the datasets)"
        )
        field = f"{recipe.data.field(key)}.path"
        if not path.exists():
            problems.append((field, f"data file not found: {path}", fix))
        elif not path.is_file():
            problems.append((field, f"not a file: {path}", fix))
    if not problems:
        return
    (field, message, _), *rest = problems
    message += "".join(f"\n  {recipe.label}: {f}: {m}" for f, m, _ in rest)
    fixes = "; ".join(dict.fromkeys(fix for _, _, fix in problems))
    raise RecipeError(message, file=recipe.label, field=field, fix=fixes)
