"""Our pt2e ``Quantizer``: which ops get Q/DQ, in which numeric form.

Weights: int8, per output channel, symmetric, range ``[-127, 127]`` (zero point 0, the form
TensorRT's explicit quantization takes; the narrow range also keeps x86 ``u8 x s8`` dot
products free of saturation). Activations: per tensor, either ``int8_sym`` (``[-127, 127]``,
zero point 0) or ``uint8`` (``[0, 255]``, affine). Only the *inputs* of the selected ops are
quantized; outputs stay float, so every quantized op is a self-contained
``dequantize -> op`` island any backend can fuse or leave alone.

Ops are chosen by kind (``linear``, ``conv2d``, ``matmul``) and left float by ``skip``
patterns on the module name torch.export records (``model.encoder.layer.0.output.dense``).
Ops of a selected kind that cannot be quantized this way (a weight computed in the graph,
a non-float32 input) are collected in :attr:`Int8Quantizer.unsupported`, not annotated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)

from .graph_edit import FLOAT_META, module_name
from .op_kinds import (
    Scales,
    Unsupported,
    candidates,
    is_weight,
    unsupported_reason,
    weight_axis,
)

ACTIVATION_FORMS = ("int8_sym", "uint8")


def activation_spec(form: str, observer: Any) -> QuantizationSpec:
    """The per-tensor activation spec of ``form`` observed by ``observer``."""
    if form == "int8_sym":
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_tensor_symmetric,
            observer_or_fake_quant_ctr=observer,
        )
    if form == "uint8":
        return QuantizationSpec(
            dtype=torch.uint8,
            quant_min=0,
            quant_max=255,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=observer,
        )
    raise ValueError(f"unknown activation form {form!r}")


def fixed_spec(form: str, scale: float, zero_point: int) -> FixedQParamsQuantizationSpec:
    """An activation spec with known scale and zero point (a cached calibration)."""
    base = activation_spec(form, None)
    return FixedQParamsQuantizationSpec(
        dtype=base.dtype,
        scale=scale,
        zero_point=zero_point,
        quant_min=base.quant_min,
        quant_max=base.quant_max,
        qscheme=base.qscheme,
    )


def weight_spec(axis: int) -> QuantizationSpec:
    return QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=axis,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver,
    )


@dataclass
class Int8Quantizer(Quantizer):
    """Annotates the inputs of the selected ops; see the module docstring.

    ``observer_for(module_name)`` gives the activation observer constructor of one op;
    ``fixed`` replaces observation by known scales; ``only`` (node names) restricts the
    annotation to those ops, ``keep_float`` (node names) leaves those ops out.
    """

    ops: tuple[str, ...] = ("linear",)
    form: str = "int8_sym"
    observer_for: Callable[[str], Any] | None = None
    skip: tuple[str, ...] = ()
    fixed: Scales | None = None
    only: frozenset[str] | None = None
    keep_float: frozenset[str] = frozenset()
    annotated: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)

    def annotate(self, model: GraphModule) -> GraphModule:
        self.annotated, self.skipped, self.unsupported = {}, [], []
        first_edge: dict[tuple[Node, Any], tuple[Node, Node]] = {}
        for node in candidates(model.graph.nodes, self.ops):
            name = module_name(node)
            if node.meta.get(FLOAT_META) or node.name in self.keep_float:
                continue
            if self.only is not None and node.name not in self.only:
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in self.skip):
                self.skipped.append(name or node.name)
                continue
            reason = unsupported_reason(node, model)
            if reason:
                self.unsupported.append(Unsupported(node.name, name, str(node.target), reason))
                continue
            qmap: dict[Node, QuantizationSpecBase] = {}
            for index, arg in enumerate(node.args[:2]):
                if is_weight(node, index):
                    qmap[arg] = weight_spec(weight_axis(node, model))
                else:
                    qmap[arg] = self._activation(node, index, name, first_edge)
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map=qmap, _annotated=True
            )
            self.annotated[node.name] = name
        return model

    def _activation(
        self, node: Node, index: int, name: str, first_edge: dict
    ) -> QuantizationSpecBase:
        """One observer per activation tensor: q, k and v projections share theirs."""
        arg = node.args[index]
        if self.fixed is not None:
            scale, zero_point = self.fixed[(node.name, index)]
            share_key: tuple[Node, Any] = (arg, ("fixed", scale, zero_point))
            spec: QuantizationSpecBase = fixed_spec(self.form, scale, zero_point)
        else:
            observer = self.observer_for(name) if self.observer_for else None
            share_key = (arg, id(observer))
            spec = activation_spec(self.form, observer)
        if share_key in first_edge:
            return SharedQuantizationSpec(first_edge[share_key])
        first_edge[share_key] = (arg, node)
        return spec

    def validate(self, model: GraphModule) -> None:
        pass


def read_scales(prepared: GraphModule, annotated: Iterable[str]) -> Scales:
    """The activation scales the observers of a calibrated, prepared graph settled on."""
    nodes = {n.name: n for n in prepared.graph.nodes}
    scales: Scales = {}
    for name in annotated:
        node = nodes[name]
        for index, arg in enumerate(node.args[:2]):
            if not (isinstance(arg, Node) and arg.op == "call_module"):
                continue
            observer = prepared.get_submodule(arg.target)
            if isinstance(observer, PerChannelMinMaxObserver):
                continue
            scale, zero_point = observer.calculate_qparams()
            scales[(name, index)] = (float(scale.flatten()[0]), int(zero_point.flatten()[0]))
    return scales
