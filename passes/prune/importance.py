"""Importance criteria: a score per unit of each group; the lowest-scoring units go.

- ``l1`` / ``l2``: magnitude of every parameter slice of the unit (``sum |w|``, ``sum w^2``),
  each slice normalized by its mean over the group, so a LayerNorm's weights weigh as much as
  a Linear's rows. Running statistics (buffers) do not count.
- ``taylor``: first-order Taylor expansion of removing the whole unit, ``sum(grad * w)`` over
  all its parameters, from gradients on the calibration data. With integer labels on a
  classifier the loss is cross-entropy; otherwise (embeddings, regression) it is a random
  projection of the outputs, so the score estimates ``E ||J w||^2``, how far the outputs move
  when the unit is zeroed. Squared per batch and summed over batches. A group none of whose
  tensors is a parameter (weights held as constants in the graph: folded, or exported that
  way) is differentiated through those tensors; one the loss has no gradient path to is
  scored by ``l2`` magnitude instead, and :func:`taylor` names it so the pass can warn.
- ``activation``: how far each Linear reading the unit moves its output when the unit is
  removed, on the calibration data: ``sum ||x_u W_u^T||^2`` over the tokens, from the Gram
  matrix of the Linear's input (``x_u``: the unit's input channels, a whole head for an
  attention head, with the correlations inside it). Weight magnitude alone misses that a
  small weight can read a large activation (BERT's outlier channels); Taylor's random
  projections are noisy on a few calibration batches. This is the structured form of the
  activation-aware scores of Wanda (Sun et al., 2023) and FLAP (An et al., 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from fxopt.engine.data import Batch

from .graph import DependencyGraph
from .group import Group

CRITERIA = ("l1", "l2", "taylor", "activation")


def magnitude(
    module: torch.nn.Module,
    deps: DependencyGraph,
    groups: Sequence[Group],
    power: int,
    tensors: dict[str, torch.Tensor] | None = None,
) -> dict[int, np.ndarray]:
    """``tensors``: what to score (name -> tensor), the module's parameters by default."""
    params = dict(module.named_parameters()) if tensors is None else tensors
    scores = {}
    for group in groups:
        total = np.zeros(group.size)
        for piece in group.slices:
            weight = params.get(piece.attr)
            if weight is None:
                continue
            per_index = _per_index(weight.detach().float().abs().pow(power), piece.axis)
            projected = deps.spaces.project(piece.space, per_index, group.id)
            mean = projected.mean()
            total += projected / mean if mean > 0 else projected
        scores[group.id] = total
    return scores


def taylor(
    module: torch.nn.Module,
    deps: DependencyGraph,
    groups: Sequence[Group],
    batches: Sequence[Batch],
    input_names: Sequence[str],
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Taylor scores, and the names of the groups scored by ``l2`` magnitude instead (the
    loss has no gradient with respect to any of their tensors)."""
    named = _scored_tensors(module, groups)
    used = sorted(named)
    tensors = [named[name] for name in used]
    saved = [t.requires_grad for t in tensors]
    scores = {g.id: np.zeros(g.size) for g in groups}
    reached: set[str] = set()
    generator = torch.Generator().manual_seed(0)
    try:
        for t in tensors:
            t.requires_grad_(True)
        for batch in batches if tensors else ():
            with torch.enable_grad():
                out = module(*(batch[name] for name in input_names))
                outputs = list(out) if isinstance(out, (tuple, list)) else [out]
                loss = _loss(outputs, batch, generator)
                grads = (
                    torch.autograd.grad(loss, tensors, allow_unused=True)
                    if loss.requires_grad
                    else [None] * len(tensors)
                )
            products = {
                name: (g * t).detach().double() if g is not None else None
                for name, t, g in zip(used, tensors, grads, strict=True)
            }
            reached |= {name for name, product in products.items() if product is not None}
            for group in groups:
                scores[group.id] += _removal_effect(deps, group, products) ** 2
            advance(1)
    finally:
        for t, flag in zip(tensors, saved, strict=True):
            t.requires_grad_(flag)
    unreached = [g for g in groups if not {p.attr for p in g.slices} & reached]
    if unreached:
        scores.update(magnitude(module, deps, unreached, 2, _scored_tensors(module, unreached)))
    return scores, [g.name for g in unreached]


def _scored_tensors(module: torch.nn.Module, groups: Sequence[Group]) -> dict[str, torch.Tensor]:
    """The tensors whose gradients score ``groups``: their parameters; for a group with none,
    its float constants (weights held as buffers or attributes of the graph)."""
    params = dict(module.named_parameters())
    out = {}
    for group in groups:
        mine = {p.attr: params[p.attr] for p in group.slices if p.attr in params}
        out.update(mine or _float_tensors(module, [group]))
    return out


def _float_tensors(module: torch.nn.Module, groups: Sequence[Group]) -> dict[str, torch.Tensor]:
    """Every floating-point tensor ``groups`` slice, parameter or not, by name."""
    out = {}
    for name in {p.attr for g in groups for p in g.slices}:
        tensor = _attribute(module, name)
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.is_leaf:
            out[name] = tensor
    return out


def _attribute(module: torch.nn.Module, name: str):
    value = module
    for part in name.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _removal_effect(deps: DependencyGraph, group: Group, products: dict) -> np.ndarray:
    """First-order change of the loss when each unit's parameters are zeroed."""
    total = np.zeros(group.size)
    for piece in group.slices:
        product = products.get(piece.attr)
        if product is not None:
            total += deps.spaces.project(piece.space, _per_index(product, piece.axis), group.id)
    return total


def _per_index(values: torch.Tensor, axis: int) -> np.ndarray:
    other = tuple(i for i in range(values.dim()) if i != axis)
    summed = values.sum(dim=other) if other else values
    return summed.double().numpy()


def _loss(outputs: list, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    first = outputs[0]
    labels = batch.get("labels")
    if (
        labels is not None
        and first.dim() == 2
        and not labels.dtype.is_floating_point
        and labels.shape == first.shape[:1]
    ):
        return torch.nn.functional.cross_entropy(first.float(), labels)
    loss = first.new_zeros(())
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.dtype.is_floating_point:
            direction = torch.randn(out.shape, generator=generator).to(out.dtype)
            loss = loss + (out * direction).sum()
    return loss


def removal_energy(
    module: torch.nn.Module,
    deps: DependencyGraph,
    groups: Sequence[Group],
    readers: Sequence[tuple[str, int]],
    grams: dict[str, torch.Tensor],
) -> dict[int, np.ndarray]:
    """``activation`` scores from the input Gram matrices of the Linears in ``readers``
    (``(weight name, space id of its input axis)``)."""
    params = dict(module.named_parameters())
    scores = {g.id: np.zeros(g.size) for g in groups}
    for weight_name, space_id in readers:
        gram = grams.get(weight_name)
        if gram is None:
            continue
        weight = params[weight_name].detach().double()
        for group in groups:
            if group.id not in deps.spaces.bases(space_id):
                continue
            for unit in range(group.size):
                idx = deps.spaces.keep(space_id, {group.id: np.array([unit])})
                index = torch.as_tensor(idx)
                w = weight[:, index]
                scores[group.id][unit] += float(((w @ gram[index][:, index]) * w).sum())
    return scores
