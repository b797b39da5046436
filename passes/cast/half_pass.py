"""``cast.fp16`` and ``cast.bf16``: the graph in half precision, with float32 islands.

Every dtype change is an explicit ``aten._to_copy`` in the graph, so the exported ONNX states
the type of every tensor and a strongly typed TensorRT network builds exactly what the graph
says (TensorRT 10.1 deprecated and 11 removed the builder flags that used to pick precisions).

Recipe::

    [[passes]]
    name = "cast.fp16"
    [passes.config]
    add_keep_fp32 = ["gelu"]          # also keep these ops in float32
    remove_keep_fp32 = ["div"]        # let these run in fp16 after all
    keep_fp32_nodes = ["linear_5"]    # single nodes, by the names --dump-ir shows
    check_overflow = true             # move ops that overflow on real data back to fp32
"""

from __future__ import annotations

import copy
import warnings
from typing import ClassVar

import torch
from pydantic import Field, field_validator

from fxopt.engine.errors import PassError
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassConfig, PassContext, PassResult

from .overflow import nonfinite_nodes, overflow_origins
from .policy import DEFAULT_KEEP_FP32, Policy, normalize, unknown_ops
from .rewrite import CastStats, cast_graph
from .support import check_dtype_supported


class CastConfig(PassConfig):
    keep_fp32: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KEEP_FP32),
        description="ATen ops computed in float32 (replaces the default list)",
    )
    add_keep_fp32: list[str] = Field(default_factory=list, description="ops added to keep_fp32")
    remove_keep_fp32: list[str] = Field(
        default_factory=list, description="ops taken out of keep_fp32: they run in half"
    )
    keep_fp32_nodes: list[str] = Field(
        default_factory=list, description="graph nodes (names as --dump-ir shows) kept in float32"
    )
    final_op_fp32: bool = Field(
        default=True, description="compute the op producing each output (the logits) in float32"
    )
    outputs_fp32: bool = Field(default=True, description="cast half outputs back to float32")
    light_ops_follow_inputs: bool = Field(
        default=True,
        description="an elementwise op whose inputs are all float32 stays float32 "
        "(no cast down and straight back up)",
    )
    check_overflow: bool = Field(
        default=False,
        description="run the cast graph on calibration data (else verification data) and "
        "move ops whose output overflows or turns NaN back to float32",
    )
    overflow_batches: int = Field(default=4, ge=1, description="batches the check runs")
    overflow_rounds: int = Field(default=8, ge=1, description="re-cast and re-check at most")

    @field_validator("keep_fp32", "add_keep_fp32", "remove_keep_fp32")
    @classmethod
    def _aten_ops(cls, names: list[str]) -> list[str]:
        unknown = unknown_ops(names)
        if unknown:
            raise ValueError(
                f"not ATen operators: {', '.join(unknown)} (use names such as layer_norm, "
                "_softmax, mean; `--dump-ir` shows the ops of a graph)"
            )
        return names

    def keep_ops(self) -> set[str]:
        removed = {normalize(n) for n in self.remove_keep_fp32}
        return {normalize(n) for n in [*self.keep_fp32, *self.add_keep_fp32]} - removed


class HalfPrecisionCast(Pass):
    """Shared by ``cast.fp16`` and ``cast.bf16``; subclasses set ``dtype``."""

    Config = CastConfig
    dtype: ClassVar[torch.dtype]
    #: half weights are new tensors (``p.data`` rebound), never written into
    edits_weights_in_place = False

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        check_dtype_supported(self.dtype, ctx.recipe, self.name)
        config: CastConfig = self.config  # type: ignore[assignment]
        _check_nodes(ir, config.keep_fp32_nodes)
        original = _copy(ir.module) if config.check_overflow else None
        stats = self._cast(ir.module, config.keep_fp32_nodes)
        moved: list[str] = []
        if original is not None:
            stats, moved = self._fix_overflows(ir, original, stats, ctx)
        metrics = {"dtype": str(self.dtype).removeprefix("torch."), **stats.to_json()}
        if config.check_overflow:
            metrics["moved_to_fp32"] = moved
        return PassResult(ir, modified=True, preserved={"parameter-count"}, metrics=metrics)

    def _cast(self, module: torch.fx.GraphModule, keep_nodes: list[str]) -> CastStats:
        config: CastConfig = self.config  # type: ignore[assignment]
        return cast_graph(
            module,
            Policy(config.keep_ops(), keep_nodes),
            self.dtype,
            final_op_fp32=config.final_op_fp32,
            outputs_fp32=config.outputs_fp32,
            light_ops_follow_inputs=config.light_ops_follow_inputs,
        )

    def _fix_overflows(
        self, ir: ModelIR, original: torch.fx.GraphModule, stats: CastStats, ctx: PassContext
    ) -> tuple[CastStats, list[str]]:
        """Re-cast with the overflowing ops in float32 until the graph stays finite."""
        config: CastConfig = self.config  # type: ignore[assignment]
        batches = _check_batches(ir, ctx, config.overflow_batches)
        expected = nonfinite_nodes(original, batches)
        originals = {n.name for n in original.graph.nodes}
        keep = list(config.keep_fp32_nodes)
        moved: list[str] = []
        for _ in range(config.overflow_rounds):
            bad = nonfinite_nodes(ir.module, batches)
            blamed = overflow_origins(ir.module, bad, expected=expected, originals=originals)
            blamed = [name for name in blamed if name not in keep]
            if not blamed:
                break
            ctx.output.step(f"{self.name}: float32 for {', '.join(blamed)} (overflow in half)")
            moved += blamed
            keep += blamed
            ir.module = _copy(original)
            stats = self._cast(ir.module, keep)
        else:
            bad = nonfinite_nodes(ir.module, batches)
        left = bad - expected
        if left:
            raise PassError(
                f"the {self.dtype} graph still has non-finite values after moving "
                f"{len(moved)} ops to float32 (at {', '.join(sorted(left)[:5])})",
                field="check_overflow",
                fix="raise overflow_rounds, or add the ops feeding these nodes to keep_fp32",
            )
        return stats, moved


def _copy(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A deep copy (torch's pytree warns about its own specs while copying: not ours to fix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(module)


def _check_nodes(ir: ModelIR, names: list[str]) -> None:
    known = {n.name for n in ir.graph.nodes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PassError(
            f"keep_fp32_nodes names nodes that are not in the graph: {', '.join(unknown)}",
            field="keep_fp32_nodes",
            fix="use the node names `optimize RECIPE --dump-ir DIR` writes",
        )


def _check_batches(ir: ModelIR, ctx: PassContext, limit: int) -> list[tuple[torch.Tensor, ...]]:
    """Calibration batches, else verification batches, else the capture's example inputs."""
    batches = ctx.batches("calibration") or ctx.batches("verification")
    if not batches:
        return [tuple(ir.example_inputs)]
    return [tuple(b[name] for name in ir.input_names) for b in batches[:limit]]


class CastFP16(HalfPrecisionCast):
    """Half precision (IEEE fp16) with float32 islands and explicit casts."""

    name = "cast.fp16"
    dtype = torch.float16


class CastBF16(HalfPrecisionCast):
    """bfloat16 with float32 islands and explicit casts."""

    name = "cast.bf16"
    dtype = torch.bfloat16
