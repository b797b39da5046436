"""Every hook a plugin can implement, one empty, typed, documented function each.

Plugins are found through the entry-point group ``fxopt.plugins``; each entry point names a
module (or object) carrying ``@hookimpl`` functions. The built-in passes, backends, loaders
and datasets register through these very hooks.

The ``fxopt_register_*`` hooks receive a :class:`~fxopt.engine.registry.Registrar` and call
``registry.register(name, obj)``; the host never merges return values, and it records which
plugin registered what, so a clash names both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from fxopt.run.recipe import Recipe

    from .backend import Backend
    from .console import Output
    from .data import Dataset
    from .instruments import Instrument
    from .loading import Loader
    from .pass_base import Pass
    from .plugin_host import PluginHost
    from .registry import Registrar
    from .task import Task

PROJECT = "fxopt"
#: bumped when a hook's signature changes incompatibly; a plugin module may declare the
#: version it was built for as ``FXOPT_HOOKSPEC_VERSION`` and is refused on a mismatch
HOOKSPEC_VERSION = 1
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration: called once when the plugin host starts -----------------------------------


@hookspec
def fxopt_add_hookspecs(host: PluginHost) -> None:
    """Declare the extension points a package owns, before its ``fxopt_register_*`` hooks run:
    ``host.add_hookspecs(module)`` adds its hook specifications and
    ``host.add_registry(name, kind, hook)`` a registry that ``hook`` fills (``host.<name>``).
    pytest's ``pytest_addhooks`` is the model; ``prune`` (layer pruners), ``quantize``
    (observers) and ``finetune`` (attacks, training hooks) declare theirs this way. Example::

        @hookimpl
        def fxopt_add_hookspecs(host):
            host.add_hookspecs(mycorp_hookspecs)
            host.add_registry("schedulers", "scheduler", "mycorp_register_schedulers")
    """


@hookspec
def fxopt_register_passes(registry: Registrar[type[Pass]]) -> None:
    """Register :class:`~fxopt.engine.Pass` subclasses by their dotted name.

    Example::

        @hookimpl
        def fxopt_register_passes(registry):
            registry.register("mycorp.cluster", ClusterPass)
    """


@hookspec
def fxopt_register_backends(registry: Registrar[type[Backend]]) -> None:
    """Register :class:`~fxopt.engine.backend.Backend` subclasses (``onnxruntime``, ...)."""


@hookspec
def fxopt_register_loaders(registry: Registrar[type[Loader]]) -> None:
    """Register model loaders; the first whose ``can_load(path)`` is true loads the model."""


@hookspec
def fxopt_register_datasets(registry: Registrar[type[Dataset]]) -> None:
    """Register dataset sources a recipe's ``[data.*] source`` can name."""


@hookspec
def fxopt_register_tasks(registry: Registrar[type[Task]]) -> None:
    """Register :class:`~fxopt.engine.task.Task` subclasses by the name a loader gives
    ``LoadedModel.task`` (and a recipe's ``[model] task`` sets): what verification compares,
    with which metrics, and the eager reference runner. ``generic``, ``sentence-embedding``,
    ``feature-extraction``, ``sequence-classification``, ``image-classification`` and
    ``causal-lm`` are built in. Example::

        @hookimpl
        def fxopt_register_tasks(registry):
            registry.register("mycorp.ranker", RankerTask)
    """


# -- per run ----------------------------------------------------------------------------------


@hookspec(firstresult=True)
def fxopt_check(
    backend: str,
    recipe: Path,
    model_dir: Path | None,
    host: PluginHost,
    output: Output,
    as_json: bool,
) -> int | None:
    """Answer ``optimize check RECIPE [--backend NAME]``: a pre-flight of whether ``backend``
    would build the recipe's model, without building it. The plugin of that backend prints
    its findings (JSON with ``as_json``) and returns the exit code (0: it would build, 2:
    problems found); others return ``None``. ``firstresult``: the first answer wins.
    TensorRT answers for ``tensorrt`` (ops its ONNX parser supports, Q/DQ rules, profiles).
    """


@hookspec
def fxopt_add_instruments(recipe: Recipe) -> list[Instrument] | None:
    """Return extra pass-manager instruments for this run (called once per run).

    Each result is a list of :class:`~fxopt.engine.instruments.Instrument`; all lists are
    concatenated in plugin order.
    """
