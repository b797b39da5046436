"""``optimize bench OUT_DIR``: time an output's artifact next to the model it came from.

Both run in this process on the same inputs (synthetic, at the recipe's optimal shape unless
``--batch`` says otherwise), interleaved with a warm-up on every visit (see ``timing``),
reporting median and p95.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fxopt.engine.console import Output
from fxopt.engine.plugin_host import load_plugins
from fxopt.run import library_log
from fxopt.run.output_dir import load_output, load_source, optimal_sizes, synthetic_feeds
from fxopt.run.timing import reference_vs_optimized


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
    loaded = load_source(report, host, output)
    sizes = optimal_sizes(report)
    if batch is not None:
        sizes["batch"] = batch
    feeds = synthetic_feeds(loaded, sizes)
    reference = host.tasks.get(loaded.task)().reference_runner(loaded)
    with output.stage(f"timing {iters} calls of each, after {warmup} warm-up calls"):
        timed = reference_vs_optimized(
            lambda: reference.run(feeds), lambda: runner.run(feeds), iters, warm=warmup
        )
    return {"shape": {k: list(v.shape) for k, v in feeds.items()}, **timed, "backend": backend.name}
