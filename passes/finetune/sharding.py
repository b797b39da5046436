"""FSDP2 for the fine-tune (``parallel = "fsdp"``): trained state sharded across the ranks.

Under DDP every rank holds the whole training state: the trained weights, their gradients and
AdamW's two moments, four times the weights, plus DDP's gradient buckets.
``torch.distributed.fsdp.fully_shard`` keeps a 1/N slice of each trained weight, of its
gradient and of its optimizer state per rank (``DTensor`` s sharded along dim 0), all-gathers
the weights for a forward and again for the backward, and reduce-scatters the gradients: the
clipping and the optimizer step work on the slices.

The graph is sharded as one unit. ``torch.export`` flattens the model: the graph reads every
weight with ``get_attr`` and never calls a submodule, so the per-module hooks with which FSDP
gathers a layer's weights just before that layer runs would never fire (the layer's weights
would reach the graph as shards, and fail). Sharding the root gathers all trained weights for
each forward and each backward, so a step still peaks at the whole weights and gradients; the
saving is AdamW's moments and DDP's buckets, and everything outside a forward or backward.

fp16 autocast keeps ``torch.amp.GradScaler``: its overflow check on ``DTensor`` gradients is
reduced across the shards (a ``max``), so every rank skips the same steps.

The graph is wrapped in a thin module that FSDP hooks, so the ``GraphModule`` keeps its class
and hooks; :meth:`Sharded.release` gathers the trained weights back into the very
``Parameter`` objects the graph had, as plain tensors, for the evaluation after training, the
later passes and the export.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from fxopt.engine.errors import RecipeError

from .config import FinetuneConfig
from .distributed import World

#: attributes ``fully_shard`` sets on every module it manages (for Dynamo)
FSDP_FLAGS = ("_is_fsdp_managed_module", "_fsdp_use_orig_params")


class _Root(nn.Module):
    """What FSDP hooks and re-classes, in place of the graph module: ``fully_shard`` swaps the
    class of the module it is given, and a ``GraphModule`` sets its ``forward`` on its class
    at every ``recompile()`` (which the train/eval switch does)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        return self.module(*args)


@dataclass
class Sharded:
    """The graph under FSDP, and the original parameters to give back after training."""

    root: nn.Module
    module: nn.Module
    #: the trained parameters' names, one per parameter
    names: list[str]
    #: each trained parameter under every name that reaches it (tied weights share one)
    originals: dict[str, nn.Parameter]

    def parameters(self) -> dict[str, nn.Parameter]:
        """The trained parameters by name: shards (``DTensor``) until :meth:`release`, the
        optimizer must own these, not the originals."""
        return {name: self.module.get_parameter(name) for name in self.names}

    def release(self) -> dict[str, nn.Parameter]:
        """Gather the trained weights into the original parameters (a collective: every rank
        calls it, after the last step); returns them, by name."""
        gathered: dict[int, torch.Tensor] = {}
        for name, original in self.originals.items():
            if id(original) not in gathered:
                current = self.module.get_parameter(name)
                gathered[id(original)] = current.detach().full_tensor()
                original.data = gathered[id(original)]
        for name, original in self.originals.items():
            owner, _, attr = name.rpartition(".")
            setattr(self.module.get_submodule(owner), attr, original)
        for module in self.module.modules():
            for flag in FSDP_FLAGS:
                vars(module).pop(flag, None)
        return self.parameters()


def shard(
    module: nn.Module, trained: Mapping[str, nn.Parameter], device: torch.device, size: int
) -> Sharded:
    """Shard ``trained`` over the ``size`` ranks of the default process group.

    Other parameters (frozen, unused, integer weights) stay whole on every rank: they carry
    no gradient or optimizer state, and a parameter FSDP manages must be a float it can split
    along its first dimension.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # FSDP gathers on the current device
    ids = {id(p) for p in trained.values()}
    originals = {
        name: p for name, p in module.named_parameters(remove_duplicate=False) if id(p) in ids
    }
    ignored = {p for p in module.parameters() if id(p) not in ids}
    unique = {id(p): p for p in originals.values()}.values()
    for original in unique:
        original.data = original.data.contiguous()  # FSDP slices the storage
    mesh = init_device_mesh(device.type, (size,))
    # reshard after every forward (the root's default keeps the weights gathered for the
    # backward): outside a forward or backward a rank then holds only its shards, also after
    # an evaluation or an attack's forward that no backward of the weights follows
    root = fully_shard(_Root(module), mesh=mesh, reshard_after_forward=True, ignored_params=ignored)
    for original in unique:
        # the shards are copies: free the whole weights until release() refills them
        original.data = torch.empty(0, dtype=original.dtype, device=original.device)
    return Sharded(root, module, list(trained), originals)


def uses_fsdp(config: FinetuneConfig, world: World) -> bool:
    """``parallel = "fsdp"`` applies under ``torchrun`` only; one process has nothing to shard
    across."""
    return world.distributed and config.parallel == "fsdp"


def check_fsdp(
    config: FinetuneConfig,
    trained: Mapping[str, nn.Parameter],
    resume: str | None,
    *,
    file: str,
    where: str,
) -> None:
    """Refuse, before any work, what the sharded run does not do: checkpoints (they would need
    the shards gathered, or saved per rank, and the optimizer state re-keyed) and scalar
    parameters (FSDP splits along dim 0)."""
    refusals = [
        (
            config.checkpoint_every is not None,
            f"{where}.checkpoint_every",
            "checkpoints hold whole weights and optimizer state; under FSDP each rank "
            "holds a shard, and saving them is not supported",
            'remove checkpoint_every, or set parallel = "ddp"',
        ),
        (
            resume is not None,
            "--resume",
            "resuming is not supported under FSDP (it writes no checkpoints)",
            'run without --resume, or set parallel = "ddp"',
        ),
    ]
    for refused, field, message, fix in refusals:
        if refused:
            raise RecipeError(message, file=file, field=field, fix=fix)
    scalars = [name for name, p in trained.items() if p.dim() == 0]
    if scalars:
        raise RecipeError(
            f"FSDP splits parameters along their first dimension; {scalars[0]!r} is a scalar",
            file=file,
            field=f"{where}.parallel",
            fix=f'freeze it (freeze = ["{scalars[0]}"]), or set parallel = "ddp"',
        )
