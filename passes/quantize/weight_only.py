"""``quantize.weight_only``: 4- or 8-bit block-wise weights for linear layers (activations
stay float), as ONNX Runtime GenAI's model builder and Intel Neural Compressor write them.

Every selected ``aten.linear`` (weights a float32 parameter; GPT-2's ``Conv1D`` ``addmm``
first becomes the linear it is, as for ``quantize.int8``) is replaced by
``fxopt::matmul_nbits`` (:mod:`.nbits`) reading packed uint8 weights, float32 scales and
(asymmetric) packed zero points, block-wise along the input dimension K: the graph states
exactly what it computes, its byte size drops, and the IR, run eagerly, gives the quantized
numbers. ONNX Runtime lowers the op to its ``com.microsoft::MatMulNBits`` contrib op
(:mod:`.nbits_onnx`, the same constants); the torch backend, on an x86 CPU with AVX2 or
AVX-512, rewrites 4-bit layers at load into torch's int4 kernel (:mod:`.nbits_torch`: the
packed layout depends on the CPU, so it is made where the artifact runs) and runs the rest
with the op's own kernel (dequantize, then ``linear``: correct, not fast; int8 blocks have
no torch kernel that fits them).

Methods:

- ``rtn``: round to nearest, bit for bit what ONNX Runtime's ``matmul_nbits_quantizer``
  (MLAS) computes; no data.
- ``gptq``: Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers", arXiv:2210.17323 (:mod:`.gptq`: Cholesky form of the inverse
  Hessian, lazy batches, dampening ``percdamp``), on the calibration set's inputs to each
  linear, taken sequentially: a layer sees the outputs of the layers before it already
  quantized (:mod:`.sequential`), padding tokens left out when the model has an attention mask.

Policy: embeddings are never quantized (they are gathers, not linears); ``lm_head`` stays
float32 by default (``keep``; on a small model the head is a large share of the weights and
of the error), or takes int8 (``int8``) or the pass's own ``bits`` (``same``). ``exclude``
globs keep more linears in float. A block size that does not divide a layer's K (a Llama
MLP of 688 with blocks of 32) pads that layer's last block with zero columns, as
MatMulNBits itself does: they are never read past K, and the report lists the layers
(``padded_last_block``).
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field
from torch.fx import GraphModule, Node

from fxopt.engine.config import problem
from fxopt.engine.errors import PassError, RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassConfig, PassContext, PassResult

from .calibrate import calibration_inputs
from .conv1d import matmuls_as_linears
from .gptq import LAZY_BATCH, Hessian, HessianError, gptq_quantize, reconstruction_error
from .graph_edit import add_constant, attr_tensor, copy_meta, drop_unused_tensors, module_name
from .nbits import (
    MATMUL_NBITS,
    dequantize_values,
    pack_weight,
    pack_zero_points,
    pad_to_blocks,
    quantize_rtn,
)
from .sequential import run_sequential

aten = torch.ops.aten

BLOCK_SIZES = (32, 64, 128)


def _one_of(allowed: tuple[int, ...], fix: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in allowed:
            listed = " or ".join(str(a) for a in allowed)
            raise problem(f"must be {listed}", fix)
        return value

    return BeforeValidator(check)


class WeightOnlyConfig(PassConfig):
    bits: Annotated[
        Literal[4, 8],
        _one_of(
            (4, 8),
            "bits = 4 (0.16x float32's weight bytes at block_size 32) or bits = 8 (0.28x): "
            "the widths fxopt packs for ONNX Runtime's MatMulNBits",
        ),
    ] = Field(default=4, description="weight bit width: 4 or 8")
    block_size: Annotated[
        Literal[32, 64, 128],
        _one_of(BLOCK_SIZES, "block_size = 32, 64 or 128 (smaller: more scales, less error)"),
    ] = Field(default=32, description="weights per scale, along the input dimension K")
    symmetric: bool = Field(
        default=True,
        description="true: zero point 2^(bits-1) (none stored); false: a zero point per block",
    )
    method: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description="rtn: round to nearest (no data); gptq: calibrated (arXiv:2210.17323), "
        "needs [data.calibration]",
    )
    percdamp: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="gptq: dampening added to the Hessian's diagonal, x its mean",
    )
    lm_head: Literal["keep", "int8", "same"] = Field(
        default="keep",
        description="keep: float32; int8: 8-bit blocks; same: the pass's bits",
    )
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names kept in float"
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=0,
        description="ONNX Runtime MatMulNBits' accuracy_level: 0 computes in float32 (as the "
        "graph does); 4 quantizes activations to int8 at run time (faster on CPU, approximate)",
    )
    trim_padding: bool = Field(
        default=True, description="gptq: calibrate on real tokens only (needs attention_mask)"
    )


@dataclass
class _Layer:
    node: Node
    name: str
    N: int
    K: int
    bits: int


@dataclass
class _Plan:
    layers: list[_Layer]
    excluded: list[str] = field(default_factory=list)
    head: dict[str, str] = field(default_factory=dict)
    unsupported: list[dict[str, str]] = field(default_factory=list)


class QuantizeWeightOnly(Pass):
    """Block-wise 4/8-bit linear weights (round to nearest or GPTQ), as ORT's MatMulNBits.

    See the module docstring and docs/quantization.md."""

    name = "quantize.weight_only"
    reads_target = False
    Config = WeightOnlyConfig
    #: packed weights are new constants; GPTQ updates a copy of each weight
    edits_weights_in_place = False

    @property
    def needs_data(self) -> tuple[str, ...]:
        """GPTQ reconstructs each layer on calibration inputs; round to nearest needs none."""
        return ("calibration",) if self.config.method == "gptq" else ()

    def data_reason(self, split: str) -> str:
        return "method = 'gptq' reconstructs each layer on its calibration inputs"

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        config: WeightOnlyConfig = self.config
        batches = None
        if config.method == "gptq":
            batches = ctx.required_batches(
                "calibration", f"{self.name} (method = 'gptq')", "or use method = 'rtn'"
            )
        gm = ir.module
        rewritten = matmuls_as_linears(gm)
        plan = _plan(gm, config, ctx)  # refuses bad patterns: no work yet
        for item in plan.unsupported:
            ctx.warn(f"{item['module']} stays in float: {item['reason']}")
        before = ir.byte_size()
        started = time.perf_counter()
        metrics: dict[str, Any] = {}
        quantized = {}
        if config.method == "gptq":
            inputs = calibration_inputs(ir, batches, config.trim_padding)
            quantized, metrics["gptq"] = _gptq(gm, ir, plan, config, inputs, ctx)
        float_bytes = packed_bytes = 0
        for layer in plan.layers:
            # round to nearest layer by layer, each packed before the next: the unpacked
            # values of every layer at once would weigh a quarter of the float model
            q, scales, zero_points = quantized.pop(layer.node, None) or _rtn(gm, layer, config)
            float_bytes += layer.N * layer.K * 4
            packed_bytes += _rewrite(gm, layer, q, scales, zero_points, config)
        drop_unused_tensors(gm)
        gm.graph.lint()
        gm.recompile()
        ir.invalidate()
        metrics = {
            "method": config.method,
            "bits": config.bits,
            "block_size": config.block_size,
            "symmetric": config.symmetric,
            "quantized": len(plan.layers),
            "quantized_bits": {
                f"int{b}": n for b, n in sorted(Counter(x.bits for x in plan.layers).items())
            },
            "lm_head": plan.head,
            "excluded": plan.excluded,
            "unsupported": plan.unsupported,
            "weight_bytes": {"float32": float_bytes, "quantized": packed_bytes},
            "ir_bytes": {"before": before, "after": ir.byte_size()},
            "seconds": round(time.perf_counter() - started, 3),
            **metrics,
        }
        if rewritten:
            metrics["linears_from_matmul"] = rewritten
        if padded := {x.name: x.K for x in plan.layers if x.K % config.block_size}:
            # MatMulNBits pads the last block of these (zeros past K, never read)
            metrics["padded_last_block"] = padded
        return PassResult(ir, modified=True, preserved=set(), metrics=metrics)


# -- what to quantize --------------------------------------------------------------------------


def linear_nodes(gm: GraphModule) -> list[Node]:
    return [
        n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.linear.default
    ]


def _name(node: Node) -> str:
    return module_name(node) or node.name


def is_head(name: str) -> bool:
    return name == "lm_head" or name.endswith(".lm_head")


def unsupported_reason(gm: GraphModule, node: Node) -> str | None:
    """Why ``node`` (a linear) cannot take packed weights (``None`` when it can)."""
    weight = node.args[1] if len(node.args) > 1 else None
    if not isinstance(weight, Node) or weight.op != "get_attr":
        return "its weight is computed in the graph, not a parameter (fold constants first)"
    tensor = attr_tensor(gm, weight)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        return "its weight is not a 2-D tensor"
    if tensor.dtype != torch.float32:
        return f"its weight is {tensor.dtype}; weight-only quantization reads float32 weights"
    x = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    if getattr(x, "dtype", torch.float32) != torch.float32:
        return f"its input is {x.dtype}; MatMulNBits' scales and input share one float type"
    return None


def _tied(gm: GraphModule, node: Node) -> bool:
    """Does another op read ``node``'s weight tensor (a tied embedding)?"""
    weight = node.args[1]
    if not isinstance(weight, Node) or weight.op != "get_attr":
        return False
    tensor = attr_tensor(gm, weight)
    readers = [
        user
        for n in gm.graph.nodes
        if n.op == "get_attr" and attr_tensor(gm, n) is tensor
        for user in n.users
    ]
    return len(readers) > 1


