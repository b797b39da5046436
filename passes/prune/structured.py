"""``prune.structured``: remove whole FFN neurons, attention heads and conv channels.

Grouped-query attention is pruned as it is built: ``kv_heads`` removes whole key/value heads
with the query heads that share them, ``heads`` the same query heads from every group.

Steps: drop dead code and unused parameters (a dead consumer would still run with the old
sizes), analyse channel dependencies (:class:`~.graph.ChannelDependencies`), leave out the
groups that ``ignore`` names, score units (:mod:`.importance`), choose what each group keeps
(:mod:`.selection`), optionally refit the layers reading pruned channels
(:mod:`.reconstruct`), slice parameters and rewrite constants (:mod:`.rewrite`), re-export,
and record the new sizes in the model's config (:mod:`.hf_config`) so the ``config.json``
written with the output describes the pruned model.

Groups the analysis cannot prove safe are never pruned; they are listed in the metrics under
``left_alone`` with the reason, as are the groups of a Hugging Face model whose size its
``config.json`` has no place for (a classifier's pooler width): a config that does not describe
the weights is a broken output, so such groups stay whole, and a size that still cannot be
written fails the pass. A kind the recipe asks for that removes nothing is a warning (console
and ``metrics["warnings"]``); a run that would remove nothing at all is an error. Recover
accuracy afterwards with the ``finetune`` pass (``objective = "distill"`` learns the unpruned
model's outputs).
"""

from __future__ import annotations

from collections import Counter

from fxopt.engine.errors import PassError, RecipeError
from fxopt.engine.pass_base import Pass, PassContext, PassResult
from fxopt.passes.dce import DeadCodeElimination

from . import reconstruct
from .config import PruneConfig
from .graph import ChannelDependencies, DependencyGraph
from .group import HEAD_DIM_OF_SPLIT, Group
from .hf_config import (
    KEYS,
    UNDESCRIBED_CONV,
    config_sizes,
    refused_by_transformers,
    unexpressed,
    updated_config,
)
from .importance import magnitude, removal_energy, taylor
from .pruners import PrunerTable
from .rewrite import model_input_sizes, prune_in_place, reexport
from .selection import Decision, select

#: how many candidate names an error about ``ignore`` lists
SHOWN = 8


class StructuredPrune(Pass):
    name = "prune.structured"
    reads_target = False
    Config = PruneConfig

    def run(self, ir, ctx: PassContext) -> PassResult:
        config: PruneConfig = self.config  # type: ignore[assignment]
        if DeadCodeElimination().run(ir, ctx).modified:
            ir.invalidate()
        table = PrunerTable.from_registry(ctx.plugins.layer_pruners)
        deps: DependencyGraph = ir.analysis(ChannelDependencies.using(table))
        ratios = config.ratios()
        ignored = _ignored(deps.groups, config.ignore, ctx)
        # a Hugging Face model: groups its config.json cannot describe stay whole
        whole = unexpressed(ir.meta.config, deps.groups, list(ratios)) if ir.meta.config else {}
        targets = [
            g
            for g in deps.prunable
            if g.kind in ratios and g.name not in ignored and g.id not in whole
        ]
        left_alone = _left_alone(deps, whole, ratios)
        if not targets:  # before any scoring or calibration
            _refuse_nothing(
                _idle_kinds(config, deps.groups, [], left_alone, ignored), left_alone, ctx
            )
        scores, warnings = self._scores(ir, deps, targets, ctx)
        decisions = select(targets, scores, ratios, round_to=config.round_to, scope=config.scope)
        for decision in decisions:
            if decision.clamped:
                warnings.append(
                    f"prune.structured: ratio {ratios[decision.group.kind]} would remove every "
                    f"unit of {decision.group.name}; keeping {len(decision.keep)}"
                )
        idle = _idle_kinds(config, deps.groups, decisions, left_alone, ignored)
        pruned = [d for d in decisions if d.removed]
        if not pruned:
            _refuse_nothing(idle, left_alone, ctx)
        # a Hugging Face model's config.json, with the new sizes: refused before any work
        # when it cannot describe the pruned model
        new_config = self._config(ir.meta.config, deps.groups, decisions, whole, ctx)
        warnings += [f"prune.structured: {line}" for line in idle]
        for message in warnings:
            ctx.output.warn(message)
        params_before = ir.parameter_count()
        refit: dict = {}
        keep = {d.group.id: d.keep for d in pruned}
        if config.reconstruct:
            refit = self._reconstruction(ir, deps, keep, ctx)
        prune_in_place(ir.module, deps, keep)
        reconstruct.assign(ir.module, refit)
        ir.resize_inputs(model_input_sizes(ir, deps, keep))
        ir.module = reexport(ir)
        ir.meta.config = new_config
        metrics = {
            "criterion": config.criterion,
            "params_before": params_before,
            "params_after": ir.parameter_count(),
            "pruned": _summary(decisions),
            "left_alone": [f"{g.name} ({g.kind}): {reason}" for g, reason in left_alone],
        }
        if config.reconstruct:
            metrics["reconstructed"] = sorted({name.rpartition(".")[0] for name in refit})
        if ignored:
            metrics["ignored"] = sorted(ignored)
        clamped = [d.group.name for d in decisions if d.clamped]
        if clamped:
            metrics["clamped"] = clamped
        if warnings:
            metrics["warnings"] = warnings
        return PassResult(ir, modified=True, preserved=set(), metrics=metrics)

    def _scores(self, ir, deps: DependencyGraph, targets: list[Group], ctx: PassContext):
        """The scores of ``targets``, and warnings about how they were taken."""
        criterion = self.config.criterion  # type: ignore[attr-defined]
        if criterion in ("l1", "l2"):
            return magnitude(ir.module, deps, targets, 1 if criterion == "l1" else 2), []
        batches = ctx.required_batches(
            "calibration", f"criterion {criterion!r}", "or use criterion = 'l2'"
        )
        if criterion == "taylor":
            with ctx.output.task("taylor importance", len(batches)) as advance:
                scores, unreached = taylor(
                    ir.module, deps, targets, batches, ir.input_names, advance
                )
            warnings = []
            if unreached:
                more = f" (and {len(unreached) - 1} more)" if len(unreached) > 1 else ""
                warnings.append(
                    f"prune.structured: criterion 'taylor' found no gradient for "
                    f"{unreached[0]}{more}: the outputs do not depend on its weights through "
                    "differentiable ops; scored by l2 magnitude instead"
                )
            return scores, warnings
        readers = reconstruct.readers(ir.module, deps, {g.id for g in targets})
        inputs = {node.args[0]: weight for node, weight, _ in readers}
        with ctx.output.task("activation importance", len(batches)) as advance:
            grams = reconstruct.input_grams(ir.module, inputs, batches, ir.input_names, advance)
        spaces = [(weight, space_id) for _, weight, space_id in readers]
        return removal_energy(ir.module, deps, targets, spaces, grams), []

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
    def _config(config, groups: list[Group], decisions: list[Decision], whole, ctx) -> dict:
        if not config:
            return config
        kept = {d.group.id: len(d.keep) for d in decisions}
        new, notes = updated_config(config, config_sizes(config, groups, kept, whole))
        keys = sorted({k for kind in KEYS for k in KEYS[kind] if k in config})
        where = {"file": ctx.recipe.label, "field": f"passes[{ctx.index}].config"}
        if notes:
            raise PassError(
                "config.json cannot describe the pruned model: " + "; ".join(notes),
                fix=f"leave those groups whole with `ignore` (config.json keys: "
                f"{', '.join(keys) or 'none'}), or prune the model as a .pt2",
                **where,
            )
        refused = refused_by_transformers(new)
        if refused and not refused_by_transformers(config):
            changed = {k: new[k] for k in new if new[k] != config.get(k)}
            raise PassError(
                f"transformers refuses config.json with the pruned sizes {changed}: {refused}",
                fix="choose ratios whose sizes it accepts (heads: a count that divides "
                "hidden_size, e.g. heads = 0.5 of 4), or leave those groups whole with `ignore`",
                **where,
            )
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


