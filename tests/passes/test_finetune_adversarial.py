"""Adversarial fine-tuning: attacks stay in their ball, robust accuracy goes up, early stopping."""

# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from fxopt.engine import hookimpl
from fxopt.passes.finetune import FGSM, PGD, AdversarialConfig, AttackProblem, FreeLB
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    digits_dir,
    digits_recipe,
    one_thread,
    prepare,
    weights,
)


def quadratic_problem(norm: str, epsilon: float, **extra) -> tuple[AttackProblem, torch.Tensor]:
    """A loss whose ascent direction is known: grows with delta . w per sample."""
    torch.manual_seed(0)
    direction = torch.randn(6, 3, 4)
    config = AdversarialConfig(method="pgd", epsilon=epsilon, norm=norm, steps=5, **extra)

    def loss(delta):
        return (delta * direction).sum() + 0.1 * (delta**2).sum()

    problem = AttackProblem(
        loss, direction.shape, config, generator=torch.Generator().manual_seed(1)
    )
    return problem, direction


@pytest.mark.parametrize("attack", [FGSM, PGD, FreeLB])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbations_stay_within_epsilon_and_raise_the_loss(attack, norm):
    problem, _ = quadratic_problem(norm, 0.25)
    delta = attack(problem.config).perturb(problem)
    flat = delta.reshape(delta.shape[0], -1)
    sizes = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
    assert float(sizes.max()) <= 0.25 + 1e-6
    assert float(sizes.min()) > 0.2  # the ascent reaches the boundary of the ball
    assert float(problem.loss(delta)) > float(problem.loss(torch.zeros_like(delta))) + 1.0


def test_pgd_without_random_start_finds_the_linf_optimum():
    problem, direction = quadratic_problem("linf", 0.1, random_start=False)
    delta = PGD(problem.config).perturb(problem)
    assert torch.allclose(delta, 0.1 * direction.sign())


def test_clamp_keeps_perturbed_pixels_in_range():
    problem, _ = quadratic_problem("linf", 0.5, clamp=(0.0, 1.0))
    problem.clean = torch.rand(problem.shape)
    delta = PGD(problem.config).perturb(problem)
    perturbed = problem.clean + delta
    assert float(perturbed.min()) >= 0.0 and float(perturbed.max()) <= 1.0 + 1e-6


def test_adversarial_finetune_raises_robust_accuracy(tmp_path, digits_dir):
    recipe = digits_recipe(
        tmp_path,
        digits_dir,
        {
            "epochs": 2,
            "lr": 3e-3,
            "weight_decay": 0.0,
            "adversarial": {
                "method": "pgd",
                "epsilon": 0.1,
                "steps": 3,
                "target": "pixels",
                "clamp": [0.0, 1.0],
                "clean_weight": 0.5,
            },
        },
        samples=512,
    )
    ir, ctx, finetune = prepare(recipe)
    nodes = len(ir.graph.nodes)
    metrics = finetune.run(ir, ctx).metrics
    assert metrics["steps"] == 16
    gain = metrics["robust_accuracy_after"] - metrics["robust_accuracy_before"]
    assert gain >= 0.08, metrics
    assert metrics["clean_accuracy_after"] >= metrics["clean_accuracy_before"] - 0.05
    assert len(ir.graph.nodes) == nodes  # nothing of the training set-up left in the graph


def test_early_stopping_restores_the_best_weights_after_a_collapse(
    tmp_path, digits_dir, monkeypatch
):
    from fxopt.passes.finetune import trainer as trainer_module

    recipe = digits_recipe(
        tmp_path,
        digits_dir,
        {
            "max_steps": 8,
            "lr": 1e-3,
            "adversarial": {"method": "fgsm", "epsilon": 0.1},
            "early_stopping": {"every": 2, "batches": 1, "max_drop": 0.2},
        },
    )
    ir, ctx, finetune = prepare(recipe)
    readings = iter([0.50, 0.60, 0.30, 0.9])
    seen: dict[int, dict] = {}

    def fake_robust_accuracy(self, batches, labels):
        seen[self.step] = weights(self.module)
        return next(readings)

    monkeypatch.setattr(trainer_module.Trainer, "robust_accuracy", fake_robust_accuracy)
    metrics = finetune.run(ir, ctx).metrics
    early = metrics["early_stopping"]
    assert early["stopped_at"] == 6 and early["best_step"] == 4
    assert "catastrophic overfitting" in early["reason"]
    assert metrics["steps"] == 6
    final = weights(ir.module)
    assert all(torch.equal(final[k], seen[4][k]) for k in final)
    assert not all(torch.equal(final[k], seen[6][k]) for k in final)


