"""``quantize.smoothquant``: move activation outliers into the weights before int8.

For a linear ``y = x W^T + b`` and per-input-channel factors
``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` (Xiao et al., SmoothQuant), the same ``y`` is
``(x / s) (W s)^T + b``: the activation's outlier channels shrink, the weight's columns grow,
and both become easier to quantize per tensor / per channel. Linears reading the same tensor
(q, k, v) share one ``s`` (the max over their weights) and one division. The division is an
explicit ``mul(x, 1/s)`` node: folding it into the producer is impossible in post-LN BERT,
whose LayerNorm output also feeds the residual; int8 backends fuse it into the activation's
quantize step. Run it right before ``quantize.int8``; in float the graph computes the same
outputs (up to rounding). GPT-2's ``Conv1D`` projections (``addmm`` with an ``[in, out]``
weight) are rewritten to the linears they are first (:mod:`.conv1d`).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict

import torch
from torch.fx import GraphModule, Node

from fxopt.engine.errors import RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassContext, PassResult

from .calibrate import calibration_inputs
from .channel_stats import channel_absmax
from .config import SmoothQuantConfig
from .conv1d import matmuls_as_linears
from .graph_edit import add_constant, attr_tensor, copy_meta, module_name, replace_attr_tensor
from .outliers import outlier_candidates

aten = torch.ops.aten
MIN_SCALE = 1e-5


class SmoothQuant(Pass):
    name = "quantize.smoothquant"
    reads_target = False
    Config = SmoothQuantConfig
    edits_weights_in_place = False  # scaled weights are new tensors
    needs_data = ("calibration",)

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        config: SmoothQuantConfig = self.config
        batches = ctx.required_batches("calibration", self.name)
        rewritten = matmuls_as_linears(ir.module)  # GPT-2's Conv1D layers are linears too
        nodes = selected_linears(ir.module, config.layers, ctx.recipe.label)
        inputs = calibration_inputs(ir, batches, config.trim_padding)
        with ctx.output.task("collecting activation ranges", len(inputs)) as advance:
            stats = channel_absmax(ir.module, nodes, inputs, advance)
        smoothed = smooth(ir.module, nodes, stats, config.alpha)
        return PassResult(
            ir,
            modified=bool(smoothed or rewritten),
            preserved=set(),
            metrics={"alpha": config.alpha, "smoothed": smoothed},
        )


def selected_linears(gm: GraphModule, patterns: list[str], label: str) -> list[Node]:
    linears = outlier_candidates(list(gm.graph.nodes))
    names = [module_name(n) or n.name for n in linears]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise RecipeError(
                f"layers pattern {pattern!r} matches no linear module; candidates: "
                f"{', '.join(names[:8]) or 'none'}{' ...' if len(names) > 8 else ''}",
                file=label,
                field="config.layers",
            )
    return [
        n
        for n, name in zip(linears, names, strict=True)
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


def smooth(
    gm: GraphModule, nodes: list[Node], act_absmax: dict[str, torch.Tensor], alpha: float
) -> list[str]:
    """Apply the smoothing to ``nodes`` (grouped by input); returns the module names."""
    groups: dict[Node, list[Node]] = defaultdict(list)
    for node in nodes:
        if node.name in act_absmax:
            groups[node.args[0]].append(node)
    done = []
    for x, linears in groups.items():
        weights = [attr_tensor(gm, n.args[1]).detach() for n in linears]
        w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
        a_max = torch.stack([act_absmax[n.name] for n in linears]).amax(dim=0)
        scale = (
            a_max.clamp(min=MIN_SCALE).pow(alpha) / w_max.clamp(min=MIN_SCALE).pow(1 - alpha)
        ).clamp(min=MIN_SCALE)
        for node, weight in zip(linears, weights, strict=True):
            replace_attr_tensor(gm, node.args[1], weight * scale)
        inverse = add_constant(gm, f"_fxopt_smooth_{linears[0].name}", (1.0 / scale).float())
        with gm.graph.inserting_before(linears[0]):
            divided = gm.graph.call_function(aten.mul.Tensor, (x, gm.graph.get_attr(inverse)))
        copy_meta(divided, linears[0])
        for node in linears:
            node.replace_input_with(x, divided)
            done.append(module_name(node) or node.name)
    gm.graph.lint()
    gm.recompile()
    return done
