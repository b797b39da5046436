"""Adversarial attacks: FGSM, PGD-k and FreeLB, and the base class a plugin's attack extends.

An attack sees an :class:`AttackProblem` (a loss as a function of the perturbation ``delta``,
the shape of ``delta``, and the recipe's epsilon, step size, steps and norm) and returns the
``delta`` to train on. It never touches the model or the data directly, so the same attack
works on pixels and on input embeddings, in one process or under DDP. Attacks register by
name through ``fxopt_register_attacks``, exactly as passes do::

    class Noise(Attack):
        name = "mycorp.noise"

        def perturb(self, problem):
            return problem.project(torch.randn(problem.shape) * problem.epsilon)

    @hookimpl
    def fxopt_register_attacks(registry):
        registry.register(Noise.name, Noise)

FreeLB also changes the training step (it accumulates the parameter gradients of every
ascent step), which is why :meth:`Attack.train_step` exists and is overridable.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fxopt.engine import hookimpl

from .config import AdversarialConfig


def per_sample_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each sample (flattened), shaped to broadcast against ``x``."""
    flat = x.reshape(x.shape[0], -1)
    value = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)
    return value.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass
class AttackProblem:
    """What an attack works on. ``loss(delta)`` is differentiable in ``delta``."""

    loss: Callable[[torch.Tensor], torch.Tensor]
    shape: torch.Size
    config: AdversarialConfig
    attack: str = ""
    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    generator: torch.Generator | None = None
    #: clean value of the perturbed tensor, when it is an input (clamping pixels)
    clean: torch.Tensor | None = None
    #: ``refine(delta, iteration)`` -> delta: the ``fxopt_adversarial_perturb`` hook
    refine: Callable[[torch.Tensor, int], torch.Tensor | None] | None = None
    #: the training loss at ``delta`` through the (possibly DDP-wrapped) model
    train_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: ``no_sync()`` of the DDP wrapper, for attacks that call ``backward`` several times
    no_sync: Callable[[], AbstractContextManager] = nullcontext
    #: backward of a training loss (scaled under fp16 autocast)
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()

    @property
    def epsilon(self) -> float:
        return self.config.epsilon

    @property
    def norm(self) -> str:
        return self.config.norm

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, device=self.device)

    def random_start(self) -> torch.Tensor:
        """Uniform in the linf ball; for l2, a random direction with a random radius."""
        noise = torch.rand(self.shape, generator=self.generator).to(self.device) * 2 - 1
        if self.norm == "linf":
            return self.project(noise * self.epsilon)
        radius = torch.rand(self.shape[0], generator=self.generator).to(self.device)
        direction = noise / per_sample_norm(noise, "l2").clamp_min(1e-12)
        return self.project(
            direction * radius.reshape(-1, *([1] * (noise.dim() - 1))) * self.epsilon
        )

    def gradient(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss at ``delta`` and its gradient in ``delta``; model parameters are untouched."""
        delta = delta.detach().requires_grad_(True)
        loss = self.loss(delta)
        (grad,) = torch.autograd.grad(loss, delta)
        return loss.detach(), grad

    def ascend(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """One steepest-ascent step for the norm: sign for linf, normalized gradient for l2."""
        if self.norm == "linf":
            return delta + step_size * grad.sign()
        return delta + step_size * grad / per_sample_norm(grad, "l2").clamp_min(1e-12)

    def project(self, delta: torch.Tensor, iteration: int | None = None) -> torch.Tensor:
        """Into the epsilon ball (and the valid input range); runs the refine hook first."""
        if iteration is not None and self.refine is not None:
            replaced = self.refine(delta, iteration)
            if replaced is not None:
                delta = replaced
        if self.norm == "linf":
            delta = delta.clamp(-self.epsilon, self.epsilon)
        else:
            scale = (self.epsilon / per_sample_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
            delta = delta * scale
        if self.config.clamp is not None and self.clean is not None:
            low, high = self.config.clamp
            delta = (self.clean + delta).clamp(low, high) - self.clean
        return delta.detach()


class Attack:
    """Base of all attacks. Subclasses set ``name`` and implement :meth:`perturb`."""

    name: ClassVar[str]

    def __init__(self, config: AdversarialConfig) -> None:
        self.config = config

    def step_size(self, default: float) -> float:
        return self.config.step_size if self.config.step_size is not None else default

    def perturb(self, problem: AttackProblem) -> torch.Tensor:
        """The perturbation to train on (detached, inside the epsilon ball)."""
        raise NotImplementedError

    def train_step(self, problem: AttackProblem) -> torch.Tensor:
        """Accumulate parameter gradients for one step; returns the (detached) loss."""
        assert problem.train_loss is not None
        delta = self.perturb(problem)
        loss = problem.train_loss(delta)
        problem.backward(loss)
        return loss.detach()


class FGSM(Attack):
    """One signed-gradient step; with a random start this is "fast" adversarial training
    (Wong et al., 2020), whose step defaults to 1.25 epsilon."""

    name = "fgsm"

    def perturb(self, problem):
        random = self.config.random_start
        delta = problem.random_start() if random else problem.zeros()
        _, grad = problem.gradient(delta)
        step = self.step_size(1.25 * problem.epsilon if random else problem.epsilon)
        return problem.project(problem.ascend(delta, grad, step), 0)


class PGD(Attack):
    """``steps`` projected ascent steps (Madry et al., 2018), step 2.5 epsilon / steps."""

    name = "pgd"

    def perturb(self, problem):
        delta = problem.random_start() if self.config.random_start else problem.zeros()
        step = self.step_size(2.5 * problem.epsilon / self.config.steps)
        for iteration in range(self.config.steps):
            _, grad = problem.gradient(delta)
            delta = problem.project(problem.ascend(delta, grad, step), iteration)
        return delta


class FreeLB(Attack):
    """FreeLB (Zhu et al., 2020): K ascent steps whose parameter gradients all count.

    Each ascent step back-propagates ``loss / K`` into the parameters *and* the perturbation;
    the parameters thus see the average gradient over the K points of the ascent path at the
    cost of one PGD-K attack. Under DDP the first K-1 backward passes skip the all-reduce.
    """

    name = "freelb"

    def perturb(self, problem):
        return PGD(self.config).perturb(problem)

    def train_step(self, problem):
        assert problem.train_loss is not None
        steps = self.config.steps
        step = self.step_size(problem.epsilon / steps)
        delta = problem.random_start() if self.config.random_start else problem.zeros()
        total = torch.zeros(())
        for iteration in range(steps):
            delta = delta.detach().requires_grad_(True)
            last = iteration == steps - 1
            with nullcontext() if last else problem.no_sync():
                loss = problem.train_loss(delta) / steps
                problem.backward(loss)
            total = total + loss.detach().float().cpu()
            if not last:
                delta = problem.project(problem.ascend(delta, delta.grad, step), iteration)
        return total


BUILTIN_ATTACKS = (FGSM, PGD, FreeLB)


@hookimpl
def fxopt_register_attacks(registry) -> None:
    for attack in BUILTIN_ATTACKS:
        registry.register(attack.name, attack)


@hookimpl
def fxopt_add_hookspecs(host) -> None:
    """This package owns its extension point: its hooks, and the ``attacks`` registry."""
    from . import hookspecs

    host.add_hookspecs(hookspecs)
    host.add_registry("attacks", "attack", "fxopt_register_attacks")
