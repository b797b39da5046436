"""Stage ``write``: the report, the loader's assets and the manifest, then the commit.

The output is staged (:class:`~fxopt.store.staging.StagedDir`) and renamed into place only
when the budget held; a missed budget leaves the target untouched and the report in
``<out>.rejected/``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import time
from pathlib import Path
from typing import Any

from fxopt.engine.errors import BudgetError, FxoptError
from fxopt.engine.instruments import PassRecord
from fxopt.report import Report
from fxopt.report.model import RunReport
from fxopt.store.hashes import HashCache
from fxopt.store.manifest import build_manifest
from fxopt.store.output_guard import MANIFEST, Seen, foreign_rejected, relative_files
from fxopt.store.staging import StagedDir

from . import library_log
from .plan import data_files
from .state import RunState


def stage(run: RunState) -> Report:
    tmp, target, loaded = run.staged.path, run.staged.target, run.loaded
    if loaded.save_assets is not None:
        loaded.save_assets(tmp, run.ir.meta.config)
    run.seconds["total"] = time.perf_counter() - run.started
    report = build_report(run)
    report.write(tmp)
    if warned := library_log.write(tmp):
        run.output.step(f"{warned} warning(s) from libraries in {target / library_log.LOG_FILE}")
    # every file the output holds is listed, so a later --force can tell it is all fxopt's
    manifest = build_manifest(
        build_key=run.build_key,
        hasher=HashCache(None).sha256,
        recipe=run.recipe.source,
        model_files=loaded.files,
        data_files=data_files(run.recipe),
        artifacts=[name for name in relative_files(tmp) if name != MANIFEST],
        out_dir=tmp,
    )
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not run.passed:
        raise budget_error(report, target)
    run.staged.commit()
    report.data["out_dir"] = str(target)
    return report


def build_report(run: RunState) -> Report:
    """The typed report of a finished run (``report.json`` is its dump)."""
    ir, module, primary = run.ir, run.loaded.module, next(iter(run.sets.values()))
    tensors = [*module.parameters(), *module.buffers()]
    typed = RunReport(
        fxopt=_version(),
        passed=run.passed,
        recipe=str(run.recipe.source) if run.recipe.source else None,
        model_path=str(run.model_path),
        task=ir.meta.task,
        inputs=[{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in ir.inputs],
        dims={k: v.model_dump() for k, v in run.loaded.dims.items()},
        passes=[r.to_json() for r in run.records],
        verify={
            **primary.to_json(),
            "passed": run.passed,
            "costliest_step": _costliest(run.records, primary.metrics),
            "sets": _sets(run),
        },
        model={
            "params_before": sum(p.numel() for p in module.parameters()),
            "params_after": ir.parameter_count(),
            "bytes_before": sum(t.numel() * t.element_size() for t in tensors),
            "bytes_after": ir.byte_size(),
            "ops_after": ir.ops(),
        },
        latency_ms=run.latency,
        target=run.recipe.target.model_dump(),
        artifacts=run.artifact.to_json(),
        seconds={k: round(v, 3) for k, v in run.seconds.items()},
    )
    # one unnamed verification set: the report stays as it was before sets had names
    plain = {"verify": {"sets"}} if typed.verify.sets is None else {}
    return Report(typed.model_dump(mode="json", exclude={"cache": True, "out_dir": True, **plain}))


def _sets(run: RunState) -> dict[str, Any] | None:
    """Each named verification set's source, metrics and budget lines."""
    named = run.recipe.data.verification
    if not isinstance(named, dict):
        return None
    return {name: {"source": named[name].source, **v.to_json()} for name, v in run.sets.items()}


def _costliest(records: list[PassRecord], final: dict[str, float]) -> dict[str, Any] | None:
    """The step (a pass, or lowering) whose output lost the most cosine."""
    steps, previous = [], 1.0
    for record in records:
        if "cosine_mean" in record.numerics:
            steps.append((record.name, previous - record.numerics["cosine_mean"]))
            previous = record.numerics["cosine_mean"]
    steps.append(("lowering", previous - final["cosine_mean"]))
    name, drop = max(steps, key=lambda s: s[1])
    return {"name": name, "cosine_drop": drop}


def budget_error(report: Report, target: Path) -> BudgetError:
    """The missed budget as an error naming the misses and the costliest step; the report
    goes to ``<out>.rejected``."""
    rejected = target.with_name(target.name + ".rejected")
    where = write_rejected(report, rejected)
    sets = report["verify"].get("sets") or {"": report["verify"]}
    detail = "; ".join(
        (f"on {name}: " if name else "") + f"{b['metric']} = {_value(b['value'])}, bound "
        f"{b['field']} = {b['bound']}"
        for name, verdict in sets.items()
        for b in verdict["budget"]
        if not b["passed"]
    )
    step, (primary, first) = report["verify"]["costliest_step"], next(iter(sets.items()))
    if primary and first["passed"]:  # the passes are measured on the primary set alone
        cost = f"the primary set, {primary}, held and every pass is measured on it"
    else:
        cost = f"costliest step: {step['name']} (cosine -{step['cosine_drop']:.6f})"
    error = BudgetError(
        f"fidelity budget missed: {detail}; {cost}; nothing written to {target}, {where}",
        file=report["recipe"],
        field="verify",
        fix="relax [verify] or change the passes that cost the most",
    )
    error.report = report
    return error


def _value(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6f}"


def write_rejected(report: Report, rejected: Path) -> str:
    """Write a rejected run's report to ``<out>.rejected`` (replacing only an earlier one) and
    say where it went."""
    if (problem := foreign_rejected(rejected)) is not None:
        return f"report not written ({rejected} {problem})"
    try:
        staged = StagedDir(rejected, Seen(exists=False))
        with staged as tmp:
            report.write(tmp)
            library_log.write(tmp)
            shutil.rmtree(rejected, ignore_errors=True)  # an earlier rejected report of ours
            staged.commit()
    except (OSError, FxoptError) as exc:
        return f"report not written ({exc})"
    return f"report in {rejected}"


def _version() -> str:
    try:
        return md.version("fxopt")
    except md.PackageNotFoundError:
        return "unknown"
