"""Quantization-aware training: explicit Q/DQ become fake-quant while training, and back.

After ``quantize.int8`` (torchao's pt2e convert with folded weights) the graph holds
``quantize -> dequantize`` pairs on activations and int8 weight constants feeding a
``dequantize``. Neither trains: ``quantize`` has no gradient and the weights are integers.
For the duration of training this module

- routes each activation ``dequantize(quantize(x))`` through ``fake_quantize(x)`` with the same
  scale, zero point and range (straight-through gradient), and
- gives each int8 weight a float twin (its dequantized value) as a trainable parameter, read
  through ``fake_quantize``, so the weights learn on the int8 grid they will be rounded to;

and :meth:`QuantAware.restore` puts the original nodes back and re-quantizes the trained float
weights into the int8 constants, so the graph that leaves the pass has the same explicit Q/DQ
form, scales and zero points as the one that came in.
"""

from __future__ import annotations

import torch
from torch import fx

# matched by name: the ``quantized_decomposed`` ops exist only once torchao (or torch.ao's
# decomposed module) is imported, which a graph holding them implies
QUANTIZE = "quantized_decomposed.quantize_per_tensor.default"
DEQUANTIZE = "quantized_decomposed.dequantize_per_tensor.default"
DEQUANTIZE_PER_CHANNEL = "quantized_decomposed.dequantize_per_channel.default"


class QuantAware:
    """Fake-quant rewiring of one graph; ``restore()`` undoes it."""

    def __init__(self, module: fx.GraphModule) -> None:
        self.module = module
        self.rewired: list[tuple[fx.Node, fx.Node]] = []  # (original dequantize, fake node)
        self.weights: list[tuple[str, str, fx.Node]] = []  # (int8 attr, float param, dq node)
        graph = module.graph
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if str(node.target) == DEQUANTIZE and _is_quantize(node.args[0]):
                self._activation(node)
            elif str(node.target) == DEQUANTIZE_PER_CHANNEL and node.args[0].op == "get_attr":
                self._weight(node)
        if self.rewired:
            graph.lint()
            module.recompile()

    @property
    def count(self) -> int:
        return len(self.rewired)

    def _activation(self, dq: fx.Node) -> None:
        quantize = dq.args[0]
        x, scale, zero_point, qmin, qmax = quantize.args[:5]
        with self.module.graph.inserting_after(dq):
            fake = self.module.graph.call_function(
                torch.ops.aten.fake_quantize_per_tensor_affine.default,
                (x, scale, zero_point, qmin, qmax),
            )
        self._swap(dq, fake)

    def _weight(self, dq: fx.Node) -> None:
        attr, scale, zero_point, axis, qmin, qmax = dq.args[:6]
        int_weight = _fetch(self.module, attr.target)
        value = torch.ops.quantized_decomposed.dequantize_per_channel.default(
            int_weight, _fetch(self.module, scale.target), _fetch(self.module, zero_point.target),
            axis, qmin, qmax, int_weight.dtype,
        )  # fmt: skip
        name = f"fxopt_qat_weight_{len(self.weights)}"
        self.module.register_parameter(name, torch.nn.Parameter(value))
        zp_name = f"{name}_zero_point"
        self.module.register_buffer(
            zp_name, _fetch(self.module, zero_point.target).to(torch.int32), persistent=False
        )
        graph = self.module.graph
        with graph.inserting_after(dq):
            weight = graph.get_attr(name)
        with graph.inserting_after(weight):
            zp32 = graph.get_attr(zp_name)
        with graph.inserting_after(zp32):
            fake = graph.call_function(
                torch.ops.aten.fake_quantize_per_channel_affine.default,
                (weight, scale, zp32, axis, qmin, qmax),
            )
        self._swap(dq, fake)
        self.weights.append((attr.target, name, dq))

    def _swap(self, original: fx.Node, fake: fx.Node) -> None:
        original.replace_all_uses_with(fake, delete_user_cb=lambda user: user is not fake)
        self.rewired.append((original, fake))

    def restore(self) -> None:
        """Original Q/DQ nodes back; trained float weights re-quantized into the int8 ones."""
        if not self.rewired:
            return
        for int_attr, name, dq in self.weights:
            _, scale, zero_point, axis, qmin, qmax, dtype = dq.args[:7]
            trained = getattr(self.module, name).detach()
            quantized = torch.ops.quantized_decomposed.quantize_per_channel.default(
                trained, _fetch(self.module, scale.target), _fetch(self.module, zero_point.target),
                axis, qmin, qmax, dtype,
            )  # fmt: skip
            _fetch(self.module, int_attr).copy_(quantized)
        graph = self.module.graph
        for original, fake in reversed(self.rewired):
            fake.replace_all_uses_with(original)
            inputs = list(fake.args)  # erase_node clears them
            graph.erase_node(fake)
            for node in inputs:
                ours = isinstance(node, fx.Node) and str(node.target).startswith("fxopt_qat_")
                if ours and not node.users:
                    graph.erase_node(node)
        for _, name, _ in self.weights:
            delattr(self.module, name)
            delattr(self.module, f"{name}_zero_point")
        graph.lint()
        self.module.recompile()
        self.rewired, self.weights = [], []


def _is_quantize(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and str(node.target) == QUANTIZE


def _fetch(module: torch.nn.Module, target: str) -> torch.Tensor:
    owner, _, attr = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)
