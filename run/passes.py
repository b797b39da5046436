"""Stage ``passes``: the recipe's passes over the IR, under the pass manager's instruments."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fxopt.engine.instruments import DumpIR, Numerics
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import PassContext
from fxopt.engine.pass_manager import PassManager
from fxopt.engine.specs import conform

from .state import RunState
from .verify import compare


def stage(run: RunState) -> None:
    instruments = []
    if run.recipe.verify.pass_samples > 0:
        instruments.append(Numerics(evaluator(run, run.recipe.verify.pass_samples)))
    if run.options.dump_ir is not None:
        instruments.append(DumpIR(run.options.dump_ir))
    for extra in run.host.pm.hook.fxopt_add_instruments(recipe=run.recipe):
        instruments.extend(extra or [])
    done = run.pass_cache.resume(run.ir) if run.pass_cache else []
    if run.pass_cache:
        instruments.append(run.pass_cache.instrument(done))
    manager = PassManager(run.plan.passes, instruments)
    run.ir, run.records = manager.run(run.ir, context(run), done)


def context(run: RunState) -> PassContext:
    """What the passes may use besides the IR: data, the reference model, the cache."""
    recipe, loaded = run.recipe, run.loaded

    def reference(feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feeds = conform(feeds, loaded.inputs)  # the original cache sizes, if a pass changed them
        with torch.no_grad():
            out = loaded.module(*(feeds[s.name] for s in loaded.inputs))
        return list(out)

    return PassContext(
        recipe=recipe,
        batches=lambda split: run.splits.get(split, []),
        reference=reference,
        evaluate=evaluator(run, 10**9),
        cache_dir=run.cache_dir,
        output=run.output,
        plugins=run.host,
        resume=run.options.resume,
        reference_module=loaded.module,
    )


def evaluator(run: RunState, limit: int) -> Callable[[ModelIR], dict[str, float]]:
    """Measure an IR against the reference on the first ``limit`` verification samples."""
    batches, reference, taken = [], [], 0
    for batch, ref in zip(run.splits["verification"], run.reference, strict=True):
        if taken >= limit:
            break
        batches.append(batch)
        reference.append(ref)
        taken += len(next(iter(batch.values())))

    def evaluate(ir: ModelIR) -> dict[str, float]:
        got = [[t.float().numpy() for t in ir.run(conform(b, ir.inputs))] for b in batches]
        return compare(reference, got, [run.task.mask(b) for b in batches], run.task)

    return evaluate
