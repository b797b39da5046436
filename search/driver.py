"""``optimize search``: every candidate of the recipe's space, the frontier, the winner.

The search directory holds::

    search.json      the state, rewritten after each candidate (``--resume`` reads it)
    search.md        the table, the frontier and the cache's share
    frontier.svg     latency against fidelity
    candidates/cNN/  each candidate that met the budget, a normal output directory
    winner/          a copy of the winner's, and winner.toml, its concrete recipe

Candidates run in one process, one after another, through the pass cache: those that share
their first passes (the same pruning and fine-tune, a different int8 setting) compute them
once. An interrupt keeps every finished candidate; ``--resume`` continues with the rest and
refuses a changed recipe or model, whose earlier results would no longer be comparable.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from fxopt.engine.console import Output
from fxopt.engine.errors import BudgetError, FxoptError, OutputError, RecipeError
from fxopt.engine.plugin_host import PluginHost, load_plugins
from fxopt.run.options import RunOptions
from fxopt.run.plan import protected_paths, resolve_model
from fxopt.run.recipe import Recipe, load_recipe
from fxopt.run.toml_compat import tomllib
from fxopt.store.atomic import write_atomic
from fxopt.store.output_guard import check_placement
from fxopt.store.root import locate
from fxopt.testing.toml_text import recipe_toml, toml_value

from . import finalists, frontier
from .evaluate import (
    PASSED,
    SKIPPED,
    TOO_LARGE,
    Outcome,
    PassLedger,
    SearchPlugin,
    evaluate,
)
from .results import STATE, SearchState, load_state, write_summary
from .space import Candidate, Dimension, candidates, count, dimensions

#: what a search directory may hold: all of it written by a search
OWN_NAMES = frozenset({STATE, "search.md", "frontier.svg", "candidates", "winner", "winner.toml"})


@dataclass
class SearchOptions:
    out_dir: Path | None = None
    resume: bool = False
    force: bool = False
    #: allow a space this large (default: the recipe's ``[search] max_candidates``)
    max_candidates: int | None = None
    run: RunOptions = field(default_factory=RunOptions)


def search(
    recipe_path: str | Path,
    model_dir: str | Path | None = None,
    options: SearchOptions | None = None,
    output: Output | None = None,
) -> SearchState:
    """Evaluate every candidate, write the results, materialize the winner.

    Raises :class:`BudgetError` (exit 3) after writing everything when no candidate met the
    budget; ``KeyboardInterrupt`` passes through once the finished candidates are saved."""
    options = options or SearchOptions()
    output = output or Output(quiet=True)
    recipe = load_recipe(recipe_path)
    _check_space(recipe, options.max_candidates)
    model_path = resolve_model(recipe, model_dir)
    out = options.out_dir or Path(f"{Path(recipe_path).stem}-search")
    location = locate(options.run.cache_dir)
    check_placement(
        out, protected_paths(recipe, model_path, location.path), what="search directory"
    )
    host = load_plugins(only=options.run.plugins)
    ledger = PassLedger(host)
    host.register(SearchPlugin(host, ledger), name="fxopt-search")
    dims, found = plan_candidates(recipe, host, options.max_candidates)
    state = _claim(out, recipe, model_path, options, len(found), output)
    by_id = {c.id: c for c in found}
    for o in state.outcomes:
        if o.dropped_at is not None and o.id in by_id:
            ledger.drop(by_id[o.id].recipe, o.dropped_at, o.id)
    if not options.run.use_cache:
        output.warn("--no-cache: candidates that share passes compute them again")
    goal = "fastest" if recipe.search.objective == "latency" else "smallest"  # type: ignore[union-attr]
    keys = ", ".join(d.key for d in dims)
    output.step(
        escape(
            f"searching {len(found)} candidates ({keys}) for the {goal} artifact within "
            f"the [verify] budget; results in {out}"
        )
    )
    started = time.perf_counter() - state.seconds
    try:
        for number, candidate in enumerate(found, start=1):
            if any(o.id == candidate.id for o in state.outcomes):
                continue
            place = f"{number}/{len(found)}"
            outcome = _one(candidate, place, model_path, out, options, output, host, ledger)
            _limit_size(outcome, recipe)
            state.outcomes.append(outcome)
            state.seconds = time.perf_counter() - started
            _summarize(state, recipe, out)
            output.step(escape(row(outcome)))
    except BaseException:  # an interrupt, or a bug: what finished is kept either way
        state.seconds = time.perf_counter() - started
        _summarize(state, recipe, out)
        raise
    state.finished = True
    _summarize(state, recipe, out)
    _final_round(state, recipe, out, host, output)
    _summarize(state, recipe, out)
    _materialize(state, by_id, out)
    _summarize(state, recipe, out)
    if state.winner is None:
        closest = next((o for o in state.outcomes if o.id == state.closest), None)
        raise BudgetError(
            f"no candidate met the budget ({len(state.outcomes)} tried"
            + (f"; closest: {closest.id}, {row(closest)}" if closest else "")
            + f"); the table and the frontier are in {out}",
            file=recipe.label,
            field="verify",
            fix="loosen the [verify] budget, or search values nearer the original model",
        )
    return state


def _one(
    candidate: Candidate,
    place: str,
    model_path: Path,
    out: Path,
    options: SearchOptions,
    output: Output,
    host: PluginHost,
    ledger: PassLedger,
) -> Outcome:
    """Run one candidate, or skip it when its first passes are a dropped candidate's."""
    shown = ", ".join(f"{k} = {toml_value(v)}" for k, v in candidate.values.items())
    if (by := ledger.dropped_by(candidate.recipe)) is not None:
        return Outcome(
            candidate.id,
            candidate.values,
            SKIPPED,
            message=f"its first passes are {by}'s, which missed the budget",
        )
    output.step(escape(f"candidate {candidate.id} ({place}): {shown}"))
    run = RunOptions(**{**options.run.__dict__, "out_dir": None, "force": True})
    return evaluate(
        candidate, model_path, out / "candidates" / candidate.id, run, output, host, ledger
    )


