"""One candidate of a search: run its recipe, and say what came of it as an :class:`Outcome`.

A candidate runs as a normal build (:func:`fxopt.run.optimize`) into its own output
directory, through the pass cache: candidates that share their first passes compute them once.
A candidate whose pass already misses the ``[verify]`` budget, with no later pass that can win
fidelity back (:attr:`~fxopt.engine.pass_base.Pass.recovers`, a fine-tune), is dropped there,
before it is lowered: :class:`DropOverBudget` is the instrument that watches the per-pass
numerics the run measures anyway.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxopt.engine.console import Output
from fxopt.engine.errors import BudgetError, FxoptError
from fxopt.engine.hookspecs import hookimpl
from fxopt.engine.instruments import Instrument, PassRecord
from fxopt.engine.plugin_host import PluginHost
from fxopt.report import Report
from fxopt.run import optimize
from fxopt.run.options import RunOptions
from fxopt.run.recipe import Recipe
from fxopt.run.verify import check_budget

from .space import Candidate

#: what became of a candidate
PASSED, OVER_BUDGET, DROPPED, SKIPPED, FAILED, TOO_LARGE = (
    "passed",
    "over budget",
    "dropped",
    "skipped",
    "failed",
    "too large",
)


@dataclass
class Outcome:
    """A candidate's result, as ``search.json`` stores it."""

    id: str
    values: dict[str, Any]
    status: str
    #: the artifact's median latency and the eager model's, in ms ([verify] timing)
    latency_ms: float | None = None
    reference_ms: float | None = None
    #: the final round's medians, timed interleaved with the other finalists and the
    #: original model (``search.finalists``); the winner is ranked on these where set
    final_ms: float | None = None
    final_reference_ms: float | None = None
    #: the cosine against the original model (the weakest verification set's)
    cosine_mean: float | None = None
    cosine_min: float | None = None
    #: every metric verification reported (the first set's), each set's when there are
    #: several, and the budget bounds it missed (on any set)
    metrics: dict[str, float] = field(default_factory=dict)
    sets: dict[str, dict[str, float]] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    #: bytes of the files a deployment copies; the weights' bytes for a candidate not written
    size_bytes: int | None = None
    size_from: str | None = None
    seconds: float = 0.0
    #: what running it alone would have cost: its own seconds plus those of the passes the
    #: cache (or an earlier drop) answered, at what they took when they were computed
    alone_seconds: float = 0.0
    cached_passes: int = 0
    #: the pass a dropped candidate stopped after
    dropped_at: int | None = None
    #: where a dropped candidate stopped ("passes[1] prune.structured"), or why it failed
    message: str | None = None
    out_dir: str | None = None

    @property
    def speedup(self) -> float | None:
        if self.latency_ms and self.reference_ms:
            return self.reference_ms / self.latency_ms
        return None

    @property
    def final_speedup(self) -> float | None:
        if self.final_ms and self.final_reference_ms:
            return self.final_reference_ms / self.final_ms
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Dropped(FxoptError):
    """A candidate's pass missed the budget and no later pass can recover it."""

    def __init__(
        self, index: int, name: str, record: PassRecord, misses: list[str], first: int
    ) -> None:
        super().__init__(f"passes[{index}] {name} already misses the budget ({'; '.join(misses)})")
        self.index, self.name, self.record, self.misses = index, name, record, misses
        #: the first pass this run computed: those before it came from the pass cache
        self.first = first


class DropOverBudget(Instrument):
    """Raises :class:`Dropped` after a pass whose numerics miss the budget, unless a later
    pass of the recipe recovers. Only the metrics a pass measured are judged (the per-pass
    numerics run on ``[verify] pass_samples`` samples; 0 turns them, and this, off)."""

    def __init__(self, recipe: Recipe, host: PluginHost, ledger: PassLedger) -> None:
        self.recipe, self.ledger = recipe, ledger
        self.recovers = [host.passes.get(spec.name).recovers for spec in recipe.passes]
        self.first: int | None = None

    def after_pass(self, index, pass_, result, record) -> None:
        self.ledger.computed(self.recipe, index, record.seconds)
        self.first = index if self.first is None else self.first
        if any(self.recovers[index + 1 :]):
            return
        misses = [
            miss(line.metric, line.value, line.field, line.bound)
            for line in check_budget(record.numerics, self.recipe.verify)
            if line.value is not None and not line.passed
        ]
        if misses:
            raise Dropped(index, pass_.name, record, misses, self.first)


