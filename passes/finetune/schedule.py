"""Learning-rate schedules: linear warmup, then cosine, linear or constant.

``lr_factor(step)`` is the multiplier of the base LR used for optimizer step ``step``
(0-based). Warmup ramps ``(step + 1) / warmup`` so the first step already learns; the decay
then runs over the remaining steps from 1 down to ``min_ratio``::

    >>> [round(lr_factor(s, total=6, warmup=2, kind="linear"), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
"""

from __future__ import annotations

import math

import torch


def warmup_steps(total: int, steps: int, ratio: float) -> int:
    """Warmup length from the recipe's ``warmup_steps`` or ``warmup_ratio``."""
    return min(total, steps if steps else round(ratio * total))


def lr_factor(step: int, *, total: int, warmup: int, kind: str, min_ratio: float = 0.0) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def scheduler(
    optimizer: torch.optim.Optimizer, *, total: int, warmup: int, kind: str, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total=total, warmup=warmup, kind=kind, min_ratio=min_ratio),
    )
