"""Stage ``load``: the model from its path, its input specs and dims, and the data sets."""

from __future__ import annotations

from pathlib import Path

from fxopt.engine.data import DataContext
from fxopt.engine.errors import ModelError
from fxopt.engine.loading import LoadedModel, LoadOptions, builtin_name
from fxopt.engine.plugin_host import PluginHost

from .capture import effective_dims, effective_inputs
from .data_shapes import check_data_shapes
from .splits import build_splits
from .state import RunState


def stage(run: RunState) -> None:
    recipe = run.recipe
    name = builtin_name(run.model_path)
    what = f"builtin:{name} (trained when first loaded)" if name else run.model_path
    with run.output.stage(f"loading {what}"):
        options = LoadOptions(
            recipe.model.task, run.options.allow_pickle, run.options.trust_remote_code
        )
        loaded = load_model(
            run.host, run.model_path, options, loader=recipe.model.loader, label=recipe.label
        )
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


def load_model(
    host: PluginHost,
    path: Path,
    options: LoadOptions,
    *,
    loader: str = "auto",
    label: str | None = None,
) -> LoadedModel:
    """Load with the named loader (``[model].loader`` of the recipe ``label``), or with the
    first registered loader that recognizes ``path``: for a run, and for ``optimize bench``,
    which reloads the model an output came from."""
    if loader != "auto":
        return host.loaders.get(loader, file=label, field="model.loader")().load(path, options)
    for entry in host.loaders:
        found = entry.obj()
        if found.can_load(path):
            return found.load(path, options)
    raise ModelError(
        "no loader recognizes this path",
        file=path,
        fix="pass a Hugging Face model directory or a torch.export .pt2 archive "
        f"(loaders: {', '.join(host.loaders.names())})",
    )