class ZeroAttack(FGSM):
    """A third-party attack: no perturbation at all, counted."""

    name = "acme.zero"
    calls = 0

    def perturb(self, problem):
        ZeroAttack.calls += 1
        return problem.zeros()


class AcmePlugin:
    perturbed: ClassVar[list[int]] = []
    steps: ClassVar[list[tuple[int, float]]] = []
    batches: ClassVar[list[int]] = []

    @hookimpl
    def fxopt_register_attacks(self, registry):
        registry.register(ZeroAttack.name, ZeroAttack)

    @hookimpl
    def fxopt_adversarial_perturb(self, step, delta):
        AcmePlugin.perturbed.append(step)
        return delta * 0.5

    @hookimpl
    def fxopt_train_step_begin(self, step, batch):
        AcmePlugin.batches.append(len(batch["labels"]))

    @hookimpl
    def fxopt_train_step_end(self, step, loss):
        AcmePlugin.steps.append((step, loss))
        return step == 2  # stop after the third step


@pytest.fixture(scope="module")
def acme_runs(tmp_path_factory, digits_dir):
    """A third-party plugin (an attack and the three training hooks) over two fine-tunes:
    its own attack for three steps (its step-end hook stops it there), then the built-in
    FGSM for two. Returns what the plugin saw in each, and the first run's metrics."""
    from fxopt.engine.plugin_host import load_plugins

    tmp_path = tmp_path_factory.mktemp("acme")
    host = load_plugins()
    host.register(AcmePlugin(), name="acme", origin="acme-attacks 1.0")
    seen = {}
    try:
        for name, config in (
            ("acme", {"max_steps": 10, "evaluate": False, "adversarial": {"method": "acme.zero"}}),
            ("fgsm", {"max_steps": 2, "evaluate": False, "adversarial": {"method": "fgsm"}}),
        ):
            ZeroAttack.calls = 0
            AcmePlugin.perturbed, AcmePlugin.steps, AcmePlugin.batches = [], [], []
            recipe = digits_recipe(tmp_path, digits_dir, config, name=f"{name}.toml")
            ir, ctx, finetune = prepare(recipe, host)
            metrics = finetune.run(ir, ctx).metrics
            seen[name] = {
                "attack_calls": ZeroAttack.calls,
                "metrics": metrics,
                "perturbed": AcmePlugin.perturbed,
                "steps": [s for s, _ in AcmePlugin.steps],
                "batches": AcmePlugin.batches,
            }
    finally:
        host.unregister("acme")
    assert "acme.zero" not in host.attacks
    return seen


def test_hook_fxopt_register_attacks_puts_a_third_party_attack_in_the_loop(acme_runs):
    assert acme_runs["acme"]["attack_calls"] == 3
    assert acme_runs["acme"]["metrics"]["steps"] == 3


def test_hook_fxopt_adversarial_perturb_refines_the_builtin_attacks(acme_runs):
    assert acme_runs["acme"]["perturbed"] == []  # ZeroAttack never asks for refinement
    assert acme_runs["fgsm"]["perturbed"] == [0, 1]  # FGSM asks once per step


def test_hook_fxopt_train_step_begin_sees_each_batch(acme_runs):
    assert acme_runs["acme"]["batches"] == [64, 64, 64]


def test_hook_fxopt_train_step_end_can_stop_the_loop(acme_runs):
    assert acme_runs["acme"]["steps"] == [0, 1, 2]  # it answered True after step 2
