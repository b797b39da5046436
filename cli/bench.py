"""``optimize bench OUT_DIR``: time an output's artifact next to the model it came from.

Both run in this process on the same inputs (synthetic, at the recipe's optimal shape unless
``--batch`` says otherwise), interleaved with a warm-up on every visit (see ``timing``),
reporting median and p95.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from fxopt.engine import library_log
from fxopt.engine.backend import Artifact
from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.engine.loading import LoadOptions
from fxopt.engine.plugin_host import load_plugins
from fxopt.engine.recipe import DimRange
from fxopt.engine.report_model import RunReport
from fxopt.engine.run.load import load_model
from fxopt.engine.specs import InputSpec
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.engine.timing import reference_vs_optimized


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
    report = _read_report(out_dir)
    host = load_plugins()
    backend_class = host.backends.get(report.target.backend)
    artifact = Artifact.from_json(report.artifacts.model_dump(exclude_defaults=True))
    specs = [InputSpec(i.name, i.dtype, tuple(i.shape)) for i in report.inputs]
    dims = {k: DimRange(**v) for k, v in report.dims.items()}
    model_path, task = Path(report.model_path), report.task
    backend = backend_class(backend_class.Options.model_validate(report.target.options))
    with output.stage(f"loading the artifact in {backend.name}"):
        runner = backend.load(out_dir, artifact)

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


def _read_report(out_dir: Path) -> RunReport:
    """The output's report, typed; a clear error when it is missing or not fxopt's."""
    report_file = out_dir / "report.json"
    try:
        data = json.loads(report_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(
            "not an fxopt output directory (no report.json)",
            file=out_dir,
            fix="pass a directory written by `optimize RECIPE -o DIR`",
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise OutputError(
            f"report.json cannot be read ({type(exc).__name__})",
            file=report_file,
            fix="re-run optimize to write the output again",
        ) from exc
    try:
        return RunReport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise OutputError(
            f"report.json is not an fxopt report: {where}: {first['msg']}",
            file=report_file,
            fix="re-run optimize to write the output again (with this fxopt)",
        ) from exc
