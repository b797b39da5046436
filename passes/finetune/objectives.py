"""Training objectives: the task loss from labels, or distillation from the original model.

Distillation matches what the unoptimized model (``ctx.reference``) outputs, which is all a
pass can rely on: logits for classifiers and language models (KL at a temperature), token
states for feature extraction (masked MSE plus the cosine of their mean pool), pooled
embeddings for sentence encoders (cosine plus MSE). Unset weights are chosen from the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fxopt.engine.errors import DataError, RecipeError

from .config import DistillConfig

LOGIT_TASKS = ("sequence-classification", "image-classification", "causal-lm")
LABELS_FIX = (
    'the dataset must provide "labels": set label_field for jsonl, or save a "labels" array in '
    'the .npz (or use objective = "distill")'
)

Outputs = list[torch.Tensor]
Batch = dict[str, torch.Tensor]


def distill_weights(task: str, config: DistillConfig) -> dict[str, float]:
    """The recipe's weights, unset ones filled from the task."""
    if task in LOGIT_TASKS:
        auto = {"kl": 1.0, "mse": 0.0, "cosine": 0.0}
    elif task in ("sentence-embedding", "feature-extraction"):
        auto = {"kl": 0.0, "mse": 1.0, "cosine": 1.0}
    else:
        auto = {"kl": 0.0, "mse": 1.0, "cosine": 0.0}
    chosen = {
        k: (getattr(config, k) if getattr(config, k) is not None else v) for k, v in auto.items()
    }
    chosen["task"] = config.task
    return chosen


def _mask(batch: Batch, like: torch.Tensor) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None or like.dim() != 3 or mask.shape != like.shape[:2]:
        return None
    return mask.to(like.dtype).unsqueeze(-1)


def _pooled(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if x.dim() == 3:
        if mask is None:
            return x.mean(dim=1)
        return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
    return x.reshape(x.shape[0], -1)


def kl_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al.'s soft-target KL, scaled by T^2 so its gradient keeps its size: the
    mean over samples, or, for token logits with a mask, over the real tokens (a language
    model learns each next-token distribution; padding teaches nothing)."""
    vocab = student.shape[-1]
    s = F.log_softmax(student.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().reshape(-1, vocab) / temperature, dim=-1)
    if mask is None:
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    per_token = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    weights = mask.reshape(-1).to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0) * temperature**2


def mse_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    diff = (student.float() - teacher.float()) ** 2
    if mask is None:
        return diff.mean()
    return (diff * mask).sum() / (mask.sum() * diff.shape[-1]).clamp_min(1.0)


def cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    s, t = _pooled(student.float(), mask), _pooled(teacher.float(), mask)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def task_loss(outputs: Outputs, batch: Batch, task: str) -> torch.Tensor:
    """Cross-entropy on labels; next-token loss on the input for causal LMs."""
    logits = outputs[0].float()
    if task == "causal-lm" and "labels" not in batch:
        ids = batch["input_ids"]
        targets = ids[:, 1:].clone()
        if "attention_mask" in batch:
            targets[batch["attention_mask"][:, 1:] == 0] = -100
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))


@dataclass
class Objective:
    """``loss(outputs, batch, teacher)``; ``teacher`` is the reference outputs (distill)."""

    kind: str
    task: str
    weights: dict[str, float]
    temperature: float = 2.0
    #: how many leading outputs are distilled (the task's ``compared_outputs``: a language
    #: model's logits, not the KV cache it returns, whose heads pruning may change)
    outputs: int | None = None

    @property
    def needs_teacher(self) -> bool:
        return self.kind == "distill"

    @property
    def needs_labels(self) -> bool:
        wants_task = self.kind == "task" or self.weights.get("task", 0) > 0
        return wants_task and self.task != "causal-lm"

    def loss(self, outputs: Outputs, batch: Batch, teacher: Outputs | None) -> torch.Tensor:
        if self.kind == "task":
            return task_loss(outputs, batch, self.task)
        assert teacher is not None
        w = self.weights
        total = torch.zeros((), device=outputs[0].device)
        for student, target in zip(outputs[: self.outputs], teacher[: self.outputs], strict=False):
            if student.shape != target.shape:
                raise RecipeError(
                    f"the model's output shape {tuple(student.shape)} differs from the original "
                    f"model's {tuple(target.shape)}: distillation needs matching outputs",
                    field="passes.config.objective",
                    fix="keep the output width when pruning, or fine-tune with objective = 'task'",
                )
            mask = _mask(batch, student)
            if w["kl"]:
                total = total + w["kl"] * kl_loss(student, target, self.temperature, mask)
            if w["mse"]:
                total = total + w["mse"] * mse_loss(student, target, mask)
            if w["cosine"]:
                total = total + w["cosine"] * cosine_loss(student, target, mask)
        if w["task"]:
            total = total + w["task"] * task_loss(outputs, batch, self.task)
        return total


def make_objective(
    kind: str, task: str, config: DistillConfig, *, outputs: int | None = None
) -> Objective:
    weights = distill_weights(task, config) if kind == "distill" else {}
    return Objective(kind, task, weights, config.temperature, outputs)


def check_labels(objective: Objective, batches: list[Batch], *, file: str) -> None:
    """A task loss needs labels in every fine-tune batch: say so before training starts."""
    if not objective.needs_labels:
        return
    if not batches or any("labels" not in b for b in batches):
        raise DataError(
            "the fine-tune set has no labels, and the task loss needs them",
            file=file,
            field="data.finetune",
            fix=LABELS_FIX,
        )
