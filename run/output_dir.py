"""An output directory read back: its typed report, its artifact loaded by its backend, and
the model it was built from.

``optimize bench``, ``optimize generate`` and the last round of ``optimize search`` all start
here, so an output that is missing, foreign or written by another fxopt fails the same way,
naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from fxopt.engine.backend import Artifact, Backend, Runner
from fxopt.engine.config import DimRange
from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.engine.loading import LoadedModel, LoadOptions
from fxopt.engine.plugin_host import PluginHost
from fxopt.engine.synthetic import synthetic_inputs
from fxopt.report.model import RunReport
from fxopt.run.load import load_model


@dataclass
class LoadedOutput:
    report: RunReport
    backend: Backend
    runner: Runner


def load_output(out_dir: Path, host: PluginHost, output: Output) -> LoadedOutput:
    """The output's report, and its artifact loaded by the backend that wrote it."""
    return load_artifact(out_dir, read_report(out_dir), host, output)


def load_artifact(
    out_dir: Path, report: RunReport, host: PluginHost, output: Output
) -> LoadedOutput:
    """The artifact of an output whose report is already read, loaded by its backend."""
    backend_class = host.backends.get(report.target.backend)
    artifact = Artifact.from_json(report.artifacts.model_dump(exclude_defaults=True))
    backend = backend_class(backend_class.Options.model_validate(report.target.options))
    with output.stage(f"loading the artifact in {backend.name}"):
        runner = backend.load(out_dir, artifact)
    return LoadedOutput(report, backend, runner)


def read_report(out_dir: Path) -> RunReport:
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


def load_source(report: RunReport, host: PluginHost, output: Output) -> LoadedModel:
    """The model the output was built from, its inputs in the order the report lists them
    (the artifact's order)."""
    model_path = Path(report.model_path)
    if not model_path.exists():
        raise OutputError("the source model is gone", file=model_path, fix="re-run optimize")
    with output.stage(f"loading the original model from {model_path}"):
        loaded = load_model(host, model_path, LoadOptions(task=report.task))
    loaded.inputs = [next(s for s in loaded.inputs if s.name == i.name) for i in report.inputs]
    return loaded


def optimal_sizes(report: RunReport) -> dict[str, int]:
    """The size of each dynamic axis at the recipe's optimal shape."""
    return {name: DimRange(**dim).optimal for name, dim in report.dims.items()}


def timed_sizes(report: RunReport) -> dict[str, int]:
    """The size of each dynamic axis in the shape the run's latency check timed (the
    optimal shape when it timed nothing)."""
    sizes = optimal_sizes(report)
    if report.latency_ms is not None:
        for entry in report.inputs:
            shape = report.latency_ms.shape.get(entry.name, [])
            for axis, size in zip(entry.shape, shape, strict=False):
                if isinstance(axis, str):
                    sizes[axis] = size
    return sizes


def synthetic_feeds(loaded: LoadedModel, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """One batch of random inputs of the given axis sizes (seeded: the same on every call)."""
    generator = torch.Generator().manual_seed(0)
    return {k: v.numpy() for k, v in synthetic_inputs(loaded.inputs, sizes, generator).items()}
