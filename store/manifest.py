"""``manifest.json``: the hashes of every input that produced an output, and the versions.

It is what lets a build system (and a person months later) tell whether an artifact is still
the product of the recipe, model and data it sits next to.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

VERSIONED = ("fxopt", "torch", "onnx", "onnxruntime", "onnxscript", "transformers", "torchao")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def build_manifest(
    *,
    build_key: str,
    hasher: Callable[[Path], str],
    recipe: Path | None,
    model_files: list[Path],
    data_files: list[Path],
    artifacts: list[str],
    out_dir: Path,
) -> dict[str, Any]:
    def entry(path: Path) -> dict[str, str]:
        return {"path": str(path), "sha256": hasher(path)}

    return {
        "generator": "fxopt",
        "build_key": build_key,
        "recipe": entry(recipe) if recipe else None,
        "model": [entry(p) for p in model_files],
        "data": [entry(p) for p in data_files],
        "outputs": {name: hasher(out_dir / name) for name in artifacts},
        "versions": versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
    }
