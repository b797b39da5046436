"""``quantize.int8``: post-training static int8 as explicit Q/DQ in the graph.

torchao's pt2e flow with our :class:`~.quantizer.Int8Quantizer`: ``prepare`` inserts
observers at the inputs of the selected ops, the recipe's calibration set runs through the
graph (a progress bar), ``convert`` turns observers into quantize/dequantize ops and weights
into int8 constants. Optional steps around it: the outlier-channel split before prepare, the
accuracy-aware choice of float layers after it, and the calibration cache that skips the
data entirely on a rerun. Backends lower the Q/DQ form: ONNX Runtime fuses it into int8
MatMuls, the torch backend's inductor into oneDNN int8 kernels, TensorRT reads it as is.

GPT-2's ``Conv1D`` layers (``addmm`` with an ``[in, out]`` weight) are rewritten to the
linears they are before anything else (:mod:`.conv1d`). A graph in which no op of the selected
kinds can take int8 is an error naming what the graph holds: the output would be the float
model, not an int8 one.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch.fx import GraphModule

from fxopt.engine.errors import PassError, RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassContext, PassResult

from .cache import Calibration, CalibrationCache, cache_key
from .calibrate import (
    Inputs,
    calibration_inputs,
    convert,
    import_torchao,
    observe,
    prepare,
)
from .channel_stats import channel_absmax
from .config import Int8Config
from .conv1d import matmuls_as_linears
from .graph_edit import module_name
from .observers import ObserverOptions
from .op_kinds import Scales, candidates, kind_of, unsupported_reason
from .outliers import (
    copies_needed,
    drop_outlier_masks,
    duplicate_outliers,
    outlier_candidates,
    pick_outliers,
    split_outliers,
)
from .sensitivity import Selection, select_float_layers


class QuantizeInt8(Pass):
    name = "quantize.int8"
    reads_target = False
    Config = Int8Config
    needs_data = ("calibration",)

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        config: Int8Config = self.config
        label = ctx.recipe.label
        batches = ctx.required_batches("calibration", self.name)
        import_torchao()
        base = ir.module
        # GPT-2's Conv1D (addmm with an [in, out] weight) becomes the linear it is
        rewritten = matmuls_as_linears(base) if "linear" in config.ops else []
        warnings: list[str] = []
        notes = _check_selection(base, config, label, ctx, warnings)
        if rewritten:
            notes["linears_from_matmul"] = rewritten
        observer_for = _observers(config, ctx, label)
        inputs = calibration_inputs(ir, batches, config.trim_padding)
        root = ctx.cache_dir / "calibration" if ctx.cache_dir is not None else None
        cache = CalibrationCache(root, ctx.output, config.cache)
        key = cache_key(base, inputs, _settings(config, ctx))
        started = time.perf_counter()
        calibration = cache.load(key)
        if calibration is not None and (missing := calibration.missing_nodes(base)):
            stale = f"stale calibration cache (unknown nodes {missing[:3]}); recalibrating"
            cache.discard(key, stale)
            calibration = None
        state = "hit" if calibration is not None else ("miss" if cache.enabled else "off")
        builder = _Builder(base, config, inputs)
        if calibration is None:
            calibration, converted = self._calibrate(builder, observer_for, ir, ctx)
            cache.store(key, calibration)
        else:
            ctx.output.step(f"calibration cache hit ({len(calibration.scales)} scales)")
            builder.outliers, builder.copies = calibration.outliers, calibration.outlier_copies
            converted = builder.build(calibration.scales, keep_float=set(calibration.float_layers))
        ir.module = converted.module
        for item in converted.quantizer.unsupported:
            message = f"{item.module or item.node} ({item.op}) stays in float: {item.reason}"
            ctx.output.warn(message)
            warnings.append(message)
        timing = {
            "batches": len(inputs),
            "samples": sum(len(args[0]) for args in inputs),
            "seconds": round(time.perf_counter() - started, 3),
            "cache": state,
            "key": key[:16],
        }
        metrics = _metrics(config, converted, calibration, timing) | notes
        if warnings:
            metrics["warnings"] = warnings
        return PassResult(ir, modified=True, preserved=set(), metrics=metrics)

    def _calibrate(
        self, builder: _Builder, observer_for, ir: ModelIR, ctx: PassContext
    ) -> tuple[Calibration, _Built]:
        config: Int8Config = self.config
        if config.outlier_split:
            builder.find_outliers(ctx)
        with ctx.output.task(f"calibrating ({config.observer})", len(builder.inputs)) as advance:
            built = builder.build(None, observer_for=observer_for, advance=advance)
        calibration = Calibration(
            scales=built.scales,
            layers=dict(built.quantizer.annotated),
            outliers=builder.outliers,
            outlier_copies=builder.copies,
        )
        if config.accuracy_aware:
            selection = self._select(builder, calibration, ir, ctx)
            calibration.float_layers = selection.costs
            calibration.info["accuracy_aware"] = {
                "metrics": selection.metrics,
                "evaluations": selection.evaluations,
            }
            if selection.float_layers:
                built = builder.build(calibration.scales, keep_float=set(selection.float_layers))
        return calibration, built

    def _select(
        self, builder: _Builder, calibration: Calibration, ir: ModelIR, ctx: PassContext
    ) -> Selection:
        layers = list(calibration.layers)

        def measure(only: frozenset[str] | None, keep: frozenset[str]) -> dict[str, float]:
            built = builder.build(calibration.scales, only=only, keep_float=keep)
            return ctx.evaluate(dataclasses.replace(ir, module=built.module, _analyses={}))

        # all quantized, the float graph, one per layer, the float-limit check, a binary search
        total = len(layers) + 3 + max(len(layers), 1).bit_length()
        with ctx.output.task("measuring layer sensitivity", total) as advance:
            return select_float_layers(
                layers,
                measure,
                ctx.recipe.verify,
                max_float=self.config.max_float_layers,
                advance=advance,
                label=ctx.recipe.label,
            )


@dataclasses.dataclass
class _Built:
    module: GraphModule
    quantizer: Any  # an Int8Quantizer, after annotate
    scales: Scales
    kinds: dict[str, str]


@dataclasses.dataclass
class _Builder:
    """Builds quantized graphs from the float graph, which it never modifies."""

    base: GraphModule
    config: Int8Config
    inputs: list[Inputs]
    #: linear node -> outlier input channels, and (duplicate mode) copies of each
    outliers: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    copies: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def find_outliers(self, ctx: PassContext) -> None:
        """Pick each linear's outlier channels (and copies) on the calibration data."""
        config = self.config
        gm = copy.deepcopy(self.base)
        nodes = [
            n
            for n in outlier_candidates(list(gm.graph.nodes))
            if _matches(module_name(n), config.outlier_layers)
            and not _matches(module_name(n), config.skip)
        ]
        with ctx.output.task("finding outlier channels", len(self.inputs)) as advance:
            stats = channel_absmax(gm, nodes, self.inputs, advance)
        for name, absmax in stats.items():
            channels = pick_outliers(absmax, config.outlier_threshold, config.outlier_max_channels)
            if channels:
                self.outliers[name] = channels
                self.copies[name] = copies_needed(absmax, channels, config.outlier_threshold)

    def build(
        self,
        fixed: Scales | None,
        *,
        observer_for: Callable[[str], Any] | None = None,
        only: frozenset[str] | None = None,
        keep_float: set[str] | frozenset[str] = frozenset(),
        advance: Callable[[int], None] = lambda n: None,
    ) -> _Built:
        """Quantize a copy of the float graph: observe ``inputs`` when ``fixed`` is None,
        else use the given scales (one batch still runs, for the weight observers)."""
        from .quantizer import Int8Quantizer, read_scales

        config = self.config
        gm = copy.deepcopy(self.base)
        if config.outlier_mode == "duplicate":
            duplicate_outliers(gm, self.outliers, self.copies)
        else:
            split_outliers(gm, self.outliers)
        quantizer = Int8Quantizer(
            ops=tuple(config.ops),
            form=config.activations,
            observer_for=observer_for,
            skip=tuple(config.skip),
            fixed=fixed,
            only=only,
            keep_float=frozenset(keep_float),
        )
        prepared = prepare(gm, quantizer)
        observe(prepared, self.inputs if fixed is None else self.inputs[:1], advance)
        scales = read_scales(prepared, quantizer.annotated) if fixed is None else fixed
        kinds = {n.name: kind_of(n) for n in prepared.graph.nodes if n.name in quantizer.annotated}
        converted = convert(prepared)
        drop_outlier_masks(converted)
        return _Built(converted, quantizer, scales, kinds)


