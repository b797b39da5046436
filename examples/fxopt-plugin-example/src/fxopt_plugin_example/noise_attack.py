"""``example.uniform_noise``: train on random perturbations inside the epsilon ball."""

from __future__ import annotations

from fxopt.passes.finetune import Attack


class UniformNoise(Attack):
    """No gradient: a uniform sample of the ball, a cheap robustness-to-noise baseline."""

    name = "example.uniform_noise"

    def perturb(self, problem):
        return problem.random_start().detach()
