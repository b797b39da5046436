# ruff: noqa: F811  (pytest fixtures imported from finetune_support)
"""``torchrun`` with 2 CPU processes (gloo) trains the same model as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fxopt.cli.app import main
from tests.passes.finetune_support import (  # noqa: F401  (fixtures)
    digits_dir,
    digits_recipe,
    max_difference,
    one_thread,
)

pytestmark = pytest.mark.distributed

CONFIG = {"max_steps": 6, "lr": 3e-3, "evaluate": False}


def artifact_weights(out_dir) -> dict[str, torch.Tensor]:
    module = torch.export.load(str(out_dir / "model.pt2")).module()
    return {k: v.detach() for k, v in module.state_dict().items()}


def test_two_gloo_processes_give_the_single_process_weights(tmp_path, digits_dir):
    recipe = digits_recipe(tmp_path, digits_dir, CONFIG, samples=256, batch_size=32)
    single = tmp_path / "single"
    # --no-cache: the second build has the same inputs and would be served from the cache
    flags = ["-q", "--no-cache", "--cache-dir", str(tmp_path / "cache")]
    assert main([str(recipe), "-o", str(single), *flags]) == 0

    ddp = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fxopt.cli.app", str(recipe), "-o", str(ddp), *flags,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((ddp / "report.json").read_text())
    (finetune,) = [p for p in report["passes"] if p["name"] == "finetune"]
    assert finetune["metrics"]["world_size"] == 2 and finetune["metrics"]["steps"] == 6
    original = torch.export.load(str(digits_dir / "model.pt2")).module().state_dict()
    # the loader wraps the program (``module.`` prefix)
    moved = max_difference(
        artifact_weights(single), {f"module.{k}": v for k, v in original.items()}
    )
    assert moved > 1e-3  # training did change the weights
    assert max_difference(artifact_weights(ddp), artifact_weights(single)) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ddp")) == ["ddp"]
