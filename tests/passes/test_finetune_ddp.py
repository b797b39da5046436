# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
"""``torchrun`` with 2 CPU processes (gloo) trains the same model as one process, under DDP
and under FSDP2; what FSDP does not support is refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxopt.cli.app import main
from fxopt.engine.errors import RecipeError
from fxopt.passes.finetune import FinetuneConfig
from fxopt.passes.finetune.sharding import check_fsdp
from tests.cli import assert_clean_failure, run_cli
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    digits_dir,
    digits_recipe,
    max_difference,
    one_thread,
    prepare,
)

CONFIG = {"max_steps": 6, "lr": 3e-3, "evaluate": False}
# --no-cache: the second build has the same inputs and would be served from the cache
FLAGS = ["-q", "--no-cache"]


def artifact_weights(out_dir) -> dict[str, torch.Tensor]:
    module = torch.export.load(str(out_dir / "model.pt2")).module()
    return {k: v.detach() for k, v in module.state_dict().items()}


def finetune_metrics(out_dir: Path) -> dict:
    report = json.loads((out_dir / "report.json").read_text())
    (finetune,) = [p for p in report["passes"] if p["name"] == "finetune"]
    return finetune["metrics"]


def torchrun(recipe: Path, out: Path, flags: list[str]) -> None:
    """``optimize recipe -o out`` in 2 gloo processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fxopt.cli.app", str(recipe), "-o", str(out), *flags,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def single_and_two_processes(tmp_path: Path, digits: Path, config: dict) -> tuple[Path, Path]:
    """The output directories of one recipe built in one process and under ``torchrun``,
    after checking that training did move the weights."""
    recipe = digits_recipe(tmp_path, digits, config, samples=256, batch_size=32)
    flags = [*FLAGS, "--cache-dir", str(tmp_path / "cache")]
    single, two = tmp_path / "single", tmp_path / "two"
    assert main([str(recipe), "-o", str(single), *flags]) == 0
    torchrun(recipe, two, flags)
    original = torch.export.load(str(digits / "model.pt2")).module().state_dict()
    # the loader wraps the program (``module.`` prefix)
    moved = max_difference(
        artifact_weights(single), {f"module.{k}": v for k, v in original.items()}
    )
    assert moved > 1e-3  # training did change the weights
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two"]
    return single, two


@pytest.mark.distributed
def test_two_gloo_processes_give_the_single_process_weights(tmp_path, digits_dir):
    single, ddp = single_and_two_processes(tmp_path, digits_dir, CONFIG)
    metrics = finetune_metrics(ddp)
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["parallel"] == "ddp"
    assert max_difference(artifact_weights(ddp), artifact_weights(single)) < 1e-5


@pytest.mark.distributed
def test_fsdp_over_two_gloo_processes_gives_the_single_process_weights(tmp_path, digits_dir):
    """Sharded weights, gradients and AdamW state, clipped by the global gradient norm: the
    same step as one process, and plain weights in the artifact."""
    config = {**CONFIG, "parallel": "fsdp", "grad_clip": 0.5}
    single, fsdp = single_and_two_processes(tmp_path, digits_dir, config)
    metrics = finetune_metrics(fsdp)
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["parallel"] == "fsdp"
    assert abs(metrics["loss_last"] - finetune_metrics(single)["loss_last"]) < 1e-4
    assert max_difference(artifact_weights(fsdp), artifact_weights(single)) < 1e-4


def test_an_unknown_parallel_mode_is_a_recipe_error(tmp_path, digits_dir, capsys):
    recipe = digits_recipe(tmp_path, digits_dir, {"parallel": "zero3"})
    result = run_cli(capsys, "validate", recipe)
    assert_clean_failure(result, 2, "passes[0].config", "parallel", "'ddp' or 'fsdp'")


@pytest.mark.parametrize(
    ("config", "resume", "field"),
    [
        ({"checkpoint_every": 2}, None, "passes[0].config.checkpoint_every"),
        ({}, "latest", "--resume"),
    ],
)
def test_checkpoints_are_refused_under_fsdp_before_training(
    tmp_path, digits_dir, monkeypatch, config, resume, field
):
    """As rank 0 of two sees it, before joining the process group."""
    recipe = digits_recipe(tmp_path, digits_dir, {**CONFIG, **config, "parallel": "fsdp"})
    ir, ctx, finetune = prepare(recipe, resume=resume)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError) as info:
        finetune.run(ir, ctx)
    assert info.value.field == field and 'parallel = "ddp"' in info.value.fix
    assert not torch.distributed.is_initialized()


def test_a_trained_scalar_parameter_is_refused_under_fsdp():
    """FSDP splits along dim 0 (frozen parameters are not sharded: only trained ones count)."""
    trained = {
        "w": torch.nn.Parameter(torch.ones(4, 2)),
        "scale": torch.nn.Parameter(torch.ones(())),
    }
    with pytest.raises(RecipeError) as info:
        check_fsdp(FinetuneConfig(parallel="fsdp"), trained, None, file="r.toml", where="c")
    assert info.value.field == "c.parallel" and "'scale'" in info.value.message
    assert 'freeze = ["scale"]' in info.value.fix
