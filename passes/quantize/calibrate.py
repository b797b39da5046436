"""Calibration: the model inputs observers see, and prepare -> observe -> convert.

Text batches arrive padded to the split's ``sequence_length``; padding positions still flow
through every linear and would widen the activation ranges with values no real token has.
When the model takes an ``attention_mask`` over a dynamic axis, samples are sorted by real
length, re-batched, and each batch cut to its longest real sample: observers see (almost)
only real tokens, and calibration runs on a fraction of the padded compute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.fx import GraphModule

from fxopt.engine.data import Batch
from fxopt.engine.ir import ModelIR

from .graph_edit import drop_unused_tensors

Inputs = tuple[torch.Tensor, ...]


def calibration_inputs(ir: ModelIR, batches: Sequence[Batch], trim_padding: bool) -> list[Inputs]:
    """Positional model inputs for each calibration batch (padding trimmed, see above)."""
    names = ir.input_names
    plain = [tuple(b[n] for n in names) for b in batches]
    axis = _mask_axis(ir) if trim_padding else None
    if axis is None or not batches:
        return plain
    axis_name, shortest = axis
    size = len(batches[0][names[0]])
    samples = [{n: b[n][i] for n in names} for b in batches for i in range(len(b[names[0]]))]
    samples.sort(key=lambda s: int(s["attention_mask"].sum()))
    out = []
    for start in range(0, len(samples), size):
        group = samples[start : start + size]
        length = max(shortest, max(int(s["attention_mask"].sum()) for s in group))
        out.append(tuple(_stack_cut(group, spec, axis_name, length) for spec in ir.inputs))
    return out


def _mask_axis(ir: ModelIR) -> tuple[str, int] | None:
    """(name, smallest allowed size) of the attention mask's dynamic sequence axis."""
    specs = {s.name: s for s in ir.inputs}
    mask = specs.get("attention_mask")
    if mask is None or len(mask.shape) != 2 or not isinstance(mask.shape[1], str):
        return None
    position = ir.input_names.index("attention_mask")
    dim = (ir.dynamic_shapes or ({},) * len(ir.inputs))[position].get(1)
    if dim is None:
        return None
    return mask.shape[1], max(int(getattr(dim, "min", 1) or 1), 1)


def _stack_cut(group: list[dict[str, torch.Tensor]], spec, axis_name: str, length: int):
    stacked = torch.stack([s[spec.name] for s in group])
    for axis, name in spec.dynamic_axes.items():
        if name == axis_name:
            stacked = stacked.narrow(axis, 0, min(length, stacked.shape[axis]))
    return stacked


def observe(
    prepared: GraphModule, inputs: Sequence[Inputs], advance: Callable[[int], None]
) -> None:
    """Run the prepared graph on every input so its observers see the data."""
    with torch.no_grad():
        for args in inputs:
            prepared(*args)
            advance(1)


def import_torchao() -> None:
    """Import torchao's pt2e flow once, without the warnings its import logs about kernels
    for other hardware (CUDA, mxfp8) that a CPU install cannot load."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def prepare(gm: GraphModule, quantizer) -> GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    return prepare_pt2e(gm, quantizer)


def convert(prepared: GraphModule) -> GraphModule:
    """Observers become quantize/dequantize ops; weights become int8 constants (the float
    weights they replace are dropped)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared, fold_quantize=True)
    drop_unused_tensors(converted)
    return converted
