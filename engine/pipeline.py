"""``optimize()``: load → capture → passes → lower → verify → report, as one call.

The CLI is a thin layer over this function; build systems and notebooks call it directly::

    from fxopt.engine import optimize
    report = optimize("recipes/quickstart.toml", out_dir="out/minilm")
    assert report.passed
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import library_log
from .backend import Runner
from .build_cache import Build, HashCache, data_files, plan_build
from .capture import capture, effective_dims, effective_inputs
from .console import Output
from .data import Batch, DataContext, build_splits
from .data_shapes import check_data_shapes
from .errors import BudgetError, FxoptError, ModelError
from .instruments import DumpIR, Numerics, PassRecord
from .ir import ModelIR
from .loading import LoadedModel, LoadOptions, resolve_model
from .manifest import build_manifest
from .output_guard import MANIFEST, Seen, foreign_rejected, relative_files
from .pass_base import PassContext
from .pass_cache import PassCache, prefix_keys
from .pass_manager import PassManager
from .plan import Plan, bind
from .plugin_host import PluginHost, load_plugins
from .recipe import Recipe, load_recipe
from .report import Report
from .report_model import RunReport
from .run_options import RunOptions
from .staging import StagedDir
from .task import Task
from .timing import reference_vs_optimized
from .verify import check_budget, compare


@dataclass
class _Run:
    """State of one run, passed between the steps below."""

    recipe: Recipe
    plan: Plan
    loaded: LoadedModel
    model_path: Path
    splits: dict[str, list[Batch]]
    reference: list[list[np.ndarray]]
    task: Task
    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    build_key: str = ""
    pass_cache: PassCache | None = None
    #: the cache passes may use (calibration, checkpoints); ``None``: no cache at all
    cache_dir: Path | None = None


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
    """Run a planned build (:func:`~.build_cache.plan_build`, done once per run) whose
    caller found no finished output (``build.finished()``, the no-op path that needs no
    torch): load → reference → capture → passes → lower → verify → write, unless a
    concurrent build of the same inputs finished it meanwhile."""
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
            report = _build(build, staged, options, output, host, started)
        if not peer:
            build.cache.store(build.target, build.key)
    return report


def _build(
    build: Build,
    staged: StagedDir | None,
    options: RunOptions,
    output: Output,
    host: PluginHost,
    started: float,
) -> Report:
    recipe, model_path = build.recipe, build.model_path
    plan = bind(recipe, host)
    plan.backend.check_available()

    run = _prepare(recipe, plan, host, model_path, options, output)
    run.started = started
    run.build_key = build.key
    run.cache_dir = build.cache_dir
    run.pass_cache = PassCache(
        build.cache_dir / "passes" if build.cache_dir else None,
        prefix_keys(build.components),
        output,
    )
    ir = _capture(run, output)
    ir, records = _run_passes(run, ir, options, output, host)
    if staged is None:  # under torchrun, only rank 0 writes outputs
        passes = [r.to_json() for r in records]
        return Report({"passed": True, "rank": build.rank, "out_dir": None, "passes": passes})
    return _lower_and_verify(run, ir, records, staged, output)


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
    options = options or RunOptions()
    output = output or Output(quiet=True)
    host = host or load_plugins()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    plan = bind(recipe, host)
    run = _prepare(recipe, plan, host, resolve_model(recipe, model_dir), options, output)
    ir = _capture(run, output)
    ir, records = _run_passes(run, ir, options, output, host)
    return Prepared(recipe, plan, run.loaded, run.splits, ir, records)


def _prepare(
    recipe: Recipe,
    plan: Plan,
    host: PluginHost,
    model_path: Path,
    options: RunOptions,
    output: Output,
) -> _Run:
    tick = time.perf_counter()
    with output.stage(f"loading {model_path}"):
        loaded = load_model(host, recipe, model_path, options)
    specs = effective_inputs(loaded, recipe.model, recipe.label)
    loaded.inputs = specs
    loaded.dims = effective_dims(loaded, recipe.model, specs, recipe.label)
    seconds = {"load": time.perf_counter() - tick}

    tick = time.perf_counter()
    with output.stage("building the data sets"):
        splits = build_splits(
            recipe,
            host.datasets,
            lambda split: DataContext(specs, loaded.dims, loaded.tokenize, recipe, split),
        )
    check_data_shapes(specs, loaded.dims, splits, label=recipe.label)
    seconds["data"] = time.perf_counter() - tick

    tick = time.perf_counter()
    task = host.tasks.get(loaded.task, file=recipe.label, field="model.task")()
    runner = task.reference_runner(loaded)
    reference = run_batches(runner, splits["verification"], output, "reference")
    seconds["reference"] = time.perf_counter() - tick
    return _Run(recipe, plan, loaded, model_path, splits, reference, task, seconds)


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


def run_batches(
    runner: Runner, batches: list[Batch], output: Output, label: str
) -> list[list[np.ndarray]]:
    outputs = []
    with output.task(f"running {label}", len(batches)) as advance:
        for batch in batches:
            outputs.append(runner.run(_feeds(batch, runner.input_names)))
            advance(1)
    return outputs


def _feeds(batch: Batch, names: list[str]) -> dict[str, np.ndarray]:
    return {name: batch[name].numpy() for name in names}


def _capture(run: _Run, output: Output) -> ModelIR:
    tick = time.perf_counter()
    with output.stage("capturing with torch.export"):
        ir = capture(run.loaded, run.loaded.inputs, run.loaded.dims, source=str(run.model_path))
    run.seconds["capture"] = time.perf_counter() - tick
    return ir


def _evaluator(run: _Run, limit: int):
    """Measure an IR against the reference on the first ``limit`` verification samples."""
    batches, reference, taken = [], [], 0
    for batch, ref in zip(run.splits["verification"], run.reference, strict=True):
        if taken >= limit:
            break
        batches.append(batch)
        reference.append(ref)
        taken += len(next(iter(batch.values())))

    def evaluate(ir: ModelIR) -> dict[str, float]:
        got = [[t.float().numpy() for t in ir.run(b)] for b in batches]
        return compare(reference, got, [run.task.mask(b) for b in batches], run.task)

    return evaluate


def _run_passes(
    run: _Run, ir: ModelIR, options: RunOptions, output: Output, host: PluginHost
) -> tuple[ModelIR, list[PassRecord]]:
    tick = time.perf_counter()
    evaluate = _evaluator(run, run.recipe.verify.pass_samples)
    instruments = []
    if run.recipe.verify.pass_samples > 0:
        instruments.append(Numerics(evaluate))
    if options.dump_ir is not None:
        instruments.append(DumpIR(options.dump_ir))
    for extra in host.pm.hook.fxopt_add_instruments(recipe=run.recipe):
        instruments.extend(extra or [])
    loaded = run.loaded

    def reference(feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = loaded.module(*(feeds[s.name] for s in loaded.inputs))
        return list(out)

    ctx = PassContext(
        recipe=run.recipe,
        batches=lambda split: run.splits.get(split, []),
        reference=reference,
        evaluate=_evaluator(run, 10**9),
        cache_dir=run.cache_dir,
        output=output,
        plugins=host,
        resume=options.resume,
        reference_module=loaded.module,
    )
    done = run.pass_cache.resume(ir) if run.pass_cache else []
    if run.pass_cache:
        instruments.append(run.pass_cache.instrument(done))
    result = PassManager(run.plan.passes, instruments).run(ir, ctx, done)
    run.seconds["passes"] = time.perf_counter() - tick
    return result


def _lower_and_verify(
    run: _Run, ir: ModelIR, records: list[PassRecord], staged: StagedDir, output: Output
) -> Report:
    backend = run.plan.backend
    target, tmp = staged.target, staged.path
    tick = time.perf_counter()
    with output.stage(f"lowering to {backend.name}"):
        artifact = backend.lower(ir, tmp)
    for message in artifact.info.get("warnings", []):
        output.warn(f"{backend.name}: {message}")
    with output.stage(f"loading the artifact in {backend.name}"):
        runner = backend.load(tmp, artifact)
    run.seconds["lower"] = time.perf_counter() - tick

    tick = time.perf_counter()
    batches = run.splits["verification"]
    candidate = run_batches(runner, batches, output, "artifact")
    metrics = compare(run.reference, candidate, [run.task.mask(b) for b in batches], run.task)
    budget = check_budget(metrics, run.recipe.verify)
    passed = all(line.passed for line in budget)
    run.seconds["verify"] = time.perf_counter() - tick

    latency = None
    if run.recipe.verify.latency:
        with output.stage("timing the artifact against the original model"):
            latency = _latency(run, runner)
    assets = run.loaded.save_assets(tmp) if run.loaded.save_assets else []
    if "config.json" in assets and ir.meta.config != run.loaded.config:
        # a pass that changed sizes (prune.structured) recorded them in ir.meta.config
        text = json.dumps(ir.meta.config, indent=2) + "\n"
        (tmp / "config.json").write_text(text, encoding="utf-8")
    run.seconds["total"] = time.perf_counter() - run.started
    report = _report(run, ir, records, artifact.to_json(), metrics, budget, passed, latency)
    report.write(tmp)
    if warned := library_log.write(tmp):
        output.step(f"{warned} warning(s) from libraries in {target / library_log.LOG_FILE}")
    # every file the output holds is listed, so a later --force can tell it is all fxopt's
    files = [name for name in relative_files(tmp) if name != MANIFEST]
    manifest = build_manifest(
        build_key=run.build_key,
        hasher=HashCache(None).sha256,
        recipe=run.recipe.source,
        model_files=run.loaded.files,
        data_files=data_files(run.recipe),
        artifacts=files,
        out_dir=tmp,
    )
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not passed:
        raise _budget_error(report, target)
    staged.commit()
    report.data["out_dir"] = str(target)
    return report


def _latency(run: _Run, runner: Runner) -> dict[str, Any]:
    batch = run.splits["verification"][0]
    iters = run.recipe.verify.latency_iters
    reference = run.task.reference_runner(run.loaded)
    ref_feeds = _feeds(batch, reference.input_names)
    feeds = _feeds(batch, runner.input_names)
    return {
        "shape": {k: list(v.shape) for k, v in batch.items() if k in feeds},
        **reference_vs_optimized(
            lambda: reference.run(ref_feeds), lambda: runner.run(feeds), iters
        ),
    }


def _report(run, ir, records, artifact, metrics, budget, passed, latency) -> Report:
    """The typed report of a finished run (``report.json`` is its dump)."""
    module = run.loaded.module
    tensors = [*module.parameters(), *module.buffers()]
    typed = RunReport(
        fxopt=_version(),
        passed=passed,
        recipe=str(run.recipe.source) if run.recipe.source else None,
        model_path=str(run.model_path),
        task=ir.meta.task,
        inputs=[{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in ir.inputs],
        dims={k: v.model_dump() for k, v in run.loaded.dims.items()},
        passes=[r.to_json() for r in records],
        verify={
            "metrics": metrics,
            "budget": [line.to_json() for line in budget],
            "passed": passed,
            "costliest_step": _costliest(records, metrics),
        },
        model={
            "params_before": sum(p.numel() for p in module.parameters()),
            "params_after": ir.parameter_count(),
            "bytes_before": sum(t.numel() * t.element_size() for t in tensors),
            "bytes_after": ir.byte_size(),
            "ops_after": ir.ops(),
        },
        latency_ms=latency,
        target=run.recipe.target.model_dump(),
        artifacts=artifact,
        seconds={k: round(v, 3) for k, v in run.seconds.items()},
    )
    return Report(typed.model_dump(mode="json", exclude={"cache", "out_dir"}))


def _costliest(records: list[PassRecord], final: dict[str, float]) -> dict[str, Any] | None:
    """The step (a pass, or lowering) whose output lost the most cosine."""
    steps, previous = [], 1.0
    for record in records:
        if "cosine_mean" in record.numerics:
            steps.append((record.name, previous - record.numerics["cosine_mean"]))
            previous = record.numerics["cosine_mean"]
    steps.append(("lowering", previous - final["cosine_mean"]))
    name, drop = max(steps, key=lambda s: s[1])
    return {"name": name, "cosine_drop": drop}


def _budget_error(report: Report, target: Path) -> BudgetError:
    rejected = target.with_name(target.name + ".rejected")
    where = write_rejected(report, rejected)
    misses = [b for b in report["verify"]["budget"] if not b["passed"]]
    detail = "; ".join(
        f"{b['metric']} = {b['value']:.6f}, bound {b['field']} = {b['bound']}" for b in misses
    )
    step = report["verify"]["costliest_step"]
    error = BudgetError(
        f"fidelity budget missed: {detail}; costliest step: {step['name']} "
        f"(cosine -{step['cosine_drop']:.6f}); nothing written to {target}, {where}",
        file=report["recipe"],
        field="verify",
        fix="relax [verify] or change the passes that cost the most",
    )
    error.report = report
    return error


def write_rejected(report: Report, rejected: Path) -> str:
    """Write a rejected run's report to ``<out>.rejected`` (replacing only an earlier one) and
    say where it went."""
    if (problem := foreign_rejected(rejected)) is not None:
        return f"report not written ({rejected} {problem})"
    try:
        staged = StagedDir(rejected, Seen(exists=False))
        with staged as tmp:
            report.write(tmp)
            library_log.write(tmp)
            shutil.rmtree(rejected, ignore_errors=True)  # an earlier rejected report of ours
            staged.commit()
    except (OSError, FxoptError) as exc:
        return f"report not written ({exc})"
    return f"report in {rejected}"


def _version() -> str:
    try:
        return md.version("fxopt")
    except md.PackageNotFoundError:
        return "unknown"
