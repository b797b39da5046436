"""Running the fine-tune under ``torchrun``: process group, sharding, rank-0-only writes.

``torchrun --nproc-per-node N --no-python optimize recipe.toml`` starts N copies of the whole
run; each sets ``RANK``/``WORLD_SIZE``. Every rank loads the same model and data; the fine-tune
pass joins a process group (gloo on CPU, NCCL on CUDA), wraps the graph in
``DistributedDataParallel`` and trains on its shard of every global batch. Shards are cut by a
:class:`~torch.utils.data.DistributedSampler` with one seed, so with a global batch ``B`` rank
``r`` gets the positions ``r, r+N, ...`` of exactly the samples a single process would have
used in that step, and the all-reduced gradient (a mean of equal-sized shard means) is the
single-process gradient: the same recipe gives the same model, up to float summation order.

With ``parallel = "fsdp"`` the graph is sharded with FSDP2 instead (:mod:`.sharding`): each
rank keeps a slice of every trained weight, of its gradient and of its AdamW state, gathers
the weights for each forward and backward, and reduce-scatters the gradients. The data
shards are the same, and the reduce-scatter averages over the ranks just as the all-reduce
does (each rank only keeps its slice of the mean), so the gradient is again the
single-process one; clipping takes the norm over all slices, and AdamW acts element by
element, so updating slices updates the whole weights as one process would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from fxopt.engine.errors import DataError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """Rank and size from the environment ``torchrun`` sets (one process when unset)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join (and afterwards leave) the default process group when under ``torchrun``."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        # every rank arrives before the group goes: a rank leaving early can otherwise
        # leave rank 0 (the store's host) hanging in the teardown
        dist.barrier()
        dist.destroy_process_group()


def check_divisible(world: World, samples: int, batch_size: int, *, file: str) -> None:
    """Equal shards or none: padding or uneven shards would change the gradient."""
    if samples % world.size or batch_size % world.size:
        raise DataError(
            f"{samples} fine-tune samples in global batches of {batch_size} cannot be split "
            f"evenly over {world.size} processes",
            file=file,
            field="data.finetune",
            fix=f"make samples and batch_size multiples of {world.size} (torchrun "
            "--nproc-per-node), or launch fewer processes",
        )


def epoch_order(world: World, samples: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """This rank's sample indices for one epoch, in order."""
    sampler = DistributedSampler(
        range(samples),
        num_replicas=world.size,
        rank=world.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def broadcast_flag(world: World, flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (stop early, ...) for every rank."""
    if not world.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def mean_over_ranks(world: World, value: torch.Tensor) -> torch.Tensor:
    """The global mean of a per-rank scalar (the loss every rank reports)."""
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.size


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