def _plan(gm: GraphModule, config: WeightOnlyConfig, ctx: PassContext) -> _Plan:
    """The linears to quantize, and at which width; raises on a pattern that matches nothing,
    and a graph with nothing to quantize."""
    label, index = ctx.recipe.label, ctx.index
    nodes = linear_nodes(gm)
    names = [_name(n) for n in nodes]
    for pattern in config.exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
            raise RecipeError(
                f"exclude pattern {pattern!r} matches no linear; candidates: "
                f"{', '.join(names[:8]) + more if names else 'none'}",
                file=label,
                field=f"passes[{index}].config.exclude",
                fix="patterns are fnmatch globs on these names ('*' crosses dots: "
                "'*.mlp.*' matches every MLP projection)",
            )
    plan = _Plan(layers=[])
    head_bits = {"keep": None, "int8": 8, "same": config.bits}[config.lm_head]
    for node, name in zip(nodes, names, strict=True):
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            plan.excluded.append(name)
            continue
        bits = config.bits
        if is_head(name):
            if head_bits is None:
                plan.head[name] = "kept in float32 (lm_head = 'keep')"
                continue
            bits = head_bits
            plan.head[name] = f"int{bits}"
            if _tied(gm, node):
                ctx.warn(
                    f"{name} shares its weight with another op (tied embeddings): the float "
                    "weight stays for that op, so quantizing the head adds bytes instead of "
                    "saving them"
                )
        reason = unsupported_reason(gm, node)
        if reason is not None:
            plan.unsupported.append({"module": name, "op": str(node.target), "reason": reason})
            continue
        N, K = attr_tensor(gm, node.args[1]).shape
        plan.layers.append(_Layer(node, name, int(N), int(K), bits))
    if not plan.layers:
        _refuse_nothing(plan, names, config, label, index)
    return plan


