"""Least-squares reconstruction of the Linear layers that read pruned channels.

After an FFN loses neurons or an attention block loses heads, the Linear that consumes them
(the FFN's output projection, the attention output projection) still has the weights that
were fit to the full input. Refitting its remaining columns and its bias so that, on the
calibration data, it reproduces what it output before pruning recovers much of the lost
fidelity without any training (the "mask tuning" step of Kwon et al., 2022, *A Fast
Post-Training Pruning Framework for Transformers*):

    W', b' = argmin || X_kept W'^T + b' - (X W^T + b) ||^2 + damping * ||[W', b'] - [W, b]_kept||^2

Only ``X^T X`` is needed, accumulated over the calibration batches in one pass of the
unpruned graph (padding tokens left out when the batch has an attention mask). Consumers
whose input is not a plain ``aten.linear`` (GPT-2's ``addmm``, convolutions) are left as they
are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from fxopt.engine.data import Batch

from .dims import Dim
from .graph import DependencyGraph

LINEAR = "aten.linear.default"
#: ridge damping, relative to the mean diagonal of the Gram matrix: calibration sets hold a
#: few thousand tokens for a 1536-wide input, so the plain solution would overfit them
DAMPING = 0.1


@dataclass
class Consumer:
    """A Linear whose in-features shrink: ``kept`` input columns (and rows, if its outputs
    shrink too)."""

    node: fx.Node
    weight: str
    bias: str | None
    kept: np.ndarray
    rows: np.ndarray | None


def linears(module: fx.GraphModule):
    """``(node, weight name, bias name or None)`` of every ``aten.linear`` whose weight is a
    parameter."""
    for node in module.graph.nodes:
        if str(node.target) != LINEAR or node.args[1].op != "get_attr":
            continue
        bias = node.args[2] if len(node.args) > 2 else None
        bias_name = (
            str(bias.target) if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
        )
        yield node, str(node.args[1].target), bias_name


def consumers(module: fx.GraphModule, deps: DependencyGraph, keep: dict) -> list[Consumer]:
    """Every ``aten.linear`` with a parameter weight whose in-features ``keep`` shrinks."""
    found = []
    for node, weight, bias in linears(module):
        columns = _kept(deps, weight, 1, keep)
        if columns is not None:
            found.append(Consumer(node, weight, bias, columns, _kept(deps, weight, 0, keep)))
    return found


def readers(
    module: fx.GraphModule, deps: DependencyGraph, group_ids: set[int]
) -> list[tuple[fx.Node, str, int]]:
    """``(node, weight name, input space id)`` of every ``aten.linear`` whose input features
    are (or are made of) one of the groups ``group_ids``."""
    found = []
    for node, weight, _ in linears(module):
        space_id = deps.spaces.of_dim.get(Dim("attr:" + weight, 1))
        if space_id is not None and deps.spaces.bases(space_id) & group_ids:
            found.append((node, weight, space_id))
    return found


def input_grams(
    module: fx.GraphModule,
    inputs: dict[fx.Node, str],
    batches: Sequence[Batch],
    input_names: Sequence[str],
    advance: Callable[[int], None] = lambda n: None,
) -> dict[str, torch.Tensor]:
    """``[X, 1]^T [X, 1]`` over the batches, in float64, of each node in ``inputs`` (the
    input of a Linear), keyed by the name ``inputs`` gives it (the Linear's weight)."""
    grams: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        mask: torch.Tensor | None = None

        def run_node(self, node: fx.Node):
            out = super().run_node(node)
            if node in inputs:
                rows = _rows(out, self.mask)
                ones = torch.ones(len(rows), 1, dtype=rows.dtype)
                x = torch.cat([rows, ones], dim=1)
                grams[inputs[node]] = grams.get(inputs[node], 0) + x.T @ x
            return out

    with torch.no_grad():
        for batch in batches:
            recorder = Recorder(module)
            recorder.mask = batch.get("attention_mask")
            recorder.run(*(batch[name] for name in input_names))
            advance(1)
    return grams


def refit(
    module: torch.nn.Module,
    found: Sequence[Consumer],
    grams: dict[str, torch.Tensor],
    damping: float,
) -> dict[str, torch.Tensor]:
    """New (pruned-shape) weights and biases solving the least-squares problem."""
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for consumer in found:
        if consumer.weight not in grams:
            continue
        weight = params[consumer.weight].detach().double()
        bias = (
            params[consumer.bias].detach().double()
            if consumer.bias
            else torch.zeros(weight.shape[0], dtype=torch.float64)
        )
        full = torch.cat([weight, bias[:, None]], dim=1)
        gram = grams[consumer.weight]
        kept = torch.as_tensor(np.append(consumer.kept, weight.shape[1]))
        system = gram[kept][:, kept]
        strength = damping * system.diagonal().mean()
        eye = torch.eye(len(kept), dtype=gram.dtype)
        # the prior is the unpruned weights: with little data the refit stays close to them
        target = gram[kept] @ full.T + strength * full[:, kept].T
        solution = torch.linalg.solve(system + strength * eye, target).T
        if consumer.rows is not None:
            solution = solution[torch.as_tensor(consumer.rows)]
        dtype = params[consumer.weight].dtype
        out[consumer.weight] = solution[:, :-1].to(dtype).contiguous()
        if consumer.bias:
            out[consumer.bias] = solution[:, -1].to(dtype).contiguous()
    return out


def assign(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy refit values into the (already pruned) parameters of the same name."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def _kept(deps: DependencyGraph, attr: str, axis: int, keep: dict) -> np.ndarray | None:
    for dim, space_id in deps.spaces.of_dim.items():
        if dim.attr == attr and dim.axis == axis:
            kept = deps.spaces.keep(space_id, keep)
            size = deps.spaces[space_id].size
            return None if kept is None or len(kept) == size else kept
    return None


def _rows(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The value's feature vectors as rows; padding positions dropped when a mask fits."""
    rows = value.detach().double().reshape(-1, value.shape[-1])
    if mask is not None and value.dim() == 3 and tuple(mask.shape) == tuple(value.shape[:2]):
        rows = rows[mask.reshape(-1).bool()]
    return rows