def _metrics(
    config: Int8Config, built: _Built, calibration: Calibration, timing: dict[str, Any]
) -> dict[str, Any]:
    """What the report shows for the pass (module names, not graph node names)."""
    names = calibration.layers
    metrics = {
        "activations": config.activations,
        "observer": config.observer,
        "quantized": len(built.quantizer.annotated),
        "quantized_ops": dict(Counter(built.kinds.values())),
        "skipped": built.quantizer.skipped,
        "unsupported": [u.to_json() for u in built.quantizer.unsupported],
        "outlier_channels": {names.get(n, n): c for n, c in calibration.outliers.items()},
        "calibration": timing,
    }
    if config.accuracy_aware:
        metrics["float_layers"] = {
            names.get(n, n): cost for n, cost in calibration.float_layers.items()
        }
    return metrics


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_selection(
    gm: GraphModule, config: Int8Config, label: str, ctx: PassContext, warnings: list[str]
) -> dict[str, Any]:
    """Refuse patterns that match nothing, and a graph with nothing to quantize; note (and
    warn about) op kinds the graph does not have."""
    nodes = candidates(gm.graph.nodes, config.ops)
    names = [module_name(n) or n.name for n in nodes]
    for field, patterns in (
        ("skip", config.skip),
        ("observer_overrides", list(config.observer_overrides)),
        ("outlier_layers", config.outlier_layers if config.outlier_split else []),
    ):
        for pattern in patterns:
            if not _matches_any(pattern, names):
                more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
                shown = ", ".join(names[:8]) + more
                raise RecipeError(
                    f"{field} pattern {pattern!r} matches no {'/'.join(config.ops)} module; "
                    f"candidates: {shown or 'none'}",
                    file=label,
                    field=f"config.{field}",
                    fix="patterns are fnmatch globs on these names ('*' crosses dots: "
                    "'*.output.dense' also matches 'attention.output.dense')",
                )
    _refuse_nothing_to_quantize(gm, config, nodes, label, ctx)
    found = {kind_of(n) for n in nodes}
    absent = [kind for kind in config.ops if kind not in found]
    for kind in absent:
        message = f"quantize.int8: the graph has no {kind} op to quantize"
        ctx.output.warn(message)
        warnings.append(message)
    return {"absent_op_kinds": absent} if absent else {}


