"""Selection: how many units each group keeps, and which.

``scope = "layer"`` removes the ratio from every group on its own (uniform sizes, a
``config.json`` with one number per key); ``"global"`` ranks the units of all groups of a kind
together, each group's scores divided by its mean, so layers that matter less lose more.
Kept counts are rounded to the nearest count whose channels (units × unit width) are a
multiple of ``round_to``; a group smaller than ``round_to`` stays whole. A ratio that would
empty a group keeps one unit and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .group import Group


@dataclass
class Decision:
    group: Group
    #: sorted indices of the units kept
    keep: np.ndarray
    clamped: bool = False

    @property
    def removed(self) -> int:
        return self.group.size - len(self.keep)


def select(
    groups: Sequence[Group],
    scores: dict[int, np.ndarray],
    ratios: dict[str, float],
    *,
    round_to: int = 1,
    scope: str = "layer",
) -> list[Decision]:
    """One decision per group whose kind has a ratio."""
    counts: dict[int, int] = {}
    for kind, ratio in ratios.items():
        members = [g for g in groups if g.kind == kind]
        if scope == "global":
            counts.update(_global_counts(members, scores, ratio))
        else:
            counts.update({g.id: g.size - round(ratio * g.size) for g in members})
    decisions = []
    for group in groups:
        if group.id not in counts:
            continue
        count, clamped = counts[group.id], False
        if count < 1:
            count, clamped = 1, True
        count = _aligned(count, group, round_to)
        order = np.argsort(-scores[group.id], kind="stable")
        decisions.append(Decision(group, np.sort(order[:count]), clamped))
    return decisions


def _global_counts(
    groups: Sequence[Group], scores: dict[int, np.ndarray], ratio: float
) -> dict[int, int]:
    if not groups:
        return {}
    normalized = [scores[g.id] / (scores[g.id].mean() or 1.0) for g in groups]
    pooled = np.sort(np.concatenate(normalized))
    removed = round(ratio * len(pooled))
    if removed == 0:
        return {g.id: g.size for g in groups}
    threshold = pooled[removed - 1]
    counts = {}
    for group, values in zip(groups, normalized, strict=True):
        counts[group.id] = int((values > threshold).sum())
    return counts


def _aligned(count: int, group: Group, round_to: int) -> int:
    """The multiple of ``round_to`` channels nearest to ``count`` units (at least one
    multiple); the whole group when even one multiple does not fit."""
    if round_to <= 1:
        return count
    step = round_to // math.gcd(round_to, group.unit)  # units per aligned block
    aligned = max(step, math.floor(count / step + 0.5) * step)
    return aligned if aligned <= group.size else group.size
