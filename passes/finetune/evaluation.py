"""Clean and robust accuracy, and the objective's loss, before and after fine-tuning.

Robust accuracy is accuracy under PGD of the recipe's strength (its epsilon, norm and
target, ``eval_pgd_steps`` iterations, no random start so it is deterministic). Labels come
from the data when it has them, else from the original model's top-1 (then the numbers say
how often the model still agrees with the original under attack).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .attacks import PGD, AttackProblem
from .config import AdversarialConfig
from .sites import Site

Batch = dict[str, torch.Tensor]
Forward = Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]]


def eval_config(adversarial: AdversarialConfig, steps: int) -> AdversarialConfig:
    return adversarial.model_copy(update={"steps": steps, "step_size": None, "random_start": False})


def accuracy(
    forward: Forward,
    site: Site,
    batches: list[Batch],
    labels: list[torch.Tensor],
    attack: AdversarialConfig | None,
) -> float:
    """Top-1 accuracy of ``forward`` on ``batches``, under PGD when ``attack`` is given."""
    correct = total = 0
    for batch, target in zip(batches, labels, strict=True):
        delta = None
        if attack is not None:

            def loss(d: torch.Tensor, batch: Batch = batch, target: torch.Tensor = target):
                logits = forward(site.args(batch, d))[0].float()
                return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

            problem = AttackProblem(
                loss,
                site.shape(batch),
                attack,
                attack="pgd",
                clean=site.clean_value(batch),
                device=target.device,
            )
            delta = PGD(attack).perturb(problem)
        with torch.no_grad():
            logits = forward(site.args(batch, delta))[0]
        site.args(batch, None)
        predicted = logits.argmax(dim=-1).reshape(-1)
        correct += int((predicted == target.reshape(-1)).sum())
        total += target.numel()
    return correct / max(total, 1)


def mean_loss(
    forward: Forward,
    site: Site | None,
    batches: list[Batch],
    loss: Callable[[list[torch.Tensor], Batch, int], torch.Tensor],
) -> float:
    """The objective averaged over ``batches`` (``loss(outputs, batch, index)``)."""
    values = []
    with torch.no_grad():
        for index, batch in enumerate(batches):
            args = site.args(batch, None) if site else tuple(batch.values())
            values.append(float(loss(forward(args), batch, index)))
    return sum(values) / max(len(values), 1)
