"""The report's typed model: what ``report.json`` holds, as a contract build systems can read.

A run builds a :class:`RunReport` from its result and dumps it as ``report.json``;
``optimize bench`` reads it back through the same model, so a missing or mistyped key is one
validation error naming it, not a ``KeyError`` deep in a command. ``docs/report.schema.json``
is :func:`report_schema`'s output, committed and checked by a test like the recipe's schema.
Backends add their own keys under ``artifacts`` and passes theirs under ``metrics``; those
stay open dictionaries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputEntry(_Model):
    name: str
    dtype: str
    shape: list[str | int]


class PassEntry(_Model):
    name: str
    seconds: float
    modified: bool
    metrics: dict[str, Any] = Field(description="the pass's own figures (open)")
    numerics: dict[str, float] = Field(description="the IR against the reference after it")
    nodes_before: int = 0
    nodes_after: int = 0
    warnings: list[str] = Field(default_factory=list, description="what the pass warned of")


class BudgetEntry(_Model):
    field: str = Field(description="the [verify] key, e.g. min_cosine")
    metric: str
    bound: float
    value: float | None
    passed: bool
    margin: float | None


class CostliestStep(_Model):
    name: str
    cosine_drop: float


class VerificationSet(_Model):
    """One named verification set's figures (``[data.verification.<name>]``)."""

    source: str = Field(description="the set's data source")
    metrics: dict[str, float]
    budget: list[BudgetEntry]
    passed: bool = Field(description="the [verify] budget held on this set")


class Verification(_Model):
    metrics: dict[str, float] = Field(description="on the (primary) verification set")
    budget: list[BudgetEntry] = Field(description="on the (primary) verification set")
    passed: bool = Field(description="the budget held on every verification set")
    costliest_step: CostliestStep | None = None
    sets: dict[str, VerificationSet] | None = Field(
        default=None,
        description="each named verification set, the primary one first (absent when the "
        "recipe gives one unnamed set)",
    )


class ModelSize(_Model):
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    ops_after: dict[str, int] = Field(default_factory=dict)


class Timing(_Model):
    p50: float
    p95: float
    mean: float
    iters: int
    first_s: float | None = None


class Latency(_Model):
    shape: dict[str, list[int]]
    reference: Timing
    optimized: Timing
    speedup_p50: float | None


class Artifacts(BaseModel):
    """What lowering wrote; backends add their own keys (versions, settings, statistics)."""

    model_config = ConfigDict(extra="allow")

    backend: str
    path: str = Field(description="the artifact to deploy, relative to the output")
    files: list[str]
    deploy: list[str] | None = Field(
        default=None, description="the files a deployment copies, when more than `path`"
    )
    warnings: list[str] = Field(default_factory=list)


class Target(_Model):
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)


class RunReport(_Model):
    """One run's ``report.json``."""

    fxopt: str
    passed: bool
    recipe: str | None
    model_path: str
    task: str
    inputs: list[InputEntry]
    dims: dict[str, dict[str, int | None]]
    passes: list[PassEntry]
    verify: Verification
    model: ModelSize
    latency_ms: Latency | None
    target: Target
    artifacts: Artifacts
    seconds: dict[str, float]
    #: set on the way out, not stored: how this answer was produced, and where it is
    cache: Literal["up-to-date", "restored"] | None = None
    out_dir: str | None = None


def report_schema() -> dict[str, Any]:
    return RunReport.model_json_schema()
