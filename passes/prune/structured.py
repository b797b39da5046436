"""``prune.structured``: remove whole FFN neurons, attention heads and conv channels.

Steps: drop dead code and unused parameters (a dead consumer would still run with the old
sizes), analyse channel dependencies (:class:`~.graph.ChannelDependencies`), leave out the
groups that ``ignore`` names, score units (:mod:`.importance`), choose what each group keeps
(:mod:`.selection`), optionally refit the layers reading pruned channels
(:mod:`.reconstruct`), slice parameters and rewrite constants (:mod:`.rewrite`), re-export,
and record the new sizes in the model's config (:mod:`.hf_config`) so the ``config.json``
written with the output describes the pruned model.

Groups the analysis cannot prove safe are never pruned; they are listed in the metrics under
``left_alone`` with the reason. Recover accuracy afterwards with the ``finetune`` pass
(``objective = "distill"`` learns the unpruned model's outputs).
"""

from __future__ import annotations

from collections import Counter

from fxopt.engine.errors import RecipeError
from fxopt.engine.pass_base import Pass, PassContext, PassResult
from fxopt.passes.dce import DeadCodeElimination

from . import reconstruct
from .config import PruneConfig
from .graph import ChannelDependencies, DependencyGraph
from .group import Group
from .hf_config import updated_config
from .importance import magnitude, removal_energy, taylor
from .pruners import PrunerTable
from .rewrite import prune_in_place, reexport
from .selection import Decision, select

#: how many candidate names an error about ``ignore`` lists
SHOWN = 8


class StructuredPrune(Pass):
    name = "prune.structured"
    Config = PruneConfig

    def run(self, ir, ctx: PassContext) -> PassResult:
        config: PruneConfig = self.config  # type: ignore[assignment]
        if DeadCodeElimination().run(ir, ctx).modified:
            ir.invalidate()
        table = PrunerTable.from_registry(ctx.plugins.layer_pruners)
        deps: DependencyGraph = ir.analysis(ChannelDependencies.using(table))
        ratios = config.ratios()
        ignored = _ignored(deps.groups, config.ignore, ctx)
        targets = [g for g in deps.prunable if g.kind in ratios and g.name not in ignored]
        scores = self._scores(ir, deps, targets, ctx)
        decisions = select(targets, scores, ratios, round_to=config.round_to, scope=config.scope)
        for decision in decisions:
            if decision.clamped:
                ctx.output.warn(
                    f"prune.structured: ratio {ratios[decision.group.kind]} would remove every "
                    f"unit of {decision.group.name}; keeping {len(decision.keep)}"
                )
        pruned = [d for d in decisions if d.removed]
        params_before = ir.parameter_count()
        refit: dict = {}
        if pruned:
            keep = {d.group.id: d.keep for d in pruned}
            if config.reconstruct:
                refit = self._reconstruction(ir, deps, keep, ctx)
            prune_in_place(ir.module, deps, keep)
            reconstruct.assign(ir.module, refit)
            ir.module = reexport(ir)
            if ir.meta.config:  # a Hugging Face model's config.json
                ir.meta.config = self._config(ir.meta.config, deps.groups, decisions, ctx)
        metrics = {
            "criterion": config.criterion,
            "params_before": params_before,
            "params_after": ir.parameter_count(),
            "pruned": _summary(decisions),
            "left_alone": [
                f"{g.name} ({g.kind}): {'; '.join(g.unsafe)}"
                for g in deps.unproven
                if g.kind in ratios
            ],
        }
        if config.reconstruct:
            metrics["reconstructed"] = sorted({name.rpartition(".")[0] for name in refit})
        if ignored:
            metrics["ignored"] = sorted(ignored)
        clamped = [d.group.name for d in decisions if d.clamped]
        if clamped:
            metrics["clamped"] = clamped
        return PassResult(ir, modified=bool(pruned), preserved=set(), metrics=metrics)

    def _scores(self, ir, deps: DependencyGraph, targets: list[Group], ctx: PassContext):
        criterion = self.config.criterion  # type: ignore[attr-defined]
        if criterion in ("l1", "l2"):
            return magnitude(ir.module, deps, targets, 1 if criterion == "l1" else 2)
        batches = ctx.required_batches(
            "calibration", f"criterion {criterion!r}", "or use criterion = 'l2'"
        )
        if criterion == "taylor":
            with ctx.output.task("taylor importance", len(batches)) as advance:
                return taylor(ir.module, deps, targets, batches, ir.input_names, advance)
        readers = reconstruct.readers(ir.module, deps, {g.id for g in targets})
        inputs = {node.args[0]: weight for node, weight, _ in readers}
        with ctx.output.task("activation importance", len(batches)) as advance:
            grams = reconstruct.input_grams(ir.module, inputs, batches, ir.input_names, advance)
        spaces = [(weight, space_id) for _, weight, space_id in readers]
        return removal_energy(ir.module, deps, targets, spaces, grams)

    @staticmethod
    def _reconstruction(ir, deps: DependencyGraph, keep: dict, ctx: PassContext) -> dict:
        batches = ctx.required_batches(
            "calibration", "reconstruct = true", "or set reconstruct = false"
        )
        found = reconstruct.consumers(ir.module, deps, keep)
        with ctx.output.task("reconstruction statistics", len(batches)) as advance:
            inputs = {c.node.args[0]: c.weight for c in found}
            grams = reconstruct.input_grams(ir.module, inputs, batches, ir.input_names, advance)
        return reconstruct.refit(ir.module, found, grams, reconstruct.DAMPING)

    @staticmethod
    def _config(config, groups: list[Group], decisions: list[Decision], ctx) -> dict:
        kept = {d.group.id: len(d.keep) for d in decisions}
        # fixed groups (a model output, head_dim) are not layer sizes a config describes
        sizes = [(g.kind, g.size, kept.get(g.id, g.size), g.unit) for g in groups if not g.fixed]
        new, notes = updated_config(config, sizes)
        for note in notes:
            ctx.output.warn(f"prune.structured: {note}")
        return new


def _ignored(groups: list[Group], patterns: list[str], ctx: PassContext) -> set[str]:
    """Names of the groups ``patterns`` match; a pattern matching nothing is an error."""
    found: set[str] = set()
    for index, pattern in enumerate(patterns):
        matched = {g.name for g in groups if g.matches(pattern)}
        if not matched:
            candidates = [g.name for g in groups if g.prunable]
            shown = ", ".join(candidates[:SHOWN]) + (", ..." if len(candidates) > SHOWN else "")
            raise RecipeError(
                f"ignore pattern {pattern!r} matches no group, module or parameter",
                file=ctx.recipe.label,
                field=f"config.ignore[{index}]",
                fix=f"patterns are fnmatch globs; prunable groups: {shown or 'none'}",
            )
        found |= matched
    return found


def _summary(decisions: list[Decision]) -> dict[str, str]:
    """``{"ffn": "6 groups: 1536 -> 1076", "heads": "6 groups: 12 -> 9"}``."""
    out = {}
    kinds = Counter(d.group.kind for d in decisions)
    for kind in kinds:
        mine = [d for d in decisions if d.group.kind == kind]
        before = sorted({d.group.size for d in mine})
        after = sorted({len(d.keep) for d in mine})
        out[kind] = f"{len(mine)} groups: {_span(before)} -> {_span(after)}"
    return out


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"