def _left_alone(
    deps: DependencyGraph, whole: dict[int, str], ratios: dict[str, float]
) -> list[tuple[Group, str]]:
    """Groups of the asked kinds that stay whole, with why: couplings the analysis could
    not prove safe, and sizes config.json could not describe."""
    unproven = {g.id for g in deps.unproven}
    out = []
    for group in deps.groups:
        if group.kind == "head_dim" and HEAD_DIM_OF_SPLIT in group.fixed:
            if {"ffn", "heads", "kv_heads"} & set(ratios):  # a width these might expect
                out.append((group, HEAD_DIM_OF_SPLIT))
            continue
        if group.kind not in ratios:
            continue
        if group.id in unproven:
            out.append((group, "; ".join(group.unsafe)))
        elif group.id in whole:
            out.append((group, whole[group.id]))
    return out


def _idle_kinds(
    config: PruneConfig,
    groups: list[Group],
    decisions: list[Decision],
    left_alone: list[tuple[Group, str]],
    ignored: set[str],
) -> list[str]:
    """One line per asked kind that removes nothing, saying why."""
    lines = []
    for kind, ratio in config.ratios().items():
        if any(d.removed for d in decisions if d.group.kind == kind):
            continue
        explicit = getattr(config, kind) is not None
        label = f"{kind} = {ratio}" if explicit else f"ratio = {ratio} ({kind} groups)"
        alone = [f"{g.name}: {reason}" for g, reason in left_alone if g.kind == kind]
        chosen = sorted({d.group.size for d in decisions if d.group.kind == kind})
        if alone:
            more = f" (and {len(alone) - 1} more)" if len(alone) > 1 else ""
            lines.append(f"{label} pruned nothing: {kind} groups left alone: {alone[0]}{more}")
        elif chosen:
            lines.append(
                f"{label} pruned nothing: it rounds to no unit of groups of {_span(chosen)}"
            )
        elif explicit and not any(g.kind == kind and g.name in ignored for g in groups):
            lines.append(f"{label} pruned nothing: the model has no {kind} group")
    return lines


def _refuse_nothing(idle: list[str], left_alone: list[tuple[Group, str]], ctx) -> None:
    """A run that asked for pruning and would ship the model unchanged is an error."""
    reasons = " ".join(r for _, r in left_alone)
    if UNDESCRIBED_CONV in reasons:
        fix = (
            "a Hugging Face model's conv channels cannot be recorded in its config.json: "
            "export the model with torch.export (a .pt2 file, no config.json to keep in step) "
            "and prune that, prune a kind config.json can describe (`ffn`, `heads`), or drop "
            "this pass"
        )
    elif "config.json" in reasons:
        fix = "prune a kind config.json can describe (`ffn`, `heads`), or drop this pass"
    else:
        fix = "set a larger ratio, or a kind the model has (`ffn`, `heads`, `conv`), or drop "
        fix += "this pass; report.json lists the groups left alone and why"
    raise PassError(
        "nothing to prune: " + ("; ".join(idle) or "no group of the asked kinds"),
        file=ctx.recipe.label,
        field=f"passes[{ctx.index}].config",
        fix=fix,
    )


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
