"""Fidelity: compare a candidate's outputs with the reference model's, and check the budget.

What is compared is the task's to say (:class:`~fxopt.engine.task.Task`: pooled sentence
embeddings for encoders, logits plus top-1 agreement for classifiers, every output flattened
for the generic task). The cosine is per sample, so ``cosine_min`` finds the one sentence a
change broke.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fxopt.engine.specs import conform
from fxopt.engine.task import Evidence, Task

from .recipe import VerifySection
from .reference import feeds, on_set, run_batches
from .state import RunState
from .timing import reference_vs_optimized

#: budget field -> (metric it bounds, True when the metric must be at least the bound)
BOUNDS: dict[str, tuple[str, bool]] = {
    "min_cosine": ("cosine_mean", True),
    "min_cosine_worst": ("cosine_min", True),
    "max_abs": ("max_abs", False),
    "max_rel_l2": ("rel_l2", False),
    "min_top1_agreement": ("top1_agreement", True),
    "max_perplexity_increase": ("perplexity_increase", False),
    "min_generation_agreement": ("generation_agreement", True),
}


def compare(
    reference: list[list[np.ndarray]],
    candidate: list[list[np.ndarray]],
    masks: list[np.ndarray | None],
    task: Task | None = None,
) -> dict[str, float]:
    """Metrics of ``candidate`` against ``reference``; both are per batch, per output
    (``task``: what to compare, the generic task's flattened outputs when ``None``)."""
    task = task or Task()
    if task.compared_outputs is not None:
        reference = [b[: task.compared_outputs] for b in reference]
        candidate = [b[: task.compared_outputs] for b in candidate]
    ref = [
        np.concatenate([b[i] for b in reference]).astype(np.float64)
        for i in range(len(reference[0]))
    ]
    got = [
        np.concatenate([b[i] for b in candidate]).astype(np.float64)
        for i in range(len(candidate[0]))
    ]
    mask = np.concatenate(masks) if all(m is not None for m in masks) else None
    first_ref, first_got = task.vectors(ref[0], mask), task.vectors(got[0], mask)
    cosine = _cosine(first_ref, first_got)
    diff = np.concatenate([(g - r).ravel() for r, g in zip(ref, got, strict=True)])
    norm = np.sqrt(sum(float((r**2).sum()) for r in ref))
    metrics = {
        "samples": float(len(cosine)),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_l2": float(np.sqrt((diff**2).sum()) / norm) if norm > 0 else 0.0,
    }
    return {**metrics, **task.extra_metrics(ref, got)}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    return np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))


@dataclass
class BudgetLine:
    field: str
    metric: str
    bound: float
    value: float | None
    passed: bool

    @property
    def margin(self) -> float | None:
        return None if self.value is None else self.value - self.bound

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "metric": self.metric,
            "bound": self.bound,
            "value": self.value,
            "passed": self.passed,
            "margin": self.margin,
        }


def check_budget(metrics: dict[str, float], budget: VerifySection) -> list[BudgetLine]:
    lines = []
    for field, (metric, at_least) in BOUNDS.items():
        bound = getattr(budget, field)
        if bound is None:
            continue
        value = metrics.get(metric)
        passed = value is not None and (value >= bound if at_least else value <= bound)
        lines.append(BudgetLine(field, metric, bound, value, passed))
    return lines


@dataclass
class SetVerdict:
    """One verification set's metrics and the budget lines they meet or miss."""

    metrics: dict[str, float]
    budget: list[BudgetLine]

    @property
    def passed(self) -> bool:
        return all(line.passed for line in self.budget)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "budget": [line.to_json() for line in self.budget],
            "passed": self.passed,
        }


def stage(run: RunState) -> None:
    """Stage ``verify``: on each verification set, the artifact's outputs against the
    reference, what the task judges beyond them (a language model's perplexity and
    generation) and the budget; then latency, on the primary set."""
    for name, key in run.recipe.data.verification_keys().items():
        run.sets[name] = verify_set(run, name, key)
    if run.recipe.verify.latency:
        with run.output.stage("timing the artifact against the original model"):
            run.latency = latency(run)


def verify_set(run: RunState, name: str, key: str) -> SetVerdict:
    """The artifact on the verification set ``name`` (``key`` in ``run.splits``)."""
    batches, reference = run.splits[key], run.references[key]
    conformed = [conform(b, run.ir.inputs) for b in batches]
    candidate = run_batches(run.runner, conformed, run.output, on_set("artifact", name, run))
    metrics = compare(reference, candidate, run.masks(key), run.task)
    if type(run.task).judge is not Task.judge:  # the task has metrics of its own
        evidence = Evidence(
            batches,
            reference,
            candidate,
            run.task.reference_runner(run.loaded),
            run.runner,
            run.recipe.verify,
            conformed,
        )
        what = on_set(f"judging the artifact as a {run.task.name} model", name, run)
        with run.output.stage(what):
            metrics.update(run.task.judge(evidence))
    return SetVerdict(metrics, check_budget(metrics, run.recipe.verify))


def latency(run: RunState) -> dict[str, Any]:
    """The artifact's and the eager model's latency on the first verification batch."""
    batch = run.splits["verification"][0]
    reference = run.task.reference_runner(run.loaded)
    ref_feeds = feeds(batch, reference.input_names)
    got_feeds = feeds(conform(batch, run.ir.inputs), run.runner.input_names)
    return {
        "shape": {k: list(v.shape) for k, v in batch.items() if k in got_feeds},
        **reference_vs_optimized(
            lambda: reference.run(ref_feeds),
            lambda: run.runner.run(got_feeds),
            run.recipe.verify.latency_iters,
        ),
    }
