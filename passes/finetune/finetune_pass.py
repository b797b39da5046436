"""The ``finetune`` pass: train the IR's module in place, then report what it gained.

It sets up what :class:`~.trainer.Trainer` runs (objective, attack, perturbation site,
data shards, device, autocast, checkpoints, plugin hooks), measures clean / robust accuracy
and the objective's loss on the verification set before and after, and puts the figures in
``PassResult.metrics``, which the report shows under the pass.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from fxopt.engine.errors import RecipeError
from fxopt.engine.ir import ModelIR
from fxopt.engine.pass_base import Pass, PassContext, PassResult
from fxopt.engine.specs import conform

from . import checkpoint, lengths
from .config import FinetuneConfig
from .distributed import check_divisible, current_world, process_group
from .evaluation import accuracy, eval_config, mean_loss
from .hidden import HiddenStates, matched_modules
from .modes import GraphMode, move_graph, only_trainable, used_parameters, without_frozen
from .objectives import Objective, check_labels, make_objective
from .qat import QuantAware
from .sharding import check_fsdp, uses_fsdp
from .sites import Site, site_in
from .trainer import Batch, Hooks, TrainData, Trainer

ACCURACY_TASKS = ("sequence-classification", "image-classification")
#: teacher outputs up to this size are computed once and kept; beyond, per step
TEACHER_CACHE_BYTES = 1 << 30


class Finetune(Pass):
    """Fine-tune the graph: task loss or distillation, adversarial training, AMP, DDP/FSDP."""

    name = "finetune"
    reads_target = False
    Config = FinetuneConfig
    needs_data = ("finetune",)
    recovers = True  # distillation and fine-tuning win back what earlier passes cost

    def run(self, ir: ModelIR, ctx: PassContext) -> PassResult:
        config: FinetuneConfig = self.config  # type: ignore[assignment]
        file = ctx.recipe.label
        where = f"passes[{ctx.index}].config"
        host = ctx.plugins
        world = current_world()
        device = _device(config, world, file, where)
        amp = _amp(config, device, file, where)
        # the graph's own input sizes (a pruned KV cache); the teacher gets the original's
        batches = [conform(b, ir.inputs) for b in ctx.required_batches("finetune", self.name)]
        task = host.tasks.get(ir.meta.task) if ir.meta.task in host.tasks else None
        objective = make_objective(
            config.objective,
            ir.meta.task,
            config.distill,
            outputs=task.compared_outputs if task is not None else None,
        )
        check_labels(objective, batches, file=file)
        attack = None
        if config.adversarial.method != "none":
            attack_class = host.attacks.get(
                config.adversarial.method, file=file, field=f"{where}.adversarial.method"
            )
            attack = attack_class(config.adversarial)
        global_batch = config.batch_size or len(next(iter(batches[0].values())))
        tensors = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        samples = len(next(iter(tensors.values())))
        check_divisible(world, samples, global_batch, file=file)
        if config.tensorboard_dir is not None:
            _check_tensorboard(file, where)

        started = time.perf_counter()
        metrics: dict[str, Any] = {"objective": config.objective, "world_size": world.size}
        if world.distributed:
            metrics["parallel"] = config.parallel
        eval_batches = [
            conform(b, ir.inputs) for b in _limit(ctx.batches("verification"), config.eval_samples)
        ]
        robust = config.eval_robust if config.eval_robust is not None else attack is not None
        target = config.adversarial.target if attack is not None or robust else None
        with ExitStack() as stack:
            site = (
                stack.enter_context(
                    site_in(ir, target, file=file, field=f"{where}.adversarial.target")
                )
                if target is not None
                else Site(ir.input_names)
            )
            if config.qat:
                fake_quant = QuantAware(ir.module)
                stack.callback(fake_quant.restore)
                metrics["qat_fake_quant_nodes"] = fake_quant.count
            if device.type != "cpu":
                move_graph(ir.module, device)
                stack.callback(move_graph, ir.module, torch.device("cpu"))
            parameters = without_frozen(
                used_parameters(ir.module), config.freeze, file=file, field=f"{where}.freeze"
            )
            if uses_fsdp(config, world):
                check_fsdp(config, parameters, ctx.resume, file=file, where=where)
            stack.enter_context(only_trainable(ir.module, set(parameters)))
            mode = GraphMode(
                ir.module, dropout=config.train_mode, batchnorm=config.batchnorm == "train"
            )
            hidden = _hidden(ir, ctx, config, file, where)
            if hidden is not None:
                stack.callback(hidden.remove)
                metrics["hidden_layers"] = list(hidden.names)
            with ctx.output.stage("computing the teacher's outputs"):
                teacher = _teacher(ctx, batches, tensors, objective, config.group_by_length)
            evaluator = _Evaluator(ir, ctx, site, objective, eval_batches, device, amp, config)
            with ctx.output.stage("measuring the model before fine-tuning"):
                metrics.update(evaluator.measure("before", robust))
            stack.enter_context(process_group(world, device))
            trainer = Trainer(
                module=ir.module,
                config=config,
                objective=objective,
                site=site,
                attack=attack,
                data=teacher,
                world=world,
                device=device,
                amp=amp,
                parameters=parameters,
                mode=mode,
                hooks=_hooks(host),
                global_batch=global_batch,
                recipe_hash=checkpoint.recipe_hash(ctx.recipe),
                log=_logger(stack, config, world, ctx),
                hidden=hidden,
            )
            if config.early_stopping is not None and attack is not None:
                _early_data(trainer, tensors, teacher, config, objective, device, file, where)
            resumed = self._resume(trainer, ctx, config)
            if resumed is not None:
                metrics["resumed_from_step"] = resumed
            train_started = time.perf_counter()
            first_step = trainer.step
            if world.is_main:
                ctx.output.step(
                    f"fine-tuning {trainer.total} steps ({samples} samples, batch {global_batch}"
                    f"{f', {world.size} processes' if world.distributed else ''}"
                    f"{f', attack {attack.name}' if attack else ''})"
                )
            with ctx.output.task("fine-tuning", trainer.total - first_step) as advance:
                trainer.train(advance if world.is_main else lambda n=1, **_: None)
            train_seconds = time.perf_counter() - train_started
            with ctx.output.stage("measuring the model after fine-tuning"):
                metrics.update(evaluator.measure("after", robust))
        metrics.update(_train_metrics(trainer, first_step, train_seconds, global_batch, mode))
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        return PassResult(
            ir, modified=trainer.step > 0, preserved=frozenset({"parameter-count"}), metrics=metrics
        )

    def _resume(self, trainer: Trainer, ctx: PassContext, config: FinetuneConfig) -> int | None:
        if config.checkpoint_dir:
            base = ctx.recipe.resolve_path(config.checkpoint_dir)
        elif ctx.cache_dir is not None:
            base = Path(ctx.cache_dir) / "finetune"
        else:  # --no-cache and no checkpoint_dir of the recipe's: nowhere to keep checkpoints
            if config.checkpoint_every or ctx.resume is not None:
                ctx.output.warn(
                    "no cache (--no-cache) and no finetune checkpoint_dir: "
                    "checkpoints are neither written nor resumed"
                )
            return None
        directory = checkpoint.checkpoint_dir(base, trainer.recipe_hash, ctx.index)
        if config.checkpoint_every:
            trainer.checkpoint_dir = directory
        resume = getattr(ctx, "resume", None)
        if resume is None:
            return None
        path = checkpoint.find(resume, directory)
        if path is None:
            ctx.output.warn(f"--resume: no checkpoint in {directory}; starting from step 0")
            return None
        trainer.restore(checkpoint.load(path, trainer.recipe_hash), path)
        ctx.output.step(f"resuming from {path} (step {trainer.step})")
        return trainer.step


class _Evaluator:
    """Clean / robust accuracy and the objective's loss on the verification set."""

    def __init__(self, ir, ctx, site, objective, batches, device, amp, config) -> None:
        self.ir, self.site, self.objective, self.config = ir, site, objective, config
        self.device, self.amp = device, amp
        self.batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        self.teacher = (
            [[t.to(device) for t in ctx.reference(b)] for b in batches] if batches else []
        )
        has_labels = all("labels" in b for b in batches)
        self.labels = (
            [b["labels"] for b in self.batches]
            if has_labels
            else [t[0].argmax(dim=-1) for t in self.teacher]
        )
        self.label_source = "data" if has_labels else "original model"
        generic_classifier = (
            has_labels
            and self.teacher[0][0].dim() == 2
            and ir.meta.task not in ("sentence-embedding", "feature-extraction")
        )
        self.classifier = bool(batches) and (ir.meta.task in ACCURACY_TASKS or generic_classifier)

    def forward(self, args):
        context = torch.autocast(self.device.type, dtype=self.amp) if self.amp else ExitStack()
        with context:
            out = self.ir.module(*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def measure(self, when: str, robust: bool) -> dict[str, float]:
        if not self.batches or not self.config.evaluate:
            return {}
        out: dict[str, float] = {}
        objective = self.objective
        if objective.kind == "distill" or not objective.needs_labels or "labels" in self.batches[0]:
            out[f"eval_loss_{when}"] = round(
                mean_loss(self.forward, self.site, self.batches, self._loss), 6
            )
        if self.classifier:
            out[f"clean_accuracy_{when}"] = round(
                accuracy(self.forward, self.site, self.batches, self.labels, None), 4
            )
            if robust:
                attack = eval_config(self.config.adversarial, self.config.eval_pgd_steps)
                out[f"robust_accuracy_{when}"] = round(
                    accuracy(self.forward, self.site, self.batches, self.labels, attack), 4
                )
        return out

    def _loss(self, outputs, batch: Batch, index: int) -> torch.Tensor:
        return self.objective.loss(outputs, batch, self.teacher[index])


def _hooks(host) -> Hooks:
    hook = host.pm.hook
    return Hooks(
        begin=hook.fxopt_train_step_begin,
        end=hook.fxopt_train_step_end,
        perturb=hook.fxopt_adversarial_perturb,
    )


def _device(config: FinetuneConfig, world, file: str, where: str) -> torch.device:
    wanted = config.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(
                "device is 'cuda' but torch sees no CUDA device",
                file=file,
                field=f"{where}.device",
                fix="use device = 'cpu' or 'auto'",
            )
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _amp(config: FinetuneConfig, device: torch.device, file: str, where: str):
    if config.amp == "off":
        return None
    if config.amp == "auto":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    if config.amp == "fp16" and device.type == "cpu":
        raise RecipeError(
            "fp16 autocast needs a CUDA device; on CPU use bf16",
            file=file,
            field=f"{where}.amp",
            fix='set amp = "bf16" (or "auto")',
        )
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def _limit(batches: list[Batch], samples: int | None) -> list[Batch]:
    if samples is None:
        return batches
    out, taken = [], 0
    for batch in batches:
        if taken >= samples:
            break
        size = len(next(iter(batch.values())))
        out.append({k: v[: samples - taken] for k, v in batch.items()})
        taken += min(size, samples - taken)
    return out


def _hidden(
    ir: ModelIR, ctx: PassContext, config: FinetuneConfig, file: str, where: str
) -> HiddenStates | None:
    """Taps and hooks for ``distill.hidden_layers`` (None when the recipe names none)."""
    patterns = config.distill.hidden_layers
    field = f"{where}.distill.hidden_layers"
    if not patterns:
        return None
    if ctx.reference_module is None:
        raise RecipeError(
            "hidden-state distillation needs the original model, which this run does not give "
            "the pass",
            file=file,
            field=field,
            fix="distil the outputs only: remove hidden_layers",
        )
    names = matched_modules(ctx.reference_module, patterns, file=file, field=field)
    return HiddenStates(
        ir, ctx.reference_module, names, config.distill.hidden, file=file, field=field
    )


def _teacher(
    ctx: PassContext,
    batches: list[Batch],
    tensors: dict[str, torch.Tensor],
    objective: Objective,
    by_length: bool,
) -> TrainData:
    """The original model's outputs on the fine-tune set: once, when they fit in memory
    (with ``group_by_length``, computed on length-sorted batches cut to their longest
    sequence, as the training batches will be)."""
    if not objective.needs_teacher:
        return TrainData(tensors, None)
    first = ctx.reference(batches[0])
    per_batch = sum(t.numel() * t.element_size() for t in first)
    if per_batch * len(batches) > TEACHER_CACHE_BYTES:
        return TrainData(tensors, None, teacher_fn=ctx.reference)
    if by_length and "attention_mask" in tensors:
        size = len(next(iter(batches[0].values())))
        return TrainData(tensors, lengths.run_by_length(ctx.reference, tensors, size))
    outputs = [first] + [ctx.reference(b) for b in batches[1:]]
    return TrainData(tensors, [torch.cat([o[i] for o in outputs]) for i in range(len(first))])


def _early_data(trainer, tensors, data, config, objective, device, file, where) -> None:
    """Fixed training batches for the robust-accuracy checks (as Wong et al. do)."""
    rule = config.early_stopping
    count = min(rule.batches * trainer.global_batch, data.size)
    batch, teacher = data.batch(list(range(count)), device)
    if "labels" in batch:
        labels = batch["labels"]
    elif teacher is not None and teacher[0].dim() == 2:
        labels = teacher[0].argmax(dim=-1)
    else:
        raise RecipeError(
            "early stopping on robust accuracy needs labels or a classifier to distill from",
            file=file,
            field=f"{where}.early_stopping",
            fix="give the fine-tune set labels, or remove [early_stopping]",
        )
    size = trainer.global_batch
    trainer.early_batches = [
        {k: v[i : i + size] for k, v in batch.items()} for i in range(0, count, size)
    ]
    trainer.early_labels = [labels[i : i + size] for i in range(0, count, size)]


def _check_tensorboard(file: str, where: str) -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise RecipeError(
            "tensorboard_dir is set but the tensorboard package is not installed",
            file=file,
            field=f"{where}.tensorboard_dir",
            fix="pip install 'fxopt[tensorboard]' (or tensorboard), or remove tensorboard_dir",
        ) from None


def _logger(stack: ExitStack, config: FinetuneConfig, world, ctx: PassContext):
    if config.tensorboard_dir is None or not world.is_main:
        return lambda step, values: None
    from torch.utils.tensorboard import SummaryWriter

    writer = stack.enter_context(
        SummaryWriter(str(ctx.recipe.resolve_path(config.tensorboard_dir)))
    )

    def log(step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            writer.add_scalar(f"finetune/{key}", value, step)

    return log


def _train_metrics(trainer: Trainer, first_step: int, seconds: float, batch: int, mode) -> dict:
    steps = trainer.step - first_step
    losses = trainer.losses
    out: dict[str, Any] = {
        "steps": trainer.step,
        "total_steps": trainer.total,
        "loss_first": round(losses[0], 6) if losses else None,
        "loss_last": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 6) if losses else None,
        "lr_last": trainer.lrs[-1] if trainer.lrs else None,
        "train_seconds": round(seconds, 3),
        "steps_per_second": round(steps / seconds, 3) if seconds > 0 and steps else None,
        "samples_per_second": round(steps * batch / seconds, 2) if seconds > 0 and steps else None,
        "amp": str(trainer.amp).removeprefix("torch.") if trainer.amp else "off",
        "train_mode_nodes": mode.counts,
    }
    early = trainer.early
    if early.history:
        out["early_stopping"] = {
            "stopped_at": early.stopped_at,
            "reason": early.reason,
            "best_step": early.best_step,
            "best_robust_accuracy": round(early.best, 4),
            "checks": [[s, round(v, 4)] for s, v in early.history],
        }
    elif early.stopped_at is not None:
        out["early_stopping"] = {"stopped_at": early.stopped_at, "reason": early.reason}
    return out
