"""Stage ``load``: the model from its path, its input specs and dims, and the data sets."""

from __future__ import annotations

from pathlib import Path

from ..data import DataContext, build_splits
from ..data_shapes import check_data_shapes
from ..errors import ModelError
from ..loading import LoadedModel, LoadOptions
from ..plugin_host import PluginHost
from ..recipe import Recipe
from ..run_options import RunOptions
from .capture import effective_dims, effective_inputs
from .state import RunState


def stage(run: RunState) -> None:
    recipe = run.recipe
    with run.output.stage(f"loading {run.model_path}"):
        loaded = load_model(run.host, recipe, run.model_path, run.options)
    specs = effective_inputs(loaded, recipe.model, recipe.label)
    loaded.inputs = specs
    loaded.dims = effective_dims(loaded, recipe.model, specs, recipe.label)
    with run.output.stage("building the data sets"):
        run.splits = build_splits(
            recipe,
            run.host.datasets,
            lambda split: DataContext(specs, loaded.dims, loaded.tokenize, recipe, split),
        )
    check_data_shapes(specs, loaded.dims, run.splits, label=recipe.label)
    run.loaded = loaded


def load_model(host: PluginHost, recipe: Recipe, path: Path, options: RunOptions) -> LoadedModel:
    """Load with the recipe's loader, or the first registered loader that recognizes ``path``."""
    opts = LoadOptions(recipe.model.task, options.allow_pickle, options.trust_remote_code)
    if recipe.model.loader != "auto":
        loader = host.loaders.get(recipe.model.loader, file=recipe.label, field="model.loader")()
        return loader.load(path, opts)
    for entry in host.loaders:
        loader = entry.obj()
        if loader.can_load(path):
            return loader.load(path, opts)
    raise ModelError(
        "no loader recognizes this path",
        file=path,
        fix="pass a Hugging Face model directory or a torch.export .pt2 archive "
        f"(loaders: {', '.join(host.loaders.names())})",
    )
