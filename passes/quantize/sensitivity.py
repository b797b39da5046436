"""Accuracy-aware selection: the fewest layers left in float that meet the budget.

Each quantized layer's sensitivity is measured alone (only that layer quantized, the rest
float, on the verification set); layers are then floated costliest first, and a binary
search over how many finds the smallest prefix whose fully built graph meets the recipe's
``[verify]`` budget. Every candidate is measured, never extrapolated: the answer is a graph
that was actually evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fxopt.engine.errors import BudgetError
from fxopt.run.recipe import VerifySection
from fxopt.run.verify import check_budget

Metrics = dict[str, float]
#: the figures a layer's cost is reported in
COST_METRICS = ("cosine_mean", "cosine_min", "top1_agreement")


def score(metrics: Metrics, budget: VerifySection) -> float:
    """The worst margin over the budget's bounds (>= 0 means every bound holds)."""
    margins = [line.margin for line in check_budget(metrics, budget)]
    return min((m for m in margins if m is not None), default=float("inf"))


def meets(metrics: Metrics, budget: VerifySection) -> bool:
    return all(line.passed for line in check_budget(metrics, budget))


def describe(metrics: Metrics, budget: VerifySection) -> str:
    """``cosine_mean = 0.991200 (min_cosine 0.995)``, one item per bound."""
    return ", ".join(
        f"{line.metric} = {line.value:.6f} ({line.field} {line.bound})"
        for line in check_budget(metrics, budget)
        if line.value is not None
    )


@dataclass
class Selection:
    """The layers to keep in float, the metrics of the graph built that way, and the cost
    measured for every layer (drop of each figure vs. the float model when quantized alone)."""

    float_layers: list[str]
    metrics: Metrics
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluations: int = 0

    def to_json(self, names: dict[str, str]) -> dict[str, Any]:
        return {
            "float_layers": {
                names.get(layer, layer): self.costs.get(layer, {}) for layer in self.float_layers
            },
            "metrics": self.metrics,
            "evaluations": self.evaluations,
        }


def select_float_layers(
    layers: Sequence[str],
    measure: Callable[[frozenset[str] | None, frozenset[str]], Metrics],
    budget: VerifySection,
    *,
    max_float: int | None,
    advance: Callable[[int], None] = lambda n: None,
    label: str = "recipe",
) -> Selection:
    """Choose the float layers. ``measure(only, keep_float)`` builds and evaluates a graph
    quantizing only ``only`` (``None``: all) minus ``keep_float``."""
    evaluations = 0

    def run(only: frozenset[str] | None, keep: frozenset[str]) -> Metrics:
        nonlocal evaluations
        evaluations += 1
        advance(1)
        return measure(only, keep)

    everything = run(None, frozenset())
    if meets(everything, budget):
        return Selection([], everything, evaluations=evaluations)
    reference = run(frozenset(), frozenset())  # nothing quantized: the float graph
    alone = {layer: run(frozenset({layer}), frozenset()) for layer in layers}
    costs = {layer: _drops(reference, m) for layer, m in alone.items()}
    order = sorted(layers, key=lambda layer: score(alone[layer], budget))
    limit = min(max_float if max_float is not None else len(order) - 1, len(order) - 1)
    tried: dict[int, Metrics] = {0: everything}
    if limit >= 1:
        tried[limit] = run(None, frozenset(order[:limit]))
    if limit < 1 or not meets(tried[limit], budget):
        best_k = max(tried, key=lambda k: score(tried[k], budget))
        raise BudgetError(
            f"accuracy-aware quantization cannot meet the budget: the best selection "
            f"({best_k} of {len(order)} layers in float) reached "
            f"{describe(tried[best_k], budget)}",
            file=label,
            field="verify",
            fix="relax [verify], allow more float layers (max_float_layers), or try another "
            "observer, outlier_split = true or a quantize.smoothquant pass",
        )
    low, high = 1, limit  # high always meets the budget
    while low < high:
        middle = (low + high) // 2
        tried[middle] = run(None, frozenset(order[:middle]))
        if meets(tried[middle], budget):
            high = middle
        else:
            low = middle + 1
    chosen = order[:high]
    return Selection(
        chosen,
        tried[high],
        costs={layer: costs[layer] for layer in chosen},
        evaluations=evaluations,
    )


def _drops(reference: Metrics, quantized: Metrics) -> dict[str, float]:
    return {
        f"{key}_drop": round(reference[key] - quantized[key], 6)
        for key in COST_METRICS
        if key in reference and key in quantized
    }
