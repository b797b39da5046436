"""``optimize check RECIPE [MODEL_DIR]``: the TensorRT pre-flight plan, on any CPU.

It does everything a run does up to lowering (load, capture, the recipe's passes), exports the
ONNX a TensorRT build would parse into a temporary directory, and reports what the build
would see: ops and counts, the precision each op runs in, the casts, the optimization profiles
and every problem the static checker (:mod:`.compat`) finds, each naming its node. Exit
code 0 when TensorRT should build the model, 2 when it would not.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import onnx
from rich.markup import escape
from rich.table import Table

from fxopt.engine.console import Output
from fxopt.engine.errors import EXIT_OK, EXIT_USAGE
from fxopt.engine.plugin_host import PluginHost
from fxopt.plugins.onnx.export import export_onnx
from fxopt.run import Prepared, prepare

from .backend import TensorRTBackend, TensorRTOptions
from .compat import CompatReport, check_model
from .profiles import compute_profiles


def preflight(
    recipe: str | Path,
    model_dir: str | Path | None,
    *,
    output: Output,
    as_json: bool,
    host: PluginHost | None = None,
) -> int:
    """Print the pre-flight report; the exit code says whether TensorRT should build it."""
    prepared = prepare(recipe, model_dir, output=output, host=host)
    output.step("exporting ONNX and checking it against TensorRT's parser")
    report = check_prepared(prepared)
    summary = {
        "recipe": str(prepared.recipe.source) if prepared.recipe.source else None,
        "backend": prepared.recipe.target.backend,
        "passes": [r.name for r in prepared.records],
        **report.to_json(),
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render(summary, output)
    return EXIT_OK if report.compatible else EXIT_USAGE


def check_prepared(prepared: Prepared) -> CompatReport:
    """Export the prepared IR to a temporary ONNX file and check it."""
    target = prepared.recipe.target
    options = (
        prepared.plan.backend.options
        if isinstance(prepared.plan.backend, TensorRTBackend)
        else TensorRTOptions()
    )
    loaded = prepared.loaded
    profiles = compute_profiles(
        loaded.inputs, loaded.dims, options.profiles, label=prepared.recipe.label
    )
    runs = [
        {name: tuple(batch[name].shape) for name in prepared.ir.input_names}
        for key in prepared.recipe.data.verification_keys().values()
        for batch in prepared.splits.get(key, [])
    ]
    with tempfile.TemporaryDirectory(prefix="fxopt-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(prepared.ir, path, opset=options.opset)
        model = onnx.load(str(path))
    report = check_model(model, profiles, specs=loaded.inputs, runs=runs)
    if target.backend != TensorRTBackend.name:
        report.notes.insert(
            0, f"the recipe targets {target.backend!r}; checked as if it targeted 'tensorrt'"
        )
    return report


def render(summary: dict[str, Any], output: Output) -> None:
    console = output.console
    verdict = "compatible" if summary["compatible"] else f"{len(summary['problems'])} problem(s)"
    console.print(f"TensorRT pre-flight: {verdict}  (ONNX opset {summary['opset']})")
    console.print(f"  op table: {escape(summary['table'])}")
    console.print(f"  passes: {', '.join(summary['passes']) or 'none'}")
    ops = Table(title="ops (by the type of their first input)")
    for column in ("op", "count", "precisions"):
        ops.add_column(column)
    for op, count in summary["ops"].items():
        kinds = summary["precisions"].get(op, {})
        ops.add_row(op, str(count), ", ".join(f"{k} {v}" for k, v in kinds.items()))
    console.print(ops)
    if summary["casts"]:
        casts = ", ".join(f"{k} {v}" for k, v in summary["casts"].items())
        console.print(f"casts: {escape(casts)}")
    for index, profile in enumerate(summary["profiles"]):
        shapes = "; ".join(
            f"{name} {r['min']} / {r['opt']} / {r['max']}" for name, r in profile.items()
        )
        console.print(f"profile {index} (min / opt / max): {escape(shapes)}")
    for problem in summary["problems"]:
        where = f"node {problem['node']!r} ({problem['op']}): " if "node" in problem else ""
        fix = f"  (fix: {problem['field']})" if "field" in problem else ""
        text = f"{problem['kind']}: {where}{problem['message']}{fix}"
        console.print(f"[red]problem[/red] {escape(text)}")
    for note in summary["notes"]:
        console.print(f"note: {escape(note)}")
