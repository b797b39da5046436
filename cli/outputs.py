"""An output directory read back: its typed report and its artifact, loaded by its backend.

``optimize bench`` and ``optimize generate`` both start here, so an output that is missing,
foreign or written by another fxopt fails the same way, naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fxopt.engine.backend import Artifact, Backend, Runner
from fxopt.engine.console import Output
from fxopt.engine.errors import OutputError
from fxopt.engine.plugin_host import PluginHost
from fxopt.report.model import RunReport


@dataclass
class LoadedOutput:
    report: RunReport
    backend: Backend
    runner: Runner


def load_output(out_dir: Path, host: PluginHost, output: Output) -> LoadedOutput:
    """The output's report, and its artifact loaded by the backend that wrote it."""
    report = read_report(out_dir)
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
