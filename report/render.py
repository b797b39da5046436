"""The run report: ``report.json`` for machines, ``report.md`` and a console table for people.

The JSON is a contract for build systems: its typed model is
:class:`~.model.RunReport` (schema committed as ``docs/report.schema.json``); a run
builds one and this class carries its dump.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from fxopt.engine.console import Output


@dataclass
class Report:
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.data.get("passed"))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False, default=str)

    def write(self, directory: Path) -> list[str]:
        (directory / "report.json").write_text(self.to_json() + "\n", encoding="utf-8")
        (directory / "report.md").write_text(self.to_markdown(), encoding="utf-8")
        return ["report.json", "report.md"]

    def to_markdown(self) -> str:
        d = self.data
        verdict = "PASSED" if d.get("passed") else "FAILED"
        lines = [
            f"# fxopt report: {verdict}",
            "",
            f"- recipe: `{d.get('recipe')}`",
            f"- model: `{d.get('model_path')}` (task `{d.get('task')}`)",
            f"- backend: `{d.get('artifacts', {}).get('backend')}`",
            "",
            "## Passes",
            "",
            "| pass | seconds | modified | nodes | cosine after | metrics |",
            "|---|---|---|---|---|---|",
        ]
        for p in d.get("passes", []):
            cosine = p.get("numerics", {}).get("cosine_mean")
            lines.append(
                f"| `{p['name']}` | {p['seconds']:.2f} | {p['modified']} | "
                f"{p['nodes_before']} → {p['nodes_after']} | {_fmt(cosine)} | "
                f"{json.dumps(p['metrics'])} |"
            )
        verify = d.get("verify", {})
        lines += ["", "## Fidelity", ""]
        lines += _set_table(verify["sets"]) if verify.get("sets") else _metric_table(verify)
        if verify.get("costliest_step"):
            step = verify["costliest_step"]
            lines += ["", f"Costliest step: `{step['name']}` (cosine −{step['cosine_drop']:.6f})."]
        model = d.get("model", {})
        lines += [
            "",
            "## Size and speed",
            "",
            f"- parameters: {model.get('params_before'):,} → {model.get('params_after'):,}",
            f"- bytes: {model.get('bytes_before'):,} → {model.get('bytes_after'):,}",
        ]
        latency = d.get("latency_ms")
        if latency:
            lines.append(
                f"- latency p50 (batch shape {latency['shape']}): reference "
                f"{latency['reference']['p50']} ms, optimized {latency['optimized']['p50']} ms "
                f"({latency['speedup_p50']}×)"
            )
        artifacts = d.get("artifacts", {})
        lines += ["", "## Artifacts", ""]
        if artifacts.get("path"):
            deploy = artifacts.get("deploy") or [artifacts["path"]]
            names = " with ".join(f"`{name}`" for name in deploy[:1]) + "".join(
                f" and `{name}` beside it" for name in deploy[1:]
            )
            lines += [
                f"Deploy {names} (run by `{artifacts.get('backend')}`), with the tokenizer "
                "files if the model has them; the other files are for inspection and for "
                "`optimize bench`.",
                "",
            ]
        lines += [f"- `{f}`" for f in artifacts.get("files", [])]
        return "\n".join(lines) + "\n"

    def print_summary(self, output: Output) -> None:
        if output.quiet:
            return
        d = self.data
        table = Table(title=f"fxopt: {'passed' if d.get('passed') else 'FAILED'}")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("cosine", justify="right")
        table.add_column("detail")
        for p in d.get("passes", []):
            table.add_row(
                p["name"],
                f"{p['seconds']:.2f}",
                _fmt(p.get("numerics", {}).get("cosine_mean")),
                ", ".join(f"{k}={v}" for k, v in p["metrics"].items()),
            )
        verify = d.get("verify", {})
        artifact = f"artifact ({d.get('artifacts', {}).get('backend')})"
        sets = verify.get("sets") or {"": verify}
        for i, (name, verdict) in enumerate(sets.items()):
            metrics = verdict.get("metrics", {})
            missed = ", budget missed" if name and not verdict.get("passed") else ""
            table.add_row(
                f"{artifact} on {name}" if name else artifact,
                f"{d.get('seconds', {}).get('lower', 0):.2f}" if i == 0 else "",
                _fmt(metrics.get("cosine_mean")),
                f"min cosine {_fmt(metrics.get('cosine_min'))}, "
                f"max abs {_fmt(metrics.get('max_abs'))}{missed}",
            )
        output.console.print(table)
        latency = d.get("latency_ms")
        if latency:
            output.console.print(
                f"latency p50 {latency['reference']['p50']} ms → "
                f"{latency['optimized']['p50']} ms ({latency['speedup_p50']}×), "
                f"shape {latency['shape']}"
            )


def _metric_table(verify: dict[str, Any]) -> list[str]:
    """One verification set: each metric, its bound and whether it held."""
    lines = ["| metric | value | bound | passed |", "|---|---|---|---|"]
    bounds = {b["metric"]: b for b in verify.get("budget", [])}
    for name, value in verify.get("metrics", {}).items():
        bound = bounds.get(name)
        lines.append(
            f"| {name} | {_fmt(value)} | {_fmt(bound['bound']) if bound else '–'} | "
            f"{bound['passed'] if bound else '–'} |"
        )
    return lines


def _set_table(sets: dict[str, Any]) -> list[str]:
    """Named verification sets side by side: each metric's bound, then its value on each set
    (✗ where it misses the bound)."""
    names = list(sets)
    lines = [
        "Sets: "
        + ", ".join(
            f"`{n}` ({s['source']}{', primary' if i == 0 else ''}, "
            f"{'passed' if s['passed'] else 'FAILED'})"
            for i, (n, s) in enumerate(sets.items())
        )
        + ".",
        "",
        f"| metric | bound | {' | '.join(names)} |",
        "|---|---|" + "---|" * len(names),
    ]
    bounds = {b["metric"]: b["bound"] for s in sets.values() for b in s["budget"]}
    missed = {(n, b["metric"]) for n, s in sets.items() for b in s["budget"] if not b["passed"]}
    metrics = dict.fromkeys(m for s in sets.values() for m in s["metrics"])
    for metric in metrics:
        cells = [
            _fmt(sets[n]["metrics"].get(metric)) + (" ✗" if (n, metric) in missed else "")
            for n in names
        ]
        lines.append(f"| {metric} | {_fmt(bounds.get(metric))} | {' | '.join(cells)} |")
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)
