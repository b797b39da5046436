"""Stage ``lower``: the IR to the backend's artifact in the staging directory, loaded back."""

from __future__ import annotations

from .state import RunState


def stage(run: RunState) -> None:
    backend, tmp = run.plan.backend, run.staged.path
    with run.output.stage(f"lowering to {backend.name}"):
        run.artifact = backend.lower(run.ir, tmp)
    for message in run.artifact.info.get("warnings", []):
        run.output.warn(f"{backend.name}: {message}")
    with run.output.stage(f"loading the artifact in {backend.name}"):
        run.runner = backend.load(tmp, run.artifact)