def _final_round(
    state: SearchState, recipe: Recipe, out: Path, host: PluginHost, output: Output
) -> None:
    """Re-time the fastest qualifying candidates side by side (``finalists``); a round that
    cannot run leaves the ranking on each candidate's own timing, and says so. The round only
    re-ranks what the candidates measured, so no failure of it (a backend refusing the
    synthetic batch included) may cost the user a finished search; an interrupt still ends it."""
    try:
        state.final = finalists.final_round(state.outcomes, recipe, out, host, output)
    except Exception as exc:
        state.final = None  # final_round cleared every final_ms first and set none
        why = (
            exc.render().splitlines()[0]
            if isinstance(exc, FxoptError)
            else f"{type(exc).__name__}: {exc}"
        )
        output.warn(
            f"final round skipped, the winner is ranked on each candidate's own timing: {why}"
        )
        return
    for o in state.outcomes:
        if o.final_ms is not None:
            speed = f", {o.final_speedup:.2f}x eager" if o.final_speedup else ""
            output.step(
                escape(
                    f"final round: {o.id} {o.final_ms:.2f} ms{speed} (its own run timed "
                    f"{o.latency_ms:.2f} ms)"
                )
            )


def row(o: Outcome) -> str:
    """One line for the console: what a candidate gave."""
    parts = [f"{o.id} {o.status}"]
    if o.latency_ms is not None:
        speed = f", {o.speedup:.2f}x eager" if o.speedup else ""
        parts.append(f"{o.latency_ms:.2f} ms{speed}")
    if o.cosine_mean is not None:
        parts.append(f"cosine {o.cosine_mean:.4f} mean / {o.cosine_min:.4f} min")
    if o.size_bytes is not None:
        parts.append(f"{o.size_bytes / 1e6:.1f} MB")
    parts.append(f"{o.seconds:.0f} s")
    text = " · ".join(parts)
    if o.misses:
        text += f" (missed: {'; '.join(o.misses)})"
    elif o.message and o.status != PASSED:
        text += f" ({o.message.splitlines()[0]})"
    return text


def plan_candidates(
    recipe: Recipe, host: PluginHost, max_candidates: int | None = None
) -> tuple[list[Dimension], list[Candidate]]:
    """The space's dimensions and its candidates, every one checked as a recipe (what
    ``optimize validate`` checks of a ``[search]`` table, and a search does first)."""
    _check_space(recipe, max_candidates)
    dims = dimensions(recipe, host)
    return dims, candidates(recipe, _recipe_data(recipe), dims, host)


def _check_space(recipe: Recipe, max_candidates: int | None) -> None:
    if recipe.search is None:
        raise RecipeError(
            "the recipe has no [search] table: nothing to search",
            file=recipe.label,
            field="search",
            fix='add a [search.space] table, e.g. "passes.prune.structured.ffn" = [0.2, 0.3] '
            "(docs/search.md)",
        )
    if recipe.search.objective == "latency" and not recipe.verify.latency:
        raise RecipeError(
            "the search minimizes latency but [verify] latency = false times nothing",
            file=recipe.label,
            field="verify.latency",
            fix='set latency = true, or search with objective = "size"',
        )
    limit = max_candidates or recipe.search.max_candidates
    if (n := count(recipe)) > limit:
        raise RecipeError(
            f"the search space makes {n} candidates, more than the limit of {limit}",
            file=recipe.label,
            field="search.space",
            fix=f"narrow the space, or allow it with --max-candidates {n}",
        )


