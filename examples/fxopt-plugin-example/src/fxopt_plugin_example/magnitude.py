"""``example.magnitude_threshold``: unstructured magnitude pruning of Linear/Conv weights."""

from __future__ import annotations

import fnmatch

import torch
from pydantic import Field

from fxopt.engine import ALL, Pass, PassConfig, PassResult

WEIGHT_OPS = ("aten.linear.default", "aten.conv2d.default")


class MagnitudeThreshold(Pass):
    """Zero every weight below ``fraction`` of its layer's largest magnitude."""

    name = "example.magnitude_threshold"

    class Config(PassConfig):
        fraction: float = Field(default=0.05, gt=0, lt=1)
        include: list[str] = Field(default_factory=lambda: ["*"])

    def run(self, ir, ctx):
        zeroed = total = 0
        for node in ir.graph.nodes:
            if node.op != "call_function" or str(node.target) not in WEIGHT_OPS:
                continue
            weight_node = node.args[1]
            if weight_node.op != "get_attr" or not any(
                fnmatch.fnmatch(weight_node.target, p) for p in self.config.include
            ):
                continue
            owner, _, attr = weight_node.target.rpartition(".")
            module = ir.module.get_submodule(owner) if owner else ir.module
            weight = getattr(module, attr)
            keep = weight.detach().abs() >= self.config.fraction * weight.detach().abs().max()
            # a new tensor: the original may share storage with the reference model
            setattr(module, attr, torch.nn.Parameter(weight.detach() * keep, requires_grad=False))
            zeroed += int((~keep).sum())
            total += keep.numel()
        return PassResult(
            ir,
            modified=zeroed > 0,
            preserved=ALL,
            metrics={"zeroed": zeroed, "sparsity": round(zeroed / total, 4) if total else 0.0},
        )