class PassLedger:
    """What each pass prefix cost when it was computed, and which prefixes missed the budget:
    a later candidate whose passes start with a dropped prefix is skipped without a run."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self.costs: dict[str, float] = {}
        self.dropped: dict[str, str] = {}  # prefix -> the candidate that dropped there

    def computed(self, recipe: Recipe, index: int, seconds: float) -> None:
        self.costs[self._prefix(recipe, index)] = seconds

    def drop(self, recipe: Recipe, index: int, candidate: str) -> None:
        self.dropped[self._prefix(recipe, index)] = candidate

    def cost(self, recipe: Recipe, upto: int) -> float:
        """Seconds passes 0..upto took when computed (0 for those never seen computed)."""
        return sum(self.costs.get(self._prefix(recipe, i), 0.0) for i in range(upto + 1))

    def dropped_by(self, recipe: Recipe) -> str | None:
        for index in range(len(recipe.passes)):
            if (by := self.dropped.get(self._prefix(recipe, index))) is not None:
                return by
        return None

    def _prefix(self, recipe: Recipe, index: int) -> str:
        reads = [self.host.passes.get(spec.name).reads_target for spec in recipe.passes]
        return prefix(recipe, index, reads)


def miss(metric: str, value: float | None, field: str, bound: float) -> str:
    """One missed budget line, as the table and search.json show it (a pass's numerics and a
    run's final verification alike)."""
    if value is None:
        return f"{metric} not measured ({field})"
    return f"{metric} {value:.4g} against {field} = {bound:g}"


def prefix(recipe: Recipe, index: int, reads_target: list[bool]) -> str:
    """The recipe up to pass ``index``, budget included: within one search (one model, one
    data set) it names a pass result the way the pass cache's key does (the target only once
    a pass that reads it has run: ``Pass.reads_target``), and a prefix dropped under this
    budget."""
    data = recipe.model_dump(mode="json", exclude={"search"})
    data["passes"] = data["passes"][: index + 1]
    if not any(reads_target[: index + 1]):
        del data["target"]
    return json.dumps(data, sort_keys=True)


class SearchPlugin:
    """Adds :class:`DropOverBudget` to every candidate's run."""

    def __init__(self, host: PluginHost, ledger: PassLedger) -> None:
        self.host, self.ledger = host, ledger

    @hookimpl
    def fxopt_add_instruments(self, recipe: Recipe) -> list[Instrument]:
        return [DropOverBudget(recipe, self.host, self.ledger)]


def evaluate(
    candidate: Candidate,
    model_dir: Path | None,
    out_dir: Path,
    options: RunOptions,
    output: Output,
    host: PluginHost,
    ledger: PassLedger,
) -> Outcome:
    """Run one candidate into ``out_dir``; every way it can end becomes an :class:`Outcome`
    (an interrupt excepted: it ends the search)."""
    outcome = Outcome(candidate.id, candidate.values, PASSED)
    started = time.perf_counter()
    report: Report | None = None
    cached_seconds = 0.0
    try:
        report = optimize(
            candidate.recipe, model_dir, out_dir, options=options, output=output, host=host
        )
        outcome.out_dir = str(out_dir)
    except BudgetError as exc:
        report = getattr(exc, "report", None)
        outcome.status = OVER_BUDGET
    except Dropped as exc:
        ledger.drop(candidate.recipe, exc.index, candidate.id)
        outcome.status, outcome.message = DROPPED, f"passes[{exc.index}] {exc.name}"
        outcome.dropped_at = exc.index
        outcome.misses = exc.misses
        outcome.cached_passes = exc.first
        cached_seconds = ledger.cost(candidate.recipe, exc.first - 1)
        outcome.metrics = dict(exc.record.numerics)
        outcome.cosine_mean = exc.record.numerics.get("cosine_mean")
        outcome.cosine_min = exc.record.numerics.get("cosine_min")
    except FxoptError as exc:
        outcome.status, outcome.message = FAILED, exc.render()
    outcome.seconds = time.perf_counter() - started
    outcome.alone_seconds = outcome.seconds + cached_seconds
    if report is not None:
        _read_report(outcome, report, out_dir if outcome.status == PASSED else None)
        cached = [p for p in report["passes"] if p["metrics"].get("cached")]
        outcome.cached_passes = len(cached)
        if report.data.get("cache"):  # the whole build came from the cache: what it took then
            outcome.cached_passes = len(report["passes"])
            outcome.alone_seconds = sum(report["seconds"].values())
        outcome.alone_seconds += sum(p["seconds"] for p in cached)
    return outcome


def _read_report(outcome: Outcome, report: Report, written: Path | None) -> None:
    """Figures from a run's report. With several verification sets the budget held on each,
    so the cosine shown is the weakest set's and every set's misses count."""
    verify = report["verify"]
    sets = verify.get("sets") or {"": {"metrics": verify["metrics"], "budget": verify["budget"]}}
    outcome.metrics = dict(verify["metrics"])
    outcome.sets = {name: dict(s["metrics"]) for name, s in sets.items() if name}
    for key in ("cosine_mean", "cosine_min"):
        values = [s["metrics"][key] for s in sets.values() if key in s["metrics"]]
        setattr(outcome, key, min(values) if values else None)
    outcome.misses = [
        (f"{name}: " if name else "") + miss(b["metric"], b["value"], b["field"], b["bound"])
        for name, s in sets.items()
        for b in s["budget"]
        if not b["passed"]
    ]
    if (latency := report["latency_ms"]) is not None:
        outcome.latency_ms = latency["optimized"]["p50"]
        outcome.reference_ms = latency["reference"]["p50"]
    artifacts = report["artifacts"]
    if written is not None:
        files = artifacts.get("deploy") or [artifacts["path"]]
        outcome.size_bytes = sum((written / f).stat().st_size for f in files)
        outcome.size_from = "artifact"
    else:
        outcome.size_bytes = report["model"]["bytes_after"]
        outcome.size_from = "weights"
