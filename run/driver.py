"""The executor: the run's stages in order, from a plan (:mod:`.plan`).

    load → reference → capture → passes → lower → verify → write

``optimize`` plans and executes one build; ``prepare`` runs the stages before lowering only
(``optimize check``, a torchrun peer). Importing this module imports torch; the package's
``__init__`` does not, so the no-op path and ``--help`` stay fast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fxopt.engine.console import Output
from fxopt.engine.data import Batch
from fxopt.engine.instruments import PassRecord
from fxopt.engine.ir import ModelIR
from fxopt.engine.loading import LoadedModel
from fxopt.engine.plugin_host import PluginHost, load_plugins
from fxopt.report import Report
from fxopt.store.staging import StagedDir

from . import capture, library_log, load, lower, passes, reference, verify, write
from .bind import Plan, bind
from .options import RunOptions
from .pass_cache import PassCache, prefix_keys
from .plan import Build, plan_build, resolve_model
from .recipe import Recipe, load_recipe
from .state import RunState

Stage = Callable[[RunState], object]
#: the stages before lowering: all a run that writes nothing does (``optimize check``, a
#: torchrun peer)
PREPARE: tuple[Stage, ...] = (load.stage, reference.stage, capture.stage, passes.stage)
STAGES: tuple[Stage, ...] = (*PREPARE, lower.stage, verify.stage, write.stage)


def optimize(
    recipe: str | Path | Recipe,
    model_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    options: RunOptions | None = None,
    output: Output | None = None,
    host: PluginHost | None = None,
) -> Report:
    """Run a recipe on a model and write the verified artifact to ``out_dir``.

    Raises :class:`~fxopt.engine.errors.BudgetError` (with ``.report``) when the artifact
    misses the recipe's fidelity budget; nothing is written to ``out_dir`` then.
    """
    options = options or RunOptions()
    if out_dir is not None:
        options.out_dir = Path(out_dir)
    output = output or Output(quiet=True)
    build = plan_build(recipe, model_dir, options, output)
    if (done := build.finished()) is not None:
        return done
    return execute(build, options, output, host)


def execute(
    build: Build, options: RunOptions, output: Output, host: PluginHost | None = None
) -> Report:
    """Run a planned build whose caller found no finished output (``build.finished()``, the
    no-op path that needs no torch), unless a concurrent build of the same inputs finishes it
    while this one waits for its lock."""
    started = time.perf_counter()
    # under torchrun every rank runs this; only rank 0 locks, writes and stores (the others
    # would wait on its lock while it waits for them in the fine-tune's process group)
    peer = build.rank != 0
    with contextlib.nullcontext() if peer else build.cache.lock(build.key):
        if (done := build.finished()) is not None:  # a concurrent build of the same inputs
            return done
        # the output is claimed and its staging directory made before any work: a target
        # that may not be replaced, or a parent that cannot be written, fails in a second
        staged = None if peer else StagedDir(build.target, build.claim())
        with staged or contextlib.nullcontext():
            library_log.reroute()  # torch set up its own log handlers when it was imported
            host = host or load_plugins(only=options.plugins)
            run = _state(build.recipe, build.model_path, options, output, host)
            run.started, run.build_key, run.cache_dir, run.staged = (
                started,
                build.key,
                build.cache_dir,
                staged,
            )
            run.pass_cache = PassCache(
                build.cache_dir / "passes" if build.cache_dir else None,
                prefix_keys(build.components, [p.reads_target for p in run.plan.passes]),
                output,
            )
            run.plan.backend.check_available()
            if peer:  # under torchrun, only rank 0 writes outputs
                _run_stages(run, PREPARE)
                records = [r.to_json() for r in run.records]
                return Report(
                    {"passed": True, "rank": build.rank, "out_dir": None, "passes": records}
                )
            report = _run_stages(run, STAGES)
        build.cache.store(build.target, build.key)
    return report


@dataclass
class Prepared:
    """The IR after the recipe's passes, and what it came from (see :func:`prepare`)."""

    recipe: Recipe
    plan: Plan
    loaded: LoadedModel
    splits: dict[str, list[Batch]]
    ir: ModelIR
    records: list[PassRecord]


def prepare(
    recipe: str | Path | Recipe,
    model_dir: str | Path | None = None,
    *,
    options: RunOptions | None = None,
    output: Output | None = None,
    host: PluginHost | None = None,
) -> Prepared:
    """Load, capture and run the recipe's passes: everything before lowering, nothing written.

    For tools that inspect the graph a backend would get (``optimize check``); the backend
    itself is bound (its options validated) but not asked whether it can run here.
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    options = options or RunOptions()
    run = _state(
        recipe,
        resolve_model(recipe, model_dir),
        options,
        output or Output(quiet=True),
        host or load_plugins(),
    )
    _run_stages(run, PREPARE)
    return Prepared(recipe, run.plan, run.loaded, run.splits, run.ir, run.records)


def _state(
    recipe: Recipe, model_path: Path, options: RunOptions, output: Output, host: PluginHost
) -> RunState:
    return RunState(recipe, bind(recipe, host), host, model_path, options, output)


def _run_stages(run: RunState, stages: tuple[Stage, ...]) -> Report | None:
    """Each stage in order, timed under its module's name; the last one's result."""
    result = None
    for stage in stages:
        tick = time.perf_counter()
        result = stage(run)
        run.seconds[stage.__module__.rsplit(".", 1)[-1]] = time.perf_counter() - tick
    return result
