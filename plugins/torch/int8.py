"""What the torch backend does to a Q/DQ graph before ``torch.compile`` runs it on x86.

Inductor (with weight freezing) lowers ``dequantize -> linear`` to oneDNN's int8 kernels
(``qlinear_pointwise``), but those are fast only for *uint8* activations: with the symmetric
int8 activations ``quantize.int8`` writes by default, MiniLM took ~45 s per sequence instead
of ~30 ms. A symmetric int8 tensor (zero point 0, range ``[-127, 127]``) is exactly a uint8
one with zero point 128 (range ``[1, 255]``), so the loaded graph is rewritten that way; the
saved ``.pt2`` keeps the portable int8 form.
"""

from __future__ import annotations

import torch
from torch import fx


def register_quantized_ops() -> None:
    """Register the ``quantized_decomposed`` op library: loading a ``.pt2`` that holds Q/DQ
    needs it, and with it (and freezing) inductor's own x86 patterns lower each
    ``dequantize -> linear`` to a oneDNN int8 kernel."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401


def is_quantized(module: torch.nn.Module) -> bool:
    """Does the graph hold quantize/dequantize ops (``quantize.int8``'s explicit Q/DQ)?"""
    graph = getattr(module, "graph", None)
    return graph is not None and any(
        "quantized_decomposed" in str(n.target) for n in graph.nodes if n.op == "call_function"
    )


def activations_to_uint8(module: fx.GraphModule) -> int:
    """Rewrite per-tensor int8 Q/DQ with zero point 0 to uint8 with zero point 128, in place;
    returns how many nodes changed."""
    register_quantized_ops()
    ops = torch.ops.quantized_decomposed
    targets = (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)
    changed = 0
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in targets:
            continue
        args = list(node.args)
        # (input, scale, zero_point, quant_min, quant_max, dtype, ...)
        if len(args) < 6 or args[5] != torch.int8 or args[2] != 0:
            continue
        args[2], args[3], args[4], args[5] = 128, args[3] + 128, args[4] + 128, torch.uint8
        node.args = tuple(args)
        changed += 1
    if changed:
        module.recompile()
    return changed
