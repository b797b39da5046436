"""Distillation recovers a damaged model; schedules, modes and AMP behave as documented."""

# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
from __future__ import annotations

import math

import pytest
import torch

from fxopt.passes.finetune.modes import GraphMode
from fxopt.passes.finetune.schedule import lr_factor
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    bert_recipe,
    cosine_to_teacher,
    damage,
    digits_dir,
    digits_recipe,
    one_thread,
    prepare,
)


def test_distillation_closes_most_of_the_gap_to_the_original(tmp_path, tiny_bert_dir):
    recipe = bert_recipe(tmp_path, tiny_bert_dir)
    ir, ctx, finetune = prepare(recipe)
    damage(ir)
    before = cosine_to_teacher(ir, ctx)
    metrics = finetune.run(ir, ctx).metrics
    after = cosine_to_teacher(ir, ctx)
    assert before < 0.97
    assert 1 - after < 0.5 * (1 - before), (before, after)
    assert metrics["eval_loss_after"] < 0.5 * metrics["eval_loss_before"]
    assert metrics["steps"] == 32
    assert metrics["train_mode_nodes"]["dropout"] > 0  # dropout ran in training mode
    # and the graph is back in eval mode: deterministic outputs
    batch = ctx.batches("verification")[0]
    assert torch.equal(ir.run(batch)[0], ir.run(batch)[0])


def test_text_adversarial_training_perturbs_embeddings_and_leaves_no_trace(tmp_path, tiny_bert_dir):
    freelb = {"method": "freelb", "epsilon": 0.05, "steps": 2, "norm": "l2", "target": "embeddings"}
    recipe = bert_recipe(
        tmp_path, tiny_bert_dir, {"epochs": None, "max_steps": 3, "adversarial": freelb}
    )
    ir, ctx, finetune = prepare(recipe)
    code = ir.module.code
    seen = []
    from fxopt.passes.finetune import sites

    original = sites.AddPerturbation.forward

    def spy(self, x):
        seen.append(None if self.delta is None else float(self.delta.detach().norm()))
        return original(self, x)

    sites.AddPerturbation.forward = spy
    try:
        metrics = finetune.run(ir, ctx).metrics
    finally:
        sites.AddPerturbation.forward = original
    assert metrics["steps"] == 3
    assert any(v is not None and v > 0 for v in seen)  # FreeLB's ascent moved the embeddings
    assert ir.module.code == code and not hasattr(ir.module, sites.PROBE_NAME)


def test_schedules_give_the_documented_curves():
    linear = [lr_factor(s, total=6, warmup=2, kind="linear") for s in range(6)]
    assert linear == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    cosine = [lr_factor(s, total=6, warmup=2, kind="cosine") for s in range(6)]
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert cosine == pytest.approx(expected)
    assert [lr_factor(s, total=5, warmup=0, kind="constant") for s in range(5)] == [1.0] * 5
    floor = lr_factor(9, total=10, warmup=0, kind="linear", min_ratio=0.1)
    assert floor == pytest.approx(0.1 + 0.9 * 0.1)


def test_the_trainer_follows_the_schedule_and_bf16_autocast_trains(tmp_path, digits_dir):
    recipe = digits_recipe(
        tmp_path,
        digits_dir,
        {
            "max_steps": 8,
            "lr": 1e-2,
            "schedule": "linear",
            "warmup_steps": 2,
            "amp": "bf16",
            "evaluate": False,
            "log_every": 1,
        },
    )
    ir, ctx, finetune = prepare(recipe)
    from fxopt.passes.finetune import trainer as trainer_module

    seen = []
    original = trainer_module.Trainer.train_step

    def record(self):
        original(self)
        seen.append(self.lrs[-1])

    trainer_module.Trainer.train_step = record
    try:
        metrics = finetune.run(ir, ctx).metrics
    finally:
        trainer_module.Trainer.train_step = original
    expected = [1e-2 * lr_factor(s, total=8, warmup=2, kind="linear") for s in range(8)]
    assert seen == pytest.approx(expected)
    assert metrics["amp"] == "bfloat16"
    assert math.isfinite(metrics["loss_last"]) and metrics["loss_last"] < 5


def test_graph_mode_switches_dropout_and_restores_eval():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.linear(x))

    module = torch.export.export(Net().eval(), (torch.randn(4, 16),)).module()
    x = torch.randn(4, 16)
    mode = GraphMode(module, dropout=True, batchnorm=False)
    assert mode.counts == {"dropout": 1, "batchnorm": 0}
    mode.set(True)
    zeros = int((module(x) == 0).sum())
    assert zeros > 10  # about half of 64
    mode.set(False)
    assert torch.equal(module(x), module(x)) and int((module(x) == 0).sum()) < 5