def _refuse_nothing(
    plan: _Plan, names: list[str], config: WeightOnlyConfig, label: str, index: int
) -> None:
    parts = [f"nothing to quantize: the graph has {len(names)} linear(s)"]
    if plan.excluded:
        parts.append(f"{len(plan.excluded)} excluded by config.exclude")
    if plan.head:
        parts.append(f"{len(plan.head)} kept by lm_head = 'keep'")
    parts += [f"{u['module']} stays float: {u['reason']}" for u in plan.unsupported[:3]]
    fixes = []
    if plan.excluded:
        fixes.append("narrow config.exclude")
    if plan.head:
        fixes.append("lm_head = 'int8' quantizes the head")
    fixes.append("or drop this pass: the output would be the float model unchanged")
    raise PassError(
        "; ".join(parts),
        file=label,
        field=f"passes[{index}].config",
        fix="; ".join(fixes),
    )


# -- GPTQ ------------------------------------------------------------------------------------


def _gptq(
    gm: GraphModule,
    ir: ModelIR,
    plan: _Plan,
    config: WeightOnlyConfig,
    inputs: list[tuple[torch.Tensor, ...]],
    ctx: PassContext,
) -> tuple[dict[Node, tuple], dict[str, Any]]:
    """GPTQ every planned layer, in graph order, on the inputs it sees with the layers before
    it already quantized."""
    by_node = {layer.node: layer for layer in plan.layers}
    masks = _token_masks(ir, inputs)
    quantized: dict[Node, tuple] = {}
    errors: dict[str, dict[str, float]] = {}
    fallback: list[str] = []
    #: linears reading one tensor (q/k/v, gate/up) share one Hessian, dropped after the last
    hessians: dict[Node, Hessian] = {}
    readers = Counter(layer.node.args[0] for layer in plan.layers)
    started = time.perf_counter()
    with ctx.output.task("GPTQ", len(plan.layers)) as advance:

        def visit(node: Node, xs: list[torch.Tensor]) -> torch.Tensor:
            layer = by_node[node]
            source = node.args[0]
            if source not in hessians:
                hessians[source] = _hessian(xs, masks, layer.K)
            H = hessians[source].matrix
            readers[source] -= 1
            if not readers[source]:
                del hessians[source]
            weight = attr_tensor(gm, node.args[1]).detach()
            # a K the block size does not divide: zero columns, which the Hessian never sees
            padded = pad_to_blocks(weight, config.block_size)
            extra = padded.shape[1] - layer.K
            H = torch.nn.functional.pad(H, (0, extra, 0, extra)) if extra else H
            rtn = quantize_rtn(padded, layer.bits, config.block_size, config.symmetric)
            try:
                result = gptq_quantize(
                    padded,
                    H,
                    layer.bits,
                    config.block_size,
                    config.symmetric,
                    config.percdamp,
                    lazy_batch=max(LAZY_BATCH, config.block_size),
                )
            except HessianError as exc:
                fallback.append(layer.name)
                ctx.warn(f"{layer.name}: {exc}; rounded to nearest instead")
                result = rtn
            quantized[node] = result
            dequantized = dequantize_values(*result, config.block_size)
            errors[layer.name] = {
                "gptq": reconstruction_error(padded, dequantized, H),
                "rtn": reconstruction_error(padded, dequantize_values(*rtn, config.block_size), H),
            }
            dequantized = dequantized[:, : layer.K]
            advance(1)
            return dequantized.to(weight.dtype)

        run_sequential(gm, inputs, set(by_node), visit)
    summary: dict[str, Any] = {
        "batches": len(inputs),
        "samples": sum(len(args[0]) for args in inputs),
        "seconds": round(time.perf_counter() - started, 3),
        "percdamp": config.percdamp,
        # ||(W - Q) X||^2 / ||W X||^2 on the calibration inputs, mean over the layers
        "reconstruction_error": {
            method: sum(e[method] for e in errors.values()) / max(len(errors), 1)
            for method in ("gptq", "rtn")
        },
        "layer_errors": errors,
    }
    if fallback:
        summary["rounded_to_nearest"] = fallback
    return quantized, summary


