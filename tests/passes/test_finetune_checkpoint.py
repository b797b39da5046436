# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
"""Checkpoints and ``--resume``: a crashed-and-resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from fxopt.engine import hookimpl
from fxopt.engine.plugin_host import load_plugins
from fxopt.passes.finetune.checkpoint import CheckpointError
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    digits_dir,
    digits_recipe,
    max_difference,
    one_thread,
    prepare,
    weights,
)

CONFIG = {
    "max_steps": 6,
    "lr": 3e-3,
    "checkpoint_every": 2,
    "keep_checkpoints": 3,
    "evaluate": False,
    "adversarial": {"method": "fgsm", "epsilon": 0.1},
}


class Crash(RuntimeError):
    pass


class CrashAtStep:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def fxopt_train_step_end(self, step):
        if step == self.step:
            raise Crash(f"simulated crash at step {step}")


def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, digits_dir):
    recipe = digits_recipe(tmp_path, digits_dir, CONFIG)
    ir, ctx, finetune = prepare(recipe, cache_dir=tmp_path / "cache-a")
    finetune.run(ir, ctx)
    uninterrupted = weights(ir.module)

    host = load_plugins()
    host.register(CrashAtStep(3), name="crash")
    ir, ctx, finetune = prepare(recipe, host, cache_dir=tmp_path / "cache-b")
    with pytest.raises(Crash):
        finetune.run(ir, ctx)
    host.unregister("crash")
    saved = sorted((tmp_path / "cache-b").rglob("step-*.pt"))
    assert [p.name for p in saved] == ["step-00000002.pt"]

    ir, ctx, finetune = prepare(recipe, host, resume="latest", cache_dir=tmp_path / "cache-b")
    metrics = finetune.run(ir, ctx).metrics
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 6
    assert max_difference(weights(ir.module), uninterrupted) == 0.0
    # the final checkpoint lets a run that crashes later (lowering, say) skip training
    assert sorted(p.name for p in (tmp_path / "cache-b").rglob("step-*.pt"))[-1] == (
        "step-00000006.pt"
    )


def test_a_checkpoint_of_another_recipe_is_refused_naming_both_hashes(tmp_path, digits_dir):
    first = digits_recipe(tmp_path, digits_dir, {**CONFIG, "max_steps": 2})
    ir, ctx, finetune = prepare(first, cache_dir=tmp_path / "cache")
    finetune.run(ir, ctx)
    (saved,) = sorted((tmp_path / "cache").rglob("step-*.pt"))
    theirs = torch.load(saved, weights_only=True)["recipe_hash"]

    other = digits_recipe(tmp_path, digits_dir, {**CONFIG, "lr": 1e-3}, name="other.toml")
    ir, ctx, finetune = prepare(other, resume=str(saved), cache_dir=tmp_path / "cache")
    from fxopt.passes.finetune.checkpoint import recipe_hash

    ours = recipe_hash(ctx.recipe)
    with pytest.raises(CheckpointError) as error:
        finetune.run(ir, ctx)
    message = str(error.value)
    assert theirs in message and ours in message and theirs != ours
    assert "--resume" in message and saved.name in message


def test_resume_names_a_missing_checkpoint(tmp_path, digits_dir):
    recipe = digits_recipe(tmp_path, digits_dir, CONFIG)
    ir, ctx, finetune = prepare(recipe, resume=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        finetune.run(ir, ctx)
