"""The training loop: AdamW, LR schedule, clipping, autocast, attacks, hooks, checkpoints.

One :class:`Trainer` runs one fine-tune. Everything that varies between steps derives from
the seed and the step number (data order, attack random starts, dropout masks), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would have, and rank
``r`` of a DDP or FSDP run draws what it would draw whatever happened before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, lengths
from .attacks import Attack, AttackProblem
from .config import FinetuneConfig
from .distributed import World, broadcast_flag, epoch_order, mean_over_ranks
from .evaluation import accuracy, eval_config
from .hidden import HiddenStates
from .modes import GraphMode
from .objectives import Objective
from .schedule import scheduler, warmup_steps
from .sharding import Sharded, shard, uses_fsdp
from .sites import Site

Batch = dict[str, torch.Tensor]


@dataclass
class TrainData:
    """All fine-tune samples stacked (``[N, ...]``), and the teacher's outputs when cached."""

    tensors: dict[str, torch.Tensor]
    teacher: list[torch.Tensor] | None
    teacher_fn: Callable[[Batch], list[torch.Tensor]] | None = None
    #: cut each batch to its longest sequence (``group_by_length``)
    trim: bool = False

    @property
    def size(self) -> int:
        return len(next(iter(self.tensors.values())))

    def batch(
        self, indices: list[int], device: torch.device
    ) -> tuple[Batch, list[torch.Tensor] | None]:
        index = torch.tensor(indices, dtype=torch.long)
        cpu = {k: v[index] for k, v in self.tensors.items()}
        teacher = [t[index] for t in self.teacher] if self.teacher is not None else None
        if self.trim:
            cpu, teacher = lengths.trim(cpu, teacher)
        if teacher is None and self.teacher_fn is not None:
            teacher = self.teacher_fn(cpu)
        batch = {k: v.to(device) for k, v in cpu.items()}
        return batch, [t.to(device) for t in teacher] if teacher is not None else None

    def sample_lengths(self) -> torch.Tensor | None:
        """Each sample's length by its attention mask (None without one)."""
        mask = self.tensors.get("attention_mask")
        return lengths.lengths(mask) if mask is not None and mask.dim() == 2 else None


@dataclass
class Hooks:
    """The plugin hooks of the loop (no-ops when no plugin implements them)."""

    begin: Callable[..., Any] = lambda **kw: []
    end: Callable[..., list[Any]] = lambda **kw: []
    perturb: Callable[..., torch.Tensor | None] = lambda **kw: None


