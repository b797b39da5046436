"""The hooks the ``finetune`` pass owns: adversarial attacks by name, and its training loop's
hooks.

Added to the plugin host by :func:`fxopt.passes.finetune.attacks.fxopt_add_hookspecs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxopt.engine.hookspecs import hookspec

if TYPE_CHECKING:
    import torch

    from fxopt.engine.registry import Registrar

    from .attacks import Attack


@hookspec
def fxopt_register_attacks(registry: Registrar[type[Attack]]) -> None:
    """Register adversarial attacks (:class:`fxopt.passes.finetune.Attack` subclasses) by the
    name a recipe's ``adversarial.method`` uses (``fgsm``, ``pgd``, ``freelb`` are built in).

    Example::

        @hookimpl
        def fxopt_register_attacks(registry):
            registry.register("mycorp.noise", NoiseAttack)
    """


@hookspec(firstresult=True)
def fxopt_adversarial_perturb(
    attack: str,
    target: str,
    step: int,
    iteration: int,
    delta: torch.Tensor,
    inputs: dict[str, torch.Tensor],
) -> torch.Tensor | None:
    """Refine a perturbation after each attack iteration of training step ``step``.

    ``target`` is ``"pixels"`` or ``"embeddings"``; ``inputs`` is the clean batch (to mask
    padding tokens, say). Return a tensor of ``delta``'s shape to replace it, or ``None`` to
    keep it; the result is projected back into the recipe's epsilon ball either way.
    ``firstresult``: the first plugin that returns a tensor wins.
    """


@hookspec
def fxopt_train_step_begin(
    step: int, epoch: int, batch: dict[str, torch.Tensor], model: torch.nn.Module
) -> None:
    """Called before each optimizer step of ``finetune`` with this rank's batch (on device)."""


@hookspec
def fxopt_train_step_end(
    step: int, epoch: int, loss: float, lr: float, model: torch.nn.Module
) -> bool | None:
    """Called after each optimizer step. Return ``True`` to stop training after this step
    (a custom early-stopping rule); under ``torchrun`` rank 0's answer counts.
    """