def _recipe_data(recipe: Recipe) -> dict:
    """The recipe file's own TOML data (its defaults left implicit) with its file paths made
    absolute, so that a concrete recipe written elsewhere (winner.toml) finds the same files."""
    assert recipe.source is not None
    data = tomllib.loads(recipe.source.read_text(encoding="utf-8"))
    path = data.get("model", {}).get("path")
    if isinstance(path, str) and not path.startswith(("pkg:", "builtin:")):
        data["model"]["path"] = str(recipe.resolve_path(path))
    for split in data.get("data", {}).values():
        tables = [split, *(v for v in split.values() if isinstance(v, dict))]
        for table in tables:
            if isinstance(table.get("path"), str):
                table["path"] = str(recipe.resolve_path(table["path"]))
    return data


def _fingerprint(recipe: Recipe, model_path: Path) -> str:
    """What the candidates' results depend on: the recipe and the model, but not how the
    winner is ranked (``objective``, ``latency_tie``, the final round's), so a finished search
    can be resumed with another ranking and re-ranks without running a candidate again."""
    data = recipe.model_dump(mode="json")
    for ranking in ("objective", "latency_tie", "finalists", "final_margin"):
        data["search"].pop(ranking, None)
    text = json.dumps({"recipe": data, "model": str(model_path.resolve())}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _claim(
    out: Path,
    recipe: Recipe,
    model_path: Path,
    options: SearchOptions,
    total: int,
    output: Output,
) -> SearchState:
    """The state to continue from (``--resume``) or a new one; refuses a directory that is
    not an earlier search's unless it is empty, and replaces one only with ``--force``."""
    fingerprint = _fingerprint(recipe, model_path)
    earlier = load_state(out) if out.is_dir() else None
    if options.resume:
        if earlier is None:
            raise OutputError(
                f"{out} holds no search to resume (no {STATE})",
                fix="run the search without --resume first, or name its directory with -o",
            )
        if earlier.fingerprint != fingerprint:
            raise OutputError(
                f"the recipe or the model changed since the search in {out} began: its "
                "results would not compare with new ones",
                fix="restore the recipe, or start over with --force (or in another directory)",
            )
        output.step(f"resuming: {len(earlier.outcomes)} of {earlier.total} candidates done")
        earlier.finished = False
        earlier.objective = recipe.search.objective  # type: ignore[union-attr]
        earlier.latency_tie = recipe.search.latency_tie  # type: ignore[union-attr]
        return earlier
    if out.exists():
        names = {p.name for p in out.iterdir()} if out.is_dir() else {"?"}
        if earlier is not None and options.force and names <= OWN_NAMES:
            shutil.rmtree(out)
        elif earlier is not None:
            raise OutputError(
                f"{out} holds an earlier search",
                fix="continue it with --resume, start it over with --force, or name another "
                "directory with -o",
            )
        elif names:
            raise OutputError(
                f"{out} exists and is not a search directory fxopt wrote; nothing was changed",
                fix="name a new or empty directory with -o",
            )
    out.mkdir(parents=True, exist_ok=True)
    assert recipe.search is not None
    return SearchState(
        recipe=str(recipe.source),
        model=str(model_path),
        fingerprint=fingerprint,
        objective=recipe.search.objective,
        space=recipe.search.space,
        total=total,
        latency_tie=recipe.search.latency_tie,
    )


def _limit_size(outcome: Outcome, recipe: Recipe) -> None:
    limit = recipe.search.max_size_mb if recipe.search else None
    size = outcome.size_bytes
    if outcome.status == PASSED and limit is not None and size is not None and size > limit * 1e6:
        outcome.status = TOO_LARGE
        outcome.misses = [f"size {size / 1e6:.1f} MB above max_size_mb = {limit:g}"]


def _summarize(state: SearchState, recipe: Recipe, out: Path) -> None:
    state.frontier = [o.id for o in frontier.frontier(state.outcomes)]
    best = frontier.winner(state.outcomes, state.objective, state.latency_tie)
    state.winner = best.id if best else None
    near = frontier.closest(state.outcomes)
    state.closest = near.id if near else None
    state.save(out)
    write_summary(state, out, recipe.verify.min_cosine)


def _materialize(state: SearchState, by_id: dict[str, Candidate], out: Path) -> None:
    """``winner/`` (a copy of the winner's output) and ``winner.toml`` (its recipe)."""
    if (out / "winner").is_dir():  # a resumed search's earlier winner
        shutil.rmtree(out / "winner")
    (out / "winner.toml").unlink(missing_ok=True)
    if state.winner is None:
        return
    shutil.copytree(out / "candidates" / state.winner, out / "winner")
    concrete = {k: v for k, v in by_id[state.winner].data.items() if k != "search"}
    values = "\n".join(f"#   {k} = {toml_value(v)}" for k, v in by_id[state.winner].values.items())
    header = f"# the winner of `optimize search` over {state.recipe}:\n{values}\n"
    write_atomic(out / "winner.toml", header + recipe_toml(concrete))
