"""``optimize bench OUT_DIR``: time an output's artifact next to the model it came from.

Both run in this process on the same inputs (synthetic, at the recipe's optimal shape unless
``--batch`` says otherwise), interleaved with a warm-up on every visit (see ``timing``),
reporting median and p95.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.engine.loading import LoadOptions
from fxopt.engine.plugin_host import load_plugins
from fxopt.engine.specs import InputSpec
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.run import library_log
from fxopt.run.load import load_model
from fxopt.run.timing import reference_vs_optimized

from .outputs import load_output


def bench_output(
    out_dir: Path,
    *,
    iters: int = 30,
    warmup: int = 5,
    batch: int | None = None,
    output: Output | None = None,
) -> dict[str, Any]:
    output = output or Output(quiet=True)
    library_log.reroute()  # torch set up its own log handlers when it was imported
    host = load_plugins()
    loaded_output = load_output(out_dir, host, output)
    report, backend, runner = loaded_output.report, loaded_output.backend, loaded_output.runner
    specs = [InputSpec(i.name, i.dtype, tuple(i.shape)) for i in report.inputs]
    dims = {k: DimRange(**v) for k, v in report.dims.items()}
    model_path, task = Path(report.model_path), report.task

    if not model_path.exists():
        raise OutputError("the source model is gone", file=model_path, fix="re-run optimize")
    with output.stage(f"loading the original model from {model_path}"):
        loaded = load_model(host, model_path, LoadOptions(task=task))
    loaded.inputs = [next(s for s in loaded.inputs if s.name == spec.name) for spec in specs]
    sizes = {name: r.optimal for name, r in dims.items()}
    if batch is not None:
        sizes["batch"] = batch
    feeds = {
        k: v.numpy()
        for k, v in synthetic_inputs(loaded.inputs, sizes, torch.Generator().manual_seed(0)).items()
    }
    reference = host.tasks.get(loaded.task)().reference_runner(loaded)
    with output.stage(f"timing {iters} calls of each, after {warmup} warm-up calls"):
        timed = reference_vs_optimized(
            lambda: reference.run(feeds), lambda: runner.run(feeds), iters, warm=warmup
        )
    return {"shape": {k: list(v.shape) for k, v in feeds.items()}, **timed, "backend": backend.name}
