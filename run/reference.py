"""Stage ``reference``: the original model's outputs on each verification set, by its task."""

from __future__ import annotations

import numpy as np

from fxopt.engine.backend import Runner
from fxopt.engine.console import Output
from fxopt.engine.data import Batch

from .state import RunState


def stage(run: RunState) -> None:
    run.task = run.host.tasks.get(run.loaded.task, file=run.recipe.label, field="model.task")()
    runner = run.task.reference_runner(run.loaded)
    for name, key in run.recipe.data.verification_keys().items():
        label = on_set("reference", name, run)
        run.references[key] = run_batches(runner, run.splits[key], run.output, label)


def on_set(what: str, name: str, run: RunState) -> str:
    """``what`` on the verification set ``name``, named only where the recipe names its sets."""
    return f"{what} on {name}" if isinstance(run.recipe.data.verification, dict) else what


def run_batches(
    runner: Runner, batches: list[Batch], output: Output, label: str
) -> list[list[np.ndarray]]:
    """Every batch through ``runner``, with a progress bar."""
    outputs = []
    with output.task(f"running {label}", len(batches)) as advance:
        for batch in batches:
            outputs.append(runner.run(feeds(batch, runner.input_names)))
            advance(1)
    return outputs


def feeds(batch: Batch, names: list[str]) -> dict[str, np.ndarray]:
    """The batch's tensors a runner takes, as numpy arrays."""
    return {name: batch[name].numpy() for name in names}