def _token_masks(ir: ModelIR, inputs: list[tuple[torch.Tensor, ...]]) -> list | None:
    """Each batch's attention mask (which positions are real tokens), when the model has one."""
    if "attention_mask" not in ir.input_names:
        return None
    at = ir.input_names.index("attention_mask")
    return [args[at].bool() for args in inputs]


def _hessian(xs: list[torch.Tensor], masks: list | None, features: int) -> Hessian:
    hessian = Hessian(features)
    for i, x in enumerate(xs):
        mask = masks[i] if masks is not None else None
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask]
        hessian.add(x)
    return hessian


# -- the rewrite -------------------------------------------------------------------------------


def _rtn(
    gm: GraphModule, layer: _Layer, config: WeightOnlyConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``layer``'s weight rounded to nearest (its last block padded to ``block_size``)."""
    weight = pad_to_blocks(attr_tensor(gm, layer.node.args[1]), config.block_size)
    return quantize_rtn(weight, layer.bits, config.block_size, config.symmetric)


def _rewrite(
    gm: GraphModule,
    layer: _Layer,
    q: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    config: WeightOnlyConfig,
) -> int:
    """Replace ``layer``'s linear with ``fxopt::matmul_nbits``; returns the new bytes."""
    node, bits, block_size = layer.node, layer.bits, config.block_size
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    base = str(weight.target).replace(".", "_")
    tensors = {
        "q": pack_weight(q, bits, block_size),
        "scales": scales.float().contiguous(),
    }
    if not config.symmetric:
        tensors["zero_points"] = pack_zero_points(zero_points, bits)
    graph = gm.graph
    with graph.inserting_before(node):
        reads = {
            key: graph.get_attr(add_constant(gm, f"{base}_{key}{bits if key == 'q' else ''}", t))
            for key, t in tensors.items()
        }
        args = (
            x,
            reads["q"],
            reads["scales"],
            reads.get("zero_points"),
            bias,
            layer.K,
            layer.N,
            bits,
            block_size,
            config.accuracy_level,
        )
        new = graph.call_function(MATMUL_NBITS, args)
    copy_meta(new, node)
    if "val" in node.meta:
        new.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    if not weight.users:
        graph.erase_node(weight)
    return sum(t.numel() * t.element_size() for t in tensors.values())
