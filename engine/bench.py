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

from .backend import Artifact
from .errors import OutputError
from .loading import LoadOptions
from .plugin_host import load_plugins
from .recipe import DimRange
from .specs import InputSpec
from .synthetic import synthetic_inputs
from .timing import reference_vs_optimized


def bench_output(
    out_dir: Path, *, iters: int = 30, warmup: int = 5, batch: int | None = None
) -> dict[str, Any]:
    report_file = out_dir / "report.json"
    if not report_file.is_file():
        raise OutputError(
            "not an fxopt output directory (no report.json)",
            file=out_dir,
            fix="pass a directory written by `optimize RECIPE -o DIR`",
        )
    report = json.loads(report_file.read_text(encoding="utf-8"))
    host = load_plugins()
    backend_class = host.backends.get(report["target"]["backend"])
    backend = backend_class(backend_class.Options.model_validate(report["target"]["options"]))
    runner = backend.load(out_dir, Artifact.from_json(report["artifacts"]))

    from .pipeline import eager_runner

    specs = [InputSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in report["inputs"]]
    dims = {k: DimRange(**v) for k, v in report["dims"].items()}
    loaded = _load_reference(host, Path(report["model_path"]), report["task"])
    loaded.inputs = [next(s for s in loaded.inputs if s.name == spec.name) for spec in specs]
    sizes = {name: r.optimal for name, r in dims.items()}
    if batch is not None:
        sizes["batch"] = batch
    feeds = {
        k: v.numpy()
        for k, v in synthetic_inputs(loaded.inputs, sizes, torch.Generator().manual_seed(0)).items()
    }
    reference = eager_runner(loaded)
    return {
        "shape": {k: list(v.shape) for k, v in feeds.items()},
        **reference_vs_optimized(
            lambda: reference.run(feeds), lambda: runner.run(feeds), iters, warm=warmup
        ),
        "backend": backend.name,
    }


def _load_reference(host, path: Path, task: str):
    options = LoadOptions(task=task)
    for entry in host.loaders:
        loader = entry.obj()
        if loader.can_load(path):
            return loader.load(path, options)
    raise OutputError("the source model is gone", file=path, fix="re-run optimize")