#: ops worth naming when a graph has nothing of the selected kinds: where the compute is
COMPUTE_OPS = ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "conv", "einsum", "attention")


def _refuse_nothing_to_quantize(
    gm: GraphModule, config: Int8Config, nodes: list, label: str, ctx: PassContext
) -> None:
    """A run that asked for int8 and would get the float model back is an error, not a
    pass: name what the graph holds instead, and the fix."""
    skipped = [n for n in nodes if _matches(module_name(n), config.skip)]
    reasons = Counter(
        reason
        for n in nodes
        if n not in skipped and (reason := unsupported_reason(n, gm)) is not None
    )
    if len(nodes) > len(skipped) + sum(reasons.values()):
        return  # at least one op gets int8
    kinds = "/".join(config.ops)
    holds = Counter(
        str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_function" and any(op in str(n.target) for op in COMPUTE_OPS)
    )
    parts = [f"nothing to quantize: no {kinds} op in the graph can take int8"]
    if skipped:
        parts.append(f"{len(skipped)} skipped by config.skip")
    parts += [f"{count} stay float: {reason}" for reason, count in reasons.items()]
    shown = ", ".join(f"{op} x {count}" for op, count in holds.most_common(8))
    parts.append(f"the graph holds {shown or 'no matmul, linear or convolution'}")
    fixes = []
    other = sorted({k for n in gm.graph.nodes if (k := kind_of(n)) and k not in config.ops})
    if other:
        fixes.append("ops = [" + ", ".join(f'"{k}"' for k in other) + "] quantizes those")
    if any("fold constants first" in r for r in reasons):
        fixes.append("fold constants first (cleanup.constant_fold before this pass)")
    if skipped:
        fixes.append("narrow config.skip")
    fixes.append("or drop this pass: the output would be the float model unchanged")
    raise PassError(
        "; ".join(parts),
        file=label,
        field=f"passes[{ctx.index}].config.ops",
        fix="; ".join(fixes),
    )


def _matches_any(pattern: str, names: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def _observers(config: Int8Config, ctx: PassContext, label: str) -> Callable[[str], Any]:
    """``module name -> observer constructor``; one constructor object per observer name,
    so ops reading the same tensor share one observer."""
    registry = ctx.plugins.observers
    options = ObserverOptions(percentile=config.percentile)
    wanted = {"observer": config.observer} | {
        f"observer_overrides.{p}": name for p, name in config.observer_overrides.items()
    }
    made = {}
    for field, name in wanted.items():
        if name not in made:
            made[name] = registry.get(name, file=label, field=f"config.{field}")(options)

    def observer_for(module: str) -> Any:
        chosen = config.observer
        for pattern, name in config.observer_overrides.items():
            if fnmatch.fnmatchcase(module, pattern):
                chosen = name
        return made[chosen]

    return observer_for


def _settings(config: Int8Config, ctx: PassContext) -> dict[str, Any]:
    """What the cache key covers besides graph and data: the config, and in accuracy-aware
    mode the budget and the verification data's description."""
    settings: dict[str, Any] = {"config": config.model_dump(exclude={"cache"})}
    if config.accuracy_aware:
        settings["verify"] = ctx.recipe.verify.model_dump()
        settings["verification"] = ctx.recipe.data.splits()["verification"].model_dump()
    return settings
