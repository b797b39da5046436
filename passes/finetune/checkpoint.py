"""Checkpoints every N steps, and resuming from one after a crash (``optimize --resume``).

A checkpoint holds everything the rest of the run depends on: the weights, the optimizer and
LR-schedule state, the AMP scaler, the early-stopping record, and the step. Data order and
per-step randomness derive from the seed and the step, so a resumed run continues exactly as
the uninterrupted one would have. Each checkpoint carries the hash of the recipe that wrote
it; resuming under another recipe is refused, naming both hashes. Files are written to a
temporary name and renamed, and only tensors and plain containers are stored, read back with
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from fxopt.engine.errors import FxoptError
from fxopt.run.recipe import Recipe

PATTERN = "step-*.pt"
LATEST = "latest"


class CheckpointError(FxoptError):
    """A checkpoint cannot be used to resume this run."""


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the recipe's validated content (not its formatting or comments)."""
    text = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_dir(base: Path, digest: str, index: int) -> Path:
    return base / digest / f"pass-{index}"


def save(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(directory.glob(PATTERN))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def find(resume: str, default_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: a file, the newest in a directory, or ``latest``."""
    if resume == LATEST:
        directory = default_dir
    else:
        path = Path(resume).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise CheckpointError(
                "checkpoint not found",
                file=path,
                field="--resume",
                fix="pass a step-*.pt file or the directory holding them",
            )
        directory = path
    found = sorted(directory.glob(PATTERN)) if directory.is_dir() else []
    return found[-1] if found else None


def load(path: Path, digest: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"not a readable checkpoint: {type(exc).__name__}: {exc}",
            file=path,
            field="--resume",
            fix="delete it and start again without --resume",
        ) from None
    theirs = state.get("recipe_hash")
    if theirs != digest:
        raise CheckpointError(
            f"the checkpoint was written by a different recipe (recipe hash {theirs}); this "
            f"recipe's hash is {digest}",
            file=path,
            field="--resume",
            fix="resume with the recipe that wrote the checkpoint, or run without --resume to "
            "start over",
        )
    return state