@dataclass
class EarlyState:
    best: float = -1.0
    best_step: int = -1
    checks_since_best: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    stopped_at: int | None = None
    reason: str = ""
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Trainer:
    module: fx.GraphModule
    config: FinetuneConfig
    objective: Objective
    site: Site
    attack: Attack | None
    data: TrainData
    world: World
    device: torch.device
    amp: torch.dtype | None
    parameters: dict[str, torch.nn.Parameter]
    mode: GraphMode
    hooks: Hooks
    global_batch: int
    checkpoint_dir: Path | None = None
    recipe_hash: str = ""
    log: Callable[[int, dict[str, float]], None] = lambda step, values: None
    early_batches: list[Batch] = field(default_factory=list)
    early_labels: list[torch.Tensor] = field(default_factory=list)
    #: hidden-state distillation (taps in ``module``, hooks on the original model)
    hidden: HiddenStates | None = None

    def __post_init__(self) -> None:
        self.local_batch = self.global_batch // self.world.size
        self.steps_per_epoch = math.ceil(self.data.size / self.global_batch)
        config = self.config
        self.total = config.max_steps or config.epochs * self.steps_per_epoch
        self.sharded: Sharded | None = None
        if uses_fsdp(config, self.world):
            # before the optimizer: it must own the shards, not the whole parameters
            self.sharded = shard(self.module, self.parameters, self.device, self.world.size)
            self.parameters = self.sharded.parameters()
        decay = [p for p in self.parameters.values() if p.dim() >= 2]
        no_decay = [p for p in self.parameters.values() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=config.betas,
        )
        warmup = warmup_steps(self.total, config.warmup_steps, config.warmup_ratio)
        self.schedule = scheduler(
            self.optimizer,
            total=self.total,
            warmup=warmup,
            kind=config.schedule,
            min_ratio=config.min_lr_ratio,
        )
        fp16 = self.amp == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.model, self.local_model = self._wrapped()
        self.step = 0
        self.early = EarlyState()
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self._orders: dict[int, list[int]] = {}
        self.sample_lengths = self.data.sample_lengths() if config.group_by_length else None
        self.data.trim = self.sample_lengths is not None

    def _wrapped(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The model training steps run, and the one for forwards whose gradients are not
        all-reduced (an attack's gradient in its input, evaluation): the bare graph under DDP,
        whose forward would arm an all-reduce that never comes; the FSDP root under FSDP,
        as only its forward gathers the sharded weights."""
        if self.sharded is not None:
            return self.sharded.root, self.sharded.root
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(self.module, device_ids=ids), self.module
        return self.module, self.module

    # -- forward / backward -------------------------------------------------------------

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def forward(self, model: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        with self.autocast():
            out = model(*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def eval_forward(self, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return self.forward(self.local_model, args)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    # -- the loop -----------------------------------------------------------------------

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:
            order = epoch_order(self.world, self.data.size, epoch, self.config.seed, True)
            if self.sample_lengths is not None:
                seed = self.config.seed * 1_000_003 + epoch
                order = lengths.grouped(order, self.sample_lengths, self.local_batch, seed)
            self._orders = {epoch: order}
        order = self._orders[epoch]
        return order[position * self.local_batch : (position + 1) * self.local_batch]

    def train(self, advance: Callable[..., None]) -> None:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.mode.set(True)
            try:
                while self.step < self.total and self.early.stopped_at is None:
                    self.train_step()
                    advance(1, description=self.describe())
                    if self._checkpoint_due():
                        self.save()
                    if self._check_due() and self.check_robustness():
                        break
            finally:
                self.mode.set(False)
                # release the DDP / FSDP wrapper before the group goes
                self.model = self.local_model = self.module
        if self.sharded is not None:  # not after a failure: the other ranks may be elsewhere
            self.parameters = self.sharded.release()
            self.sharded = None
        if self.checkpoint_dir is not None and self.config.checkpoint_every:
            self.save()

    def describe(self) -> str:
        loss = sum(self.losses[-10:]) / max(1, len(self.losses[-10:]))
        return f"fine-tuning loss {loss:.4f} lr {self.lrs[-1]:.2e}"

    def train_step(self) -> None:
        step, config = self.step, self.config
        epoch = step // self.steps_per_epoch
        seed = (config.seed * 1_000_003 + step) * 64 + self.world.rank
        torch.manual_seed(seed)
        indices = self.indices(step)
        batch, teacher = self.data.batch(indices, self.device)
        self.hooks.begin(step=step, epoch=epoch, batch=batch, model=self.module)

        def loss_at(model: torch.nn.Module, delta: torch.Tensor | None) -> torch.Tensor:
            outputs = self.forward(model, self.site.args(batch, delta))
            loss = self.objective.loss(outputs, batch, teacher)
            return loss if self.hidden is None else loss + self.hidden.loss(batch, indices)

        if self.attack is None:
            loss = loss_at(self.model, None)
            self.backward(loss)
            loss = loss.detach()
        else:
            clean_weight = config.adversarial.clean_weight

            def train_loss(delta: torch.Tensor) -> torch.Tensor:
                adversarial = loss_at(self.model, delta)
                if not clean_weight:
                    return adversarial
                return clean_weight * loss_at(self.model, None) + (1 - clean_weight) * adversarial

            problem = AttackProblem(
                loss=lambda delta: loss_at(self.local_model, delta),
                shape=self.site.shape(batch),
                config=config.adversarial,
                attack=self.attack.name,
                step=step,
                device=self.device,
                generator=torch.Generator().manual_seed(seed),
                clean=self.site.clean_value(batch),
                refine=lambda delta, iteration: self.hooks.perturb(
                    attack=self.attack.name,
                    target=self.site.kind,
                    step=step,
                    iteration=iteration,
                    delta=delta,
                    inputs=batch,
                ),
                train_loss=train_loss,
                no_sync=getattr(self.model, "no_sync", nullcontext),
                backward=self.backward,
            )
            loss = self.attack.train_step(problem)
            self.site.args(batch, None)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = list(self.parameters.values())
        if config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = float(mean_over_ranks(self.world, loss.float().to(self.device)))
        self.losses.append(value)
        self.lrs.append(lr)
        self.step = step + 1
        if step % config.log_every == 0 or self.step == self.total:
            self.log(step, {"loss": value, "lr": lr, "grad_norm": float(norm)})
        stop = self.hooks.end(step=step, epoch=epoch, loss=value, lr=lr, model=self.module)
        if broadcast_flag(self.world, any(bool(s) for s in stop), self.device):
            self.early.stopped_at = self.step
            self.early.reason = "a train_step_end hook asked to stop"

    # -- early stopping on robust accuracy --------------------------------------------

    def _check_due(self) -> bool:
        rule = self.config.early_stopping
        return rule is not None and self.attack is not None and self.step % rule.every == 0

    def robust_accuracy(self, batches: list[Batch], labels: list[torch.Tensor]) -> float:
        attack = eval_config(self.config.adversarial, self.config.eval_pgd_steps)
        with self.mode.evaluating():
            return accuracy(self.eval_forward, self.site, batches, labels, attack)

    def check_robustness(self) -> bool:
        """Measure PGD accuracy; True when training should stop (collapse or patience)."""
        rule = self.config.early_stopping
        assert rule is not None
        value = self.robust_accuracy(self.early_batches, self.early_labels)
        early = self.early
        early.history.append((self.step, value))
        self.log(self.step, {"robust_accuracy": value})
        stop, reason = False, ""
        if value > early.best:
            early.best, early.best_step, early.checks_since_best = value, self.step, 0
            if rule.restore_best:
                early.best_weights = {
                    k: v.detach().clone() for k, v in self.module.state_dict().items()
                }
        else:
            early.checks_since_best += 1
            if value < early.best - rule.max_drop:
                stop = True
                reason = (
                    f"PGD robust accuracy collapsed from {early.best:.3f} "
                    f"(step {early.best_step}) to {value:.3f} (catastrophic overfitting)"
                )
            elif rule.patience is not None and early.checks_since_best >= rule.patience:
                stop, reason = True, f"no robust-accuracy gain in {rule.patience} checks"
        if broadcast_flag(self.world, stop, self.device):
            early.stopped_at, early.reason = self.step, reason or "rank 0 stopped"
            if rule.restore_best and early.best_weights is not None:
                self.module.load_state_dict(early.best_weights)
            return True
        return False

    # -- checkpoints ------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return bool(every) and self.checkpoint_dir is not None and self.step % every == 0

    def state(self) -> dict[str, Any]:
        early = self.early
        return {
            "recipe_hash": self.recipe_hash,
            "step": self.step,
            "total": self.total,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "losses": list(self.losses),
            "lrs": list(self.lrs),
            "early": {
                "best": early.best,
                "best_step": early.best_step,
                "checks_since_best": early.checks_since_best,
                "best_weights": early.best_weights,
                "stopped_at": early.stopped_at,
                "reason": early.reason,
                "history": [list(h) for h in early.history],
            },
        }

    def save(self) -> Path | None:
        if not self.world.is_main or self.checkpoint_dir is None:
            return None
        return checkpoint.save(
            self.checkpoint_dir, self.step, self.state(), self.config.keep_checkpoints
        )

    def restore(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise checkpoint.CheckpointError(
                f"the checkpoint's weights do not fit this model: {str(exc)[:300]}",
                file=path,
                field="--resume",
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.lrs = list(state["lrs"])
        early = state["early"]
        self.early = EarlyState(
            best=early["best"],
            best_step=early["best_step"],
            checks_since_best=early["checks_since_best"],
            best_weights=early["best_weights"],
            stopped_at=early["stopped_at"],
            reason=early["reason"],
            history=[tuple(h) for h in early["history"]],
        )
